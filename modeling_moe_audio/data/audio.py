"""Audio items of dataset rows: checked on disk before training, decoded to 16 kHz mono float32 when batched.

Decoding goes through the processor's own functions (`load_audio`, `to_mono_float32`), so a clip is turned into
samples in one way, whichever road it comes by.
"""

import io
import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from ..processing_moe_audio import SAMPLING_RATE, load_audio, to_mono_float32


class BadRowError(ValueError):
    """A data row that cannot be used; the message names the row and the reason."""


def resolve_audio_path(value: str, folder: Path | None) -> str:
    """Where a data file's audio path points: an absolute path as written; a relative one against the data file's
    `folder`, which it may not climb out of with `..` (so a manifest from elsewhere cannot reach any file of the
    machine by a relative path). Links are followed: they are the user's own. Data without a folder of its own (a
    dataset streamed from the Hub) has absolute paths only."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path.resolve())
    if folder is None:
        raise BadRowError(f"audio path {value!r} is relative, and the data has no folder to find it in; store the "
                          "audio in the dataset (a datasets.Audio column) or give absolute paths")
    if ".." in path.parts:
        raise BadRowError(f"audio path {value!r} climbs out of the data file's folder with '..'; give an absolute path "
                          "or one inside the folder")
    return str((folder / path).resolve())


def _wav_shortfall(file: BinaryIO, size: int) -> float | None:
    """For a WAV file (`size` bytes long) whose data chunk is cut short, the fraction of the announced samples that
    is missing."""
    file.seek(0)
    head = file.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    while chunk := file.read(8):
        if len(chunk) < 8:
            return None
        chunk_size = int.from_bytes(chunk[4:], "little")
        if chunk[:4] == b"data":
            present = size - file.tell()
            return 1 - present / chunk_size if 0 < present < chunk_size else None
        file.seek(chunk_size + (chunk_size & 1), 1)
    return None


def resampled_length(num_samples: int, rate: int) -> int:
    """Samples a clip of `num_samples` at `rate` Hz has once resampled to 16 kHz, as `load_audio` (transformers'
    soundfile + soxr loader, which pads or trims to this length) and `decode_audio_item` give it."""
    return num_samples if rate == SAMPLING_RATE else math.ceil(num_samples * SAMPLING_RATE / rate)


def _resample(clip: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLING_RATE:
        return clip
    length = resampled_length(clip.shape[0], rate)
    resampled = soxr.resample(clip, rate, SAMPLING_RATE, quality="soxr_hq").astype(np.float32)
    return np.pad(resampled, (0, max(0, length - resampled.shape[0])))[:length]


def _check_audio(file: BinaryIO, size: int, what: str, max_audio_seconds: float | None) -> int:
    try:
        info = soundfile.info(file)
    except Exception as error:  # soundfile raises its own LibsndfileError and RuntimeError
        reason = getattr(error, "error_string", None) or error  # libsndfile's words, without the file object's repr
        raise BadRowError(f"{what} cannot be decoded ({reason})") from None
    if info.frames == 0:
        raise BadRowError(f"{what} is empty")
    shortfall = _wav_shortfall(file, size)
    if shortfall:
        warnings.warn(f"{what} is truncated: {100 * shortfall:.0f}% of the samples its header announces "
                      "are missing; only the rest is used.", stacklevel=3)
    if max_audio_seconds is not None and info.duration > max_audio_seconds:
        raise BadRowError(f"{what} lasts {info.duration:.1f} s, over the limit of {max_audio_seconds} s")
    return resampled_length(info.frames, info.samplerate)


def check_audio_file(path: str | Path, max_audio_seconds: float | None = None) -> int:
    """Raise `BadRowError` unless `path` is a decodable, non-empty audio file no longer than the limit; returns the
    number of samples it decodes to at 16 kHz (read from the file's header)."""
    if not Path(path).is_file():
        raise BadRowError(f"audio file {path} does not exist")
    with open(path, "rb") as file:
        return _check_audio(file, Path(path).stat().st_size, f"audio file {path}", max_audio_seconds)


def check_audio_bytes(data: bytes, name: str, max_audio_seconds: float | None = None) -> int:
    """The same checks for a clip stored in a dataset row (`datasets.Audio`'s bytes; `name`: its file name)."""
    what = f"audio {name} (bytes stored in the row)"
    if not data:
        raise BadRowError(f"{what} is empty")
    return _check_audio(io.BytesIO(data), len(data), what, max_audio_seconds)


def decode_audio_item(item, index: int = 0) -> np.ndarray:
    """One audio item of a dataset row as 16 kHz mono float32: a path, or a `datasets.Audio` dict
    (`{"array", "sampling_rate"}` decoded, or `{"path", "bytes"}` as `Audio(decode=False)` gives it)."""
    if isinstance(item, (str, Path)):
        return load_audio(item, SAMPLING_RATE)
    if isinstance(item, dict):
        if item.get("array") is not None:
            samples, rate = item["array"], item.get("sampling_rate", SAMPLING_RATE)
        elif item.get("bytes") is not None:
            samples, rate = soundfile.read(io.BytesIO(item["bytes"]), dtype="float32", always_2d=True)
        elif item.get("path") is not None:
            return load_audio(item["path"], SAMPLING_RATE)
        else:
            samples = None
        if samples is not None:
            return _resample(to_mono_float32(np.asarray(samples), index), rate)
    raise TypeError(f"Cannot decode an audio item of type {type(item).__name__}: use a path or a datasets.Audio dict.")
