"""JSONL manifests: read, validated row by row, into a `datasets.Dataset`.

A manifest has one JSON object per line, in one of two forms (audio paths are relative to the manifest's folder):

    {"audio": "clips/a.wav", "prompt": "Is the voice high or low?", "response": "high"}
    {"audio": ["a.wav", "b.wav"], "prompt": "Same speaker?", "response": "no"}
    {"conversation": [{"role": "user", "content": [{"type": "audio", "path": "a.wav"},
                                                   {"type": "text", "text": "What is it?"}]},
                      {"role": "assistant", "content": "music"}]}

A row may also carry the second stream's ids, `"semantic_ids"`: per clip a list of integers or a `.npy` file
(`data.semantic_ids`), for every row or for none. Any other keys (e.g. "category") are kept as columns. Rows are validated when the manifest is read: a missing or
unreadable file, a wrong schema or audio longer than the limit is an error that names the row and the reason, or,
with `skip_bad_rows=True`, the row is left out and counted.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow as pa

from .audio import BadRowError, check_audio_bytes, check_audio_file, resolve_audio_path
from .conversation import normal_form, row_conversation
from .semantic_ids import SEMANTIC_IDS, SemanticIdsRule, check_all_or_none, row_semantic_ids


@dataclass
class ManifestReport:
    """What reading a manifest kept and left out."""

    kept: int = 0
    skipped: list[str] = field(default_factory=list)


def read_json_rows(path: str | Path, what: str = "Manifest") -> list[tuple[str, object]]:
    """(row label, parsed row) for each row of a JSONL file or a JSON list; a row that is not valid JSON (or not
    UTF-8 text) comes as a `BadRowError` in place of the row. Labels are "line N" (JSONL) or "item N" (a JSON list),
    1-based."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give the JSONL file.")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    data = path.read_bytes()
    if data.lstrip().startswith(b"["):
        try:
            rows = json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BadRowError(f"{path}: not a valid UTF-8 JSON list ({error})") from None
        return [(f"item {number}", row) for number, row in enumerate(rows, start=1)]
    labelled = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            labelled.append((f"line {number}", json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError:
            labelled.append((f"line {number}", BadRowError("is not UTF-8 text")))
        except json.JSONDecodeError as error:
            labelled.append((f"line {number}", BadRowError(f"is not valid JSON ({error.msg})")))
    return labelled


ROLES = ("system", "user", "assistant")
BLOCK_TYPES = ("text", "audio")
# ChatML's and the processor's special tokens (`<|im_start|>`, `<|audio_pad|>`, ...): written in a row's text they
# would be taken for the real ones (a placeholder without audio, a turn that ends early).
SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")
JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", list: "list", dict: "object",
              type(None): "null"}


def _check_text(text, where: str) -> None:
    if not isinstance(text, str):
        raise BadRowError(f"{where} must be a string (got {JSON_TYPES.get(type(text), type(text).__name__)})")
    token = SPECIAL_TOKEN.search(text)
    if token:
        raise BadRowError(f"{where} holds the special token {token[0]!r}; write the audio as an audio block, not as "
                          "its placeholder text, and leave chat markup to the template")


def _check_message(message, index: int) -> int:
    """Check one message; returns how many of its audio blocks have no path (they take the row's `audio` clips)."""
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise BadRowError(f"message {index} needs 'role' and 'content'")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        raise BadRowError(f"message {index} has role {role!r}; use one of {', '.join(ROLES)}")
    if isinstance(content, str):
        _check_text(content, f"message {index}'s content")
        return 0
    if not isinstance(content, list) or not content:
        raise BadRowError(f"message {index}'s content must be a string or a non-empty list of blocks")
    pathless = 0
    for block in content:
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            raise BadRowError(f"message {index} has a block that is not {{'type': 'text' | 'audio', ...}}: {block!r}")
        if block["type"] == "text":
            _check_text(block.get("text"), f"a text block of message {index}")
        elif role != "user":
            raise BadRowError(f"message {index} ({role}) holds audio; audio goes in user messages only")
        elif block.get("path") is None:
            pathless += 1
        elif not isinstance(block["path"], str) or not block["path"]:
            raise BadRowError("an audio block in a manifest needs a 'path' (a string)")
    return pathless


def _is_audio_item(value) -> bool:
    """A path, or a `datasets.Audio(decode=False)` dict (`{"path", "bytes"}`: the bytes or the path present)."""
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, dict) and (isinstance(value.get("bytes"), bytes)
                                        or (isinstance(value.get("path"), str) and bool(value["path"])))


