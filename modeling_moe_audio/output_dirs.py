"""The one guard of every folder a command writes: nothing a user saved is written over unless they ask."""

import json
from pathlib import Path


OVERWRITE_FLAG = "--overwrite"


def check_output_dir(output_dir: str | Path, overwrite: bool = False, resuming: bool = False) -> Path:
    """Refuse to write into `output_dir` if it is a file, or a folder that holds anything, unless `overwrite`
    (the user asked) or `resuming` (the folder holds the run being continued). Returns the folder as a `Path`."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} is a file, not a folder; choose another output folder.")
    if overwrite or resuming or not output_dir.is_dir():
        return output_dir
    held = sorted(path.name for path in output_dir.iterdir())
    if held:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise FileExistsError(
            f"{output_dir} is not empty ({shown}) and nothing in it is written over unless you ask: choose another "
            f"output folder, or pass {OVERWRITE_FLAG} (overwrite=True in Python) to write into it."
        )
    return output_dir


def resumes_run_in(output_dir: str | Path, resume_from_checkpoint: str | bool | None) -> bool:
    """Whether `resume_from_checkpoint` continues the run saved in `output_dir` (and not another run's)."""
    if resume_from_checkpoint in (None, False, ""):
        return False
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() == "true":
        return True  # the Trainer resumes the last checkpoint of output_dir
    return Path(resume_from_checkpoint).resolve().parent == Path(output_dir).resolve()


# Commands that write a whole run into one folder (demo, ablate) leave this note in it, so that a second call can
# tell its own unfinished run from a folder of the user's.
RUN_NOTE = ".moe-audio-run.json"


def start_run(output_dir: str | Path, command: str, settings: dict, overwrite: bool = False,
              resumable: bool = False) -> bool:
    """Claim `output_dir` for a run of `command` with `settings`; returns whether an earlier run is continued.

    An empty (or new) folder is claimed. A folder holding this command's run with the same settings is continued
    when the command is `resumable`, and otherwise named as unfinished (or finished). Anything else (the user's files,
    another command's run, other settings) is refused, unless `overwrite`.
    """
    output_dir = Path(output_dir)
    note_path = output_dir / RUN_NOTE
    note = None
    if note_path.is_file():
        try:
            note = json.loads(note_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            note = None
    same = note is not None and note.get("command") == command and note.get("settings") == settings
    if not overwrite and note is not None:
        state = "a finished" if note.get("finished") else "an unfinished"
        if same and resumable:
            return True
        if same:
            raise FileExistsError(
                f"{output_dir} holds {state} `moe-audio {command}` run with these settings; pass {OVERWRITE_FLAG} "
                f"to run it again from the start there, or choose another output folder."
            )
        raise FileExistsError(
            f"{output_dir} holds {state} `moe-audio {note.get('command')}` run with other settings "
            f"({note.get('settings')}); choose another output folder, or pass {OVERWRITE_FLAG} to replace that run."
        )
    check_output_dir(output_dir, overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    note_path.write_text(json.dumps({"command": command, "settings": settings, "finished": False}, indent=2))
    return False


def finish_run(output_dir: str | Path) -> None:
    note_path = Path(output_dir) / RUN_NOTE
    note = json.loads(note_path.read_text())
    note_path.write_text(json.dumps({**note, "finished": True}, indent=2))
