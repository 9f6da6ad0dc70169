"""The one guard of every folder a command writes: nothing a user saved is written over unless they ask."""

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
