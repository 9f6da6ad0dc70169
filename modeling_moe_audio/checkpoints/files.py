"""What a moe-audio checkpoint folder holds: the three code files of the package that wrote it, and safetensors
weights (checked by their header, never by their name alone)."""

import json
import struct
from pathlib import Path


CODE_FILES = ("configuration_moe_audio.py", "modeling_moe_audio.py", "processing_moe_audio.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # where the installed, current copies of CODE_FILES live
WEIGHTS = "model.safetensors"
SHARDED_WEIGHTS_INDEX = "model.safetensors.index.json"
CODE_BACKUP_PREFIX = "code-backup-"


def outdated_code_files(folder: str | Path) -> list[str]:
    """The code files in `folder` whose bytes differ from the installed package's (missing ones are not listed)."""
    folder = Path(folder)
    return [
        name for name in CODE_FILES
        if (folder / name).is_file() and (folder / name).read_bytes() != (PACKAGE_DIR / name).read_bytes()
    ]


def is_safetensors_file(path: Path) -> bool:
    """Whether `path` really is a whole safetensors file: an 8-byte header length, that many bytes of a JSON object,
    then every tensor the header lists. A pickle renamed `model.safetensors` is not, nor is a copy cut short."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > path.stat().st_size - 8:
                return False
            header = json.loads(file.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (OSError, struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False
    return 8 + length + max(ends, default=0) <= path.stat().st_size