def _audio_clips(audio) -> list:
    """A row's `audio`: one clip or a non-empty list of clips, as a list."""
    if not (_is_audio_item(audio) or (isinstance(audio, list) and audio and all(_is_audio_item(a) for a in audio))):
        raise BadRowError("'audio' must be a path or a non-empty list of paths (or of datasets.Audio items)")
    return audio if isinstance(audio, list) else [audio]


def _check_schema(row) -> None:
    if not isinstance(row, dict):
        raise BadRowError("is not a JSON object")
    if "conversation" in row:
        conversation = row["conversation"]
        if not isinstance(conversation, list) or not conversation:
            raise BadRowError("'conversation' must be a non-empty list of messages")
        pathless = sum(_check_message(message, index) for index, message in enumerate(conversation))
        if not any(message["role"] == "assistant" for message in conversation):
            raise BadRowError("the conversation has no assistant message to learn from")
        if pathless and row.get("audio") is None:
            raise BadRowError("an audio block in a manifest needs a 'path' (a string), or the row's 'audio' holds "
                              "the clips of the blocks without one, in order")
        if pathless and len(_audio_clips(row["audio"])) != pathless:
            raise BadRowError(f"the conversation has {pathless} audio blocks without a path but 'audio' holds "
                              f"{len(_audio_clips(row['audio']))} clips; give one clip per block, in order")
        return
    missing = [key for key in ("audio", "prompt", "response") if key not in row]
    if missing:
        raise BadRowError(f"has neither 'conversation' nor all of 'audio', 'prompt', 'response' (missing {missing})")
    _audio_clips(row["audio"])
    if not isinstance(row["prompt"], str) or not isinstance(row["response"], str):
        raise BadRowError("'prompt' and 'response' must be strings")
    _check_text(row["prompt"], "'prompt'")
    _check_text(row["response"], "'response'")


def _check_columns(row: dict, column_types: dict, label: str) -> None:
    """Extra keys become dataset columns, which hold one type each: the first row that has a key decides it."""
    for key, value in row.items():
        kind = JSON_TYPES.get(type(value), type(value).__name__)
        first = column_types.setdefault(key, (kind, label))
        if kind != "null" and first[0] != "null" and first[0] != kind:
            raise BadRowError(f"its {key!r} is a {kind}, but {first[1]} made the column a {first[0]}; use one type "
                              "per key in a manifest")
        if first[0] == "null" and kind != "null":
            column_types[key] = (kind, label)


ROW_KEYS = ("audio", "prompt", "response", "conversation")


