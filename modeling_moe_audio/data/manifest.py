"""JSONL manifests: read, validated row by row, into a `datasets.Dataset`.

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

import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from .audio import BadRowError, check_audio_file
from .conversation import audio_blocks, normal_form, row_conversation


@dataclass
class ManifestReport:
    """What reading a manifest kept and left out."""

    kept: int = 0
    skipped: list[str] = field(default_factory=list)


def read_json_rows(path: str | Path, what: str = "Manifest") -> list[tuple[str, object]]:
    """(row label, parsed row) for each row of a JSONL file or a JSON list; a row that is not valid JSON comes as a
    `BadRowError` in place of the row. Labels are "line N" (JSONL) or "item N" (a JSON list), 1-based."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise BadRowError(f"{path}: not a valid JSON list ({error.msg}, line {error.lineno})") from None
        return [(f"item {number}", row) for number, row in enumerate(rows, start=1)]
    labelled = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            labelled.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            labelled.append((f"line {number}", BadRowError(f"is not valid JSON ({error.msg})")))
    return labelled


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
    rows, report = [], ManifestReport()
    for label, row in read_json_rows(path):
        try:
            if isinstance(row, BadRowError):
                raise row
            _check_schema(row)
            conversation = normal_form(row_conversation(row), path.parent)
            audio = [block["path"] for block in audio_blocks(conversation)]
            for audio_path in audio:
                check_audio_file(audio_path, max_audio_seconds)
        except BadRowError as error:
            message = f"{path}, {label}: {error}"
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


def load_rows(path: str | Path, limit: int | None = None) -> list[dict]:
    """The rows of a manifest as dicts (the first `limit` rows with a limit), e.g. for the analyses."""
    rows = list(load_manifest(path)[0])
    return rows[:limit] if limit else rows
