"""Telling a path on this machine from a Hub id, and the error for one that does not exist: shared by the loading of
checkpoints and of data, so a mistyped folder fails at once instead of after minutes of Hub retries."""

import difflib
import os
from pathlib import Path


def looks_like_a_local_path(source: str | os.PathLike) -> bool:
    """A Hub id is `name` or `org/name`; anything with more parts, a leading `.`, `/` or `~`, or an OS separator
    other than `/` is a path on this machine, and so is `org/name` when a folder `org` is here (`runs/tiny-moe`:
    a mistyped folder, which would otherwise cost minutes of Hub retries before failing)."""
    text = os.fspath(source)
    return (text.startswith((".", "/", "~")) or text.count("/") > 1 or (os.sep != "/" and os.sep in text)
            or Path(text).exists() or ("/" in text and Path(text.split("/")[0]).is_dir()))


def missing_path_error(path: Path, what: str) -> FileNotFoundError:
    """The error for a local path that does not exist, naming the closest existing name beside it."""
    names = [entry.name for entry in path.parent.iterdir()] if path.parent.is_dir() else []
    near = difflib.get_close_matches(path.name, names, n=1)
    return FileNotFoundError(
        f"{what} {path} does not exist"
        + (f"; did you mean {path.parent / near[0]}?" if near else ".")
        + " (A Hub repository is written `org/name`, from a folder without a subfolder `org`.)"
    )
