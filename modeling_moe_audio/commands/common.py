"""What every command shares: one parser style and one way of reporting the errors a user can fix.

Not a command: the commands import it, and nothing else in this folder. Each command parses its arguments before it
imports the library, so that `--help` and argument errors come without loading torch.
"""

import argparse
import copy
import sys

from huggingface_hub.errors import StrictDataclassError


DASHES = "Options are also accepted with dashes for underscores (--output-dir for --output_dir)."


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written (its examples keep their lines), each option's default after its help
    (none after a flag, or where there is no default)."""

    def _format_action_invocation(self, action):
        # `--output_dir` only: its accepted twin `--output-dir` would double every line.
        twins = {name for name in action.option_strings
                 if name.startswith("--") and "--" + name[2:].replace("-", "_") in action.option_strings
                 and "-" in name[2:]}
        if twins:
            action = copy.copy(action)
            action.option_strings = [name for name in action.option_strings if name not in twins]
        return super()._format_action_invocation(action)

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# The errors a command expects from bad input: printed as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, StrictDataclassError)


class CommandParser(argparse.ArgumentParser):
    """Options are spelt with underscores, as `TrainingArguments` flags are (`--output_dir`); as in `moe-audio
    train`, the same option with dashes (`--output-dir`) is accepted too. Every command takes `--debug`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show the whole traceback of an error")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        set_debug(parsed.debug)
        return parsed

    def add_argument(self, *names, **kwargs):
        dashed = [name.replace("_", "-") for name in names if name.startswith("--") and "_" in name]
        return super().add_argument(*names, *dashed, **kwargs)


def command_parser(name: str, doc: str) -> CommandParser:
    return CommandParser(prog=f"moe-audio {name}", description=doc, formatter_class=HelpFormatter, epilog=DASHES)


def add_output_dir(parser: argparse.ArgumentParser, what: str, default: str | None = None) -> None:
    """`--output_dir` (where the command writes `what`) and `--overwrite`, the same for every command."""
    if default is None:
        parser.add_argument("--output_dir", required=True, help=f"folder to write {what} to")
    else:
        parser.add_argument("--output_dir", default=default, help=f"folder to write {what} to")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output_dir")


def add_seed(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--seed", type=int, default=0, help=f"seed of {what}")


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no_progress", action="store_true",
                        help="no progress bars or phase messages on stderr (as TQDM_DISABLE=1 does)")


def quiet_if_asked(args: argparse.Namespace) -> None:
    """With `--no_progress`: no bars (this package's, transformers' and the Hub's) and no phase messages."""
    if getattr(args, "no_progress", False):
        from ..progress import disable_progress

        disable_progress()


_debug = False


def set_debug(debug: bool) -> None:
    global _debug
    _debug = debug


def run(function, *args, **kwargs):
    """`function(*args, **kwargs)`, exiting with one line, `error: <message>`, on an error the user can fix (the
    whole traceback with `--debug`); any other error is a bug and keeps its traceback."""
    try:
        return function(*args, **kwargs)
    except USER_ERRORS as error:
        if _debug:
            raise
        sys.exit(f"error: {' '.join(str(error).split())}")
