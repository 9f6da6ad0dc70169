"""What every command shares: one parser style and one way of reporting the errors a user can fix.

Not a command: the commands import it, and nothing else in this folder.
"""

import argparse
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written (its examples keep their lines), each option's default after its help."""


# The errors a command expects from bad input: printed as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, ValueError)


class CommandParser(argparse.ArgumentParser):
    """Options are spelt with underscores, as `TrainingArguments` flags are (`--output_dir`); as in `moe-audio
    train`, the same option with dashes (`--output-dir`) is accepted too."""

    def add_argument(self, *names, **kwargs):
        dashed = [name.replace("_", "-") for name in names if name.startswith("--") and "_" in name]
        return super().add_argument(*names, *dashed, **kwargs)


def command_parser(name: str, doc: str) -> CommandParser:
    return CommandParser(prog=f"moe-audio {name}", description=doc, formatter_class=HelpFormatter)


def run(function, *args, **kwargs):
    """`function(*args, **kwargs)`, exiting with `error: <message>` on an error the user can fix."""
    try:
        return function(*args, **kwargs)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")
