"""Training data: JSONL manifests, `datasets.Dataset`s with an audio column, and the batch collator.

A manifest has one JSON object per line, in one of two forms (audio paths are relative to the manifest's folder):

    {"audio": "clips/a.wav", "prompt": "Is the voice high or low?", "response": "high"}
    {"audio": ["a.wav", "b.wav"], "prompt": "Same speaker?", "response": "no"}
    {"conversation": [{"role": "user", "content": [{"type": "audio", "path": "a.wav"},
                                                   {"type": "text", "text": "What is it?"}]},
                      {"role": "assistant", "content": "music"}]}

Any other keys (e.g. "category") are kept as columns. Rows are validated when the manifest is read: a missing or
unreadable file, a wrong schema or audio longer than the limit is an error that names the row and the reason, or,
with `skip_bad_rows=True`, the row is left out and counted.
"""

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import soundfile
import soxr

from .processing_moe_audio import SAMPLING_RATE, MoEAudioProcessor, load_audio


class BadRowError(ValueError):
    """A manifest row that cannot be used; the message names the row and the reason."""


@dataclass
class ManifestReport:
    """What reading a manifest kept and left out."""

    kept: int = 0
    skipped: list[str] = field(default_factory=list)


def _audio_paths(row: dict) -> list[str]:
    if "conversation" in row:
        return [
            block["path"]
            for message in row["conversation"]
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if block.get("type") == "audio"
        ]
    audio = row["audio"]
    return [audio] if isinstance(audio, str) else list(audio)


def _check_schema(row) -> None:
    if not isinstance(row, dict):
        raise BadRowError("is not a JSON object")
    if "conversation" in row:
        conversation = row["conversation"]
        if not isinstance(conversation, list) or not conversation:
            raise BadRowError("'conversation' must be a non-empty list of messages")
        for message in conversation:
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise BadRowError("every message needs 'role' and 'content'")
            if isinstance(message["content"], list):
                for block in message["content"]:
                    if block.get("type") == "audio" and not isinstance(block.get("path"), str):
                        raise BadRowError("an audio block in a manifest needs a 'path' (a string)")
        if not any(message["role"] == "assistant" for message in conversation):
            raise BadRowError("the conversation has no assistant message to learn from")
        return
    missing = [key for key in ("audio", "prompt", "response") if key not in row]
    if missing:
        raise BadRowError(f"has neither 'conversation' nor all of 'audio', 'prompt', 'response' (missing {missing})")
    audio = row["audio"]
    if not (isinstance(audio, str) or (isinstance(audio, list) and audio and all(isinstance(a, str) for a in audio))):
        raise BadRowError("'audio' must be a path or a non-empty list of paths")
    if not isinstance(row["prompt"], str) or not isinstance(row["response"], str):
        raise BadRowError("'prompt' and 'response' must be strings")


def _to_conversation(row: dict) -> list[dict]:
    if "conversation" in row:
        return row["conversation"]
    audio_blocks = [{"type": "audio", "path": path} for path in _audio_paths(row)]
    return [
        {"role": "user", "content": audio_blocks + [{"type": "text", "text": row["prompt"]}]},
        {"role": "assistant", "content": [{"type": "text", "text": row["response"]}]},
    ]


def _resolve(conversation: list[dict], folder: Path) -> list[dict]:
    resolved = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        blocks = []
        for block in content:
            if block.get("type") == "audio":
                block = {"type": "audio", "path": str((folder / block["path"]).resolve())}
            blocks.append({"type": block["type"], "text": block.get("text"), "path": block.get("path")})
        resolved.append({"role": message["role"], "content": blocks})
    return resolved


def _check_audio(path: str, max_audio_seconds: float) -> None:
    if not Path(path).is_file():
        raise BadRowError(f"audio file {path} does not exist")
    try:
        info = soundfile.info(path)
    except Exception as error:  # soundfile raises its own LibsndfileError and RuntimeError
        raise BadRowError(f"audio file {path} cannot be decoded ({error})") from None
    if info.frames == 0:
        raise BadRowError(f"audio file {path} is empty")
    if info.duration > max_audio_seconds:
        raise BadRowError(f"audio file {path} lasts {info.duration:.1f} s, over the limit of {max_audio_seconds} s")


