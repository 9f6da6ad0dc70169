"""Progress on stderr for the long loops (corpus writing, answering, analysing, loading): a tqdm bar where there
is a count, a one-line phase message where there is none.

Both follow transformers' switch (`transformers.utils.logging.disable_progress_bar()`, which the commands'
`--no_progress` flips and which `HF_HUB_DISABLE_PROGRESS_BARS=1` sets) and tqdm's own `TQDM_DISABLE=1`, so one
setting quiets the bars of this package, of transformers and of the Hub downloads together.
"""

import os
import sys

from transformers.utils import logging as transformers_logging


def progress_enabled() -> bool:
    """False once the user asked for quiet: transformers' progress bars disabled, or `TQDM_DISABLE` set."""
    disabled_by_tqdm = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    return transformers_logging.is_progress_bar_enabled() and not disabled_by_tqdm


def disable_progress() -> None:
    """Quiet every bar and phase message (this package's, transformers' and the Hub's)."""
    transformers_logging.disable_progress_bar()


def progress_bar(iterable=None, total: int | None = None, desc: str | None = None, unit: str = "it", **kwargs):
    """A tqdm bar on stderr, or a silent stand-in when progress is off (`progress_enabled`)."""
    return transformers_logging.tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress_enabled(),
                                     dynamic_ncols=True, **kwargs)


def announce(message: str) -> None:
    """A one-line phase message on stderr ("moe-audio: <message>"), unless progress is off."""
    if progress_enabled():
        print(f"moe-audio: {message}", file=sys.stderr, flush=True)