def checked_row(row, folder: Path | None, max_audio_seconds: float | None = 600.0, check_audio: bool = True,
                semantic: SemanticIdsRule = SemanticIdsRule()) -> dict:
    """A row (a manifest's object, or a dataset row with the same keys; in a conversation, audio blocks without a
    path take the row's `audio` clips, in order) in normal form, `{"conversation", "audio",
    **other keys}`, after every check: its schema (roles, block types, audio in user messages only, no special
    tokens in its text) and, with `check_audio`, each clip (a file, see `resolve_audio_path` for where it may be,
    or a `datasets.Audio` item's bytes: it must decode, hold samples and last at most `max_audio_seconds`). A bad
    row raises `BadRowError` with the reason. `audio` holds each clip's absolute path (a `{"path", "bytes"}` dict
    for bytes stored in the row), in the order the audio is heard; nothing is decoded here. A row's `semantic_ids` (the
    second stream's ids, see `data.semantic_ids`) become one list of ints per clip, checked against each clip's length
    (with `check_audio`) and against what the model takes (`semantic`, when it knows the model)."""
    _check_schema(row)
    audio, num_samples = [], []
    # In a conversation, audio blocks without a path take the row's `audio` clips in order (as datasets hold them).
    clips = iter(row["audio"] if isinstance(row.get("audio"), list) else [row.get("audio")])

    def resolve(item) -> str:
        if item is None:
            item = next(clips)
        if isinstance(item, dict) and item.get("bytes") is not None:
            name = item.get("path") or f"clip {len(audio) + 1}"
            num_samples.append(check_audio_bytes(item["bytes"], name, max_audio_seconds) if check_audio else None)
            audio.append({"path": item.get("path"), "bytes": item["bytes"]})
            return name
        path = resolve_audio_path(item["path"] if isinstance(item, dict) else item, folder)
        num_samples.append(check_audio_file(path, max_audio_seconds) if check_audio else None)
        audio.append(path)
        return path

    conversation = normal_form(row_conversation(row), resolve)
    checked = {"conversation": conversation, "audio": audio, **{k: v for k, v in row.items() if k not in ROW_KEYS}}
    ids = row_semantic_ids(row.get(SEMANTIC_IDS), num_samples, folder, semantic)
    if ids is not None:
        checked[SEMANTIC_IDS] = ids
    else:
        checked.pop(SEMANTIC_IDS, None)  # a null in a dataset's column: the row has none
    return checked


def bad_row_error(where: str, error: BadRowError) -> BadRowError:
    """The error that stops a run at a bad row: where it is, the reason, and the way out."""
    return BadRowError(f"{where}: {error}. Fix the row, or pass skip_bad_rows=True (--skip_bad_rows) to leave bad rows "
                       "out.")


def load_manifest(
    path: str | Path,
    max_audio_seconds: float = 600.0,
    skip_bad_rows: bool = False,
    semantic: SemanticIdsRule = SemanticIdsRule(),
) -> tuple[datasets.Dataset, ManifestReport]:
    """Read and validate a JSONL manifest into a `datasets.Dataset` with `conversation` and `audio` columns.

    Every row is checked here, before any training step (`checked_row`), and so are its extra columns' types. A bad
    row is an error naming its line and the reason, or, with `skip_bad_rows=True`, is left out and counted in the
    report. `audio` holds each row's audio file paths (absolute), in the order the audio appears in the
    conversation; nothing is decoded here, so the dataset stays small and works without torchcodec.
    """
    path = Path(path)
    rows, report, column_types = [], ManifestReport(), {}
    for label, row in read_json_rows(path):
        try:
            if isinstance(row, BadRowError):
                raise row
            checked = checked_row(row, path.parent, max_audio_seconds, semantic=semantic)
            _check_columns({k: v for k, v in checked.items() if k not in ("conversation", "audio", SEMANTIC_IDS)},
                           column_types, label)
        except BadRowError as error:
            if not skip_bad_rows:
                raise bad_row_error(f"{path}, {label}", error) from None
            report.skipped.append(f"{path}, {label}: {error}")
            continue
        rows.append(checked)
    if not rows:
        raise ValueError(f"Manifest {path} has no usable rows ({len(report.skipped)} left out).")
    check_all_or_none([SEMANTIC_IDS in row for row in rows], f"Manifest {path}")
    report.kept = len(rows)
    try:
        return datasets.Dataset.from_list(rows), report
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:  # nested values whose types differ between rows
        raise ValueError(f"{path}: rows disagree on the type of a value inside a column ({error}); use one type per "
                         "key and per nested key.") from None


def load_rows(path: str | Path, limit: int | None = None) -> list[dict]:
    """The rows of a manifest as dicts (the first `limit` rows with a limit), e.g. for the analyses."""
    rows = list(load_manifest(path)[0])
    return rows[:limit] if limit else rows