def load_manifest(
    path: str | Path,
    max_audio_seconds: float = 600.0,
    skip_bad_rows: bool = False,
) -> tuple[datasets.Dataset, ManifestReport]:
    """Read and validate a JSONL manifest into a `datasets.Dataset` with `conversation` and `audio` columns.

    `audio` holds each row's audio file paths (absolute), in the order the audio appears in the conversation;
    nothing is decoded here, so the dataset stays small and works without torchcodec.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Manifest {path} does not exist.")
    rows, report = [], ManifestReport()
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise BadRowError(f"is not valid JSON ({error.msg})") from None
            _check_schema(row)
            conversation = _resolve(_to_conversation(row), path.parent)
            audio = [block["path"] for m in conversation for block in m["content"] if block["type"] == "audio"]
            for audio_path in audio:
                _check_audio(audio_path, max_audio_seconds)
        except BadRowError as error:
            message = f"{path}, line {line_number}: {error}"
            if not skip_bad_rows:
                raise BadRowError(f"{message}. Fix the row, or pass skip_bad_rows=True to leave bad rows out.") from None
            report.skipped.append(message)
            continue
        extra = {k: v for k, v in row.items() if k not in ("audio", "prompt", "response", "conversation")}
        rows.append({"conversation": conversation, "audio": audio, **extra})
    if not rows:
        raise ValueError(f"Manifest {path} has no usable rows ({len(report.skipped)} left out).")
    report.kept = len(rows)
    return datasets.Dataset.from_list(rows), report


def decode_audio_item(item) -> np.ndarray:
    """One audio item of a dataset row as 16 kHz mono float32: a path, or a `datasets.Audio` dict."""
    if isinstance(item, str):
        return load_audio(item, SAMPLING_RATE)
    if isinstance(item, dict):
        if item.get("array") is not None:
            array = np.asarray(item["array"], dtype=np.float32)
            array = array.mean(axis=-1) if array.ndim == 2 else array
            rate = item.get("sampling_rate", SAMPLING_RATE)
            return soxr.resample(array, rate, SAMPLING_RATE) if rate != SAMPLING_RATE else array
        if item.get("bytes") is not None:
            array, rate = soundfile.read(io.BytesIO(item["bytes"]), dtype="float32", always_2d=True)
            array = array.mean(axis=1)
            return soxr.resample(array, rate, SAMPLING_RATE) if rate != SAMPLING_RATE else array
        if item.get("path") is not None:
            return load_audio(item["path"], SAMPLING_RATE)
    raise TypeError(f"Cannot decode an audio item of type {type(item).__name__}: use a path or a datasets.Audio dict.")


@dataclass
class MoEAudioDataCollator:
    """Decodes each row's audio, applies the chat template and labels only the assistant's tokens.

    Rows need a `conversation` (audio blocks in order) and an `audio` list with one item per audio block: paths
    or `datasets.Audio` dicts (`decode=False` gives `{"path", "bytes"}`). Batches are padded on the right;
    labels are -100 on the prompt, the audio placeholders and the padding.
    """

    processor: MoEAudioProcessor
    padding_side: str = "right"

    def __call__(self, rows: list[dict]) -> dict:
        conversations = []
        for row in rows:
            num_blocks = sum(block["type"] == "audio" for message in row["conversation"] for block in message["content"])
            if num_blocks != len(row["audio"]):
                raise ValueError(
                    f"A row's conversation has {num_blocks} audio blocks but its 'audio' column holds "
                    f"{len(row['audio'])} items; give one audio item per audio block, in order."
                )
            clips = iter([decode_audio_item(item) for item in row["audio"]])
            conversation = []
            for message in row["conversation"]:
                blocks = []
                for block in message["content"]:
                    if block["type"] == "audio":
                        blocks.append({"type": "audio", "audio": next(clips)})
                    else:
                        blocks.append({"type": "text", "text": block["text"]})
                conversation.append({"role": message["role"], "content": blocks})
            conversations.append(conversation)
        return dict(
            self.processor.apply_chat_template(
                conversations, tokenize=True, return_labels=True, processor_kwargs={"padding_side": self.padding_side}
            )
        )
