"""Benchmarks: MMAU and VoiceBench MMSU / OpenBookQA files read into `QAItem`s, from local files only.

A benchmark file is normalised into `QAItem`s (one multiple-choice question about one clip, whatever the
benchmark); `load_items` reads any of the formats below, `detect_format` tells them apart by their first row.

Accepted files
--------------

Audio paths are relative to the data file's folder (absolute paths are kept). Every row is checked when the file is
read: a missing field, a missing or undecodable audio file, an answer that is not among the choices, or too few
choices is a `BadRowError` that names the file, the row (``line N`` of a JSONL file, ``item N`` of a JSON list,
both 1-based) and the row's id.

**MMAU** (`format="mmau"`): a JSON list of objects (the released ``mmau-test-mini.json``) or JSONL, one per line::

    {"id": "b0cd...", "audio_id": "./test-mini-audios/b0cd....wav", "question": "What genre is the music?",
     "choices": ["Rock", "Jazz", "Pop", "Metal"], "answer": "Jazz", "task": "music",
     "category": "Genre Identification", "sub-category": null, "difficulty": "easy", "dataset": "MusicCaps"}

- required: ``audio_id`` (the clip's path), ``question`` (string), ``choices`` (list of at least 2 strings),
  ``answer`` (the text of the correct choice: matched exactly after stripping spaces, else case- and
  punctuation-insensitively when that singles out one choice);
- optional: ``id`` (default ``mmau-<row>``), ``task`` (``sound``/``music``/``speech``; default ``mmau``),
  ``category`` (default: the task), ``sub-category``, ``difficulty``, and ``transcript`` or ``audio_text`` (a text
  form of the audio; MMAU has none, so it has no modality gap, as in the paper).
  The question and the lettered choices are printed in the prompt; the audio is the clip.

**VoiceBench MMSU / OpenBookQA** (`format="voicebench"`): JSONL (or a JSON list), one spoken question per row, as
exported from ``hlt-lab/voicebench`` (configs ``mmsu`` and ``openbookqa``) with the audio written to files::

    {"audio": "audio/mmsu_00001.wav", "prompt": "Which gas do plants absorb? A. oxygen B. carbon dioxide
     C. nitrogen D. helium", "reference": "B", "subject": "biology"}
    {"audio_path": "q2.wav", "question": "Which gas do plants absorb?", "choices": ["oxygen", "carbon dioxide"],
     "answer": "(b)", "category": "biology"}

- audio: ``audio`` or ``audio_path`` (a path, or a ``{"path": ...}`` dict as `datasets` exports it);
- the text of the spoken question: ``prompt``, ``question`` or ``text`` (first present). It is the text form of the
  audio (VoiceBench's text modality): the modality gap's text-only prompt gives it instead of the audio;
- choices: a ``choices`` or ``options`` list, or else read from the text, where they are marked ``A.``, ``A)``,
  ``(A)`` or ``A:`` in order A, B, C, ... (inline or one per line; at least 2). Choices read from the text are spoken
  in the audio, so the audio prompt does not print them (nor the question: both are heard);
  choices given as a list are printed in the prompt as lettered options;
- reference: ``reference`` or ``answer``: a letter (``B``, ``b``, ``(B)``, ``B.``) within the choices, or the
  text of one choice;
- optional: ``id`` or ``question_id`` (default ``<benchmark>-<row>``), ``subject``, ``category`` or ``split``
  (the category; default the benchmark), ``benchmark`` (default: ``mmsu`` or ``openbookqa`` when the file name
  contains ``mmsu``, ``openbookqa`` or ``obqa``, else ``voicebench``; or the loader's ``benchmark=`` argument).
  The item's task is the benchmark, so a file mixing MMSU and OpenBookQA rows is broken down per benchmark.

**Both formats** may carry ``semantic_ids``, the clip's ids for a model with a second (semantic) stream: a list of
integers or the path of a ``.npy`` file of them, one id per 12.5 Hz audio token of the clip (see
`modeling_moe_audio.data.semantic_ids`).

**Datasets**: the same rows may come as a dataset instead of a file: a folder saved with `save_to_disk`, a parquet
file or folder, or a Hub dataset id (`split`: its split, none given: the only one, else ``test``; see
`modeling_moe_audio.data.sources`). The audio field may then be a `datasets.Audio` column, read as ``{"path",
"bytes"}`` without decoding; rows are named ``row N`` (0-based).

`format="auto"` (`load_items`) looks at the first row: ``audio_id`` with ``choices`` and ``answer`` is MMAU;
``audio``/``audio_path`` with ``prompt``/``question``/``text`` is VoiceBench.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


from ..data.audio import BadRowError, check_audio_bytes, check_audio_file, resolve_audio_path
from ..data.manifest import read_json_rows
from .answers import LETTERS, normalize_text, parse_options


@dataclass
class QAItem:
    """One multiple-choice question about one audio clip, whatever benchmark it comes from."""

    id: str
    audio: str | dict  # absolute path of the clip, or a `datasets.Audio` item `{"path", "bytes"}` of a dataset
    question: str  # the question's text (for VoiceBench: the spoken question without its options)
    options: list[str]
    answer_index: int  # index of the correct option in `options`
    category: str
    task: str  # MMAU: sound / music / speech; VoiceBench: the benchmark (mmsu / openbookqa)
    benchmark: str  # mmau / mmsu / openbookqa / voicebench
    audio_text: str | None = None  # the text form of the audio, when known: enables the text-only prompt
    question_in_audio: bool = False  # the question is spoken in the audio: the audio prompt does not print it
    options_in_audio: bool = False  # the lettered options are spoken too: the prompt does not list them
    difficulty: str | None = None
    subcategory: str | None = None
    semantic_ids: list[int] | None = None  # the clip's second-stream ids, one per 12.5 Hz audio token, when given

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_index]


def _read_rows(source: str | Path, split: str | None = None):
    """((row label, parsed row) for each row, the folder relative audio paths are in): a JSON list or a JSONL file
    (`read_json_rows`), or the same rows as a dataset (saved to disk, parquet, a Hub id: `data.sources.dataset_rows`,
    read as needed; `split`: its split, none given: the only one, else `test`). No rows at all is an error."""
    path = Path(source)
    if not path.is_file() or path.suffix == ".parquet":
        from ..data.sources import dataset_rows  # datasets: not for `moe-audio evaluate --help`

        return dataset_rows(source, split, default_split="test", what="Benchmark data")
    rows = read_json_rows(path, what="Benchmark file")
    if not rows:
        raise ValueError(f"Benchmark file {path} has no rows.")
    return rows, path.parent


def _first(row: dict, keys: tuple[str, ...]):
    return next((row[key] for key in keys if row.get(key) is not None), None)


def _resolve_audio(value, folder: Path | None) -> tuple[str | dict, int]:
    """(the clip as a `QAItem` holds it, its length in samples at 16 kHz), after checking it."""
    if isinstance(value, dict) and value.get("bytes") is not None:  # a `datasets.Audio` item holding the clip
        num_samples = check_audio_bytes(value["bytes"], value.get("path") or "clip")
        return {"path": value.get("path"), "bytes": value["bytes"]}, num_samples
    if isinstance(value, dict):
        value = value.get("path")
    if not isinstance(value, str) or not value:
        raise BadRowError("the audio field must be a path (a string) or a {'path': ...} dict")
    path = resolve_audio_path(value, folder)
    return path, check_audio_file(path)


def _audio_and_ids(row: dict, value, folder: Path | None) -> dict:
    """The item's `audio` and, when the row carries them, its clip's `semantic_ids` (a list of ints or a `.npy`
    path, one id per 12.5 Hz audio token), checked against the clip."""
    from ..data.semantic_ids import SEMANTIC_IDS, row_semantic_ids

    audio, num_samples = _resolve_audio(value, folder)
    ids = row_semantic_ids(row.get(SEMANTIC_IDS), [num_samples], folder)
    return {"audio": audio, "semantic_ids": ids[0] if ids else None}


def _check_options(options) -> list[str]:
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
        raise BadRowError(f"the choices must be a list of at least 2 non-empty strings (got {options!r})")
    if len(options) > len(LETTERS):
        raise BadRowError(f"{len(options)} choices is more than the {len(LETTERS)} letters A-Z")
    return [option.strip() for option in options]


def _load(path, limit, parse_row, split=None) -> list[QAItem]:
    rows, folder = _read_rows(path, split)
    items = []
    for label, row in rows:
        if limit is not None and len(items) >= limit:
            break
        row_id = row.get("id", row.get("question_id")) if isinstance(row, dict) else None
        where = f"{path}, {label}" + (f" (id {row_id})" if row_id is not None else "")
        try:
            if isinstance(row, BadRowError):
                raise row
            if not isinstance(row, dict):
                raise BadRowError("is not a JSON object")
            items.append(parse_row(row, label, folder))
        except BadRowError as error:
            raise BadRowError(f"{where}: {error}") from None
    if not items:
        raise ValueError(f"Benchmark file {path} has no rows.")
    return items


def _mmau_row(row: dict, label: str, folder: Path | None) -> QAItem:
    missing = [key for key in ("audio_id", "question", "choices", "answer") if row.get(key) is None]
    if missing:
        raise BadRowError(f"missing MMAU field(s) {missing} (needs audio_id, question, choices, answer)")
    if not isinstance(row["question"], str) or not isinstance(row["answer"], str):
        raise BadRowError("'question' and 'answer' must be strings")
    options = _check_options(row["choices"])
    answer = row["answer"].strip()
    matches = [i for i, option in enumerate(options) if option == answer]
    if not matches:
        matches = [i for i, option in enumerate(options) if normalize_text(option) == normalize_text(answer)]
    if len(matches) != 1:
        reason = "is not among" if not matches else "matches several of"
        raise BadRowError(f"answer {row['answer']!r} {reason} the choices {options}")
    task = str(row.get("task") or "mmau")
    audio_text = _first(row, ("audio_text", "transcript"))
    return QAItem(
        id=str(row.get("id", f"mmau-{label.split()[-1]}")),
        **_audio_and_ids(row, row["audio_id"], folder),
        question=row["question"].strip(),
        options=options,
        answer_index=matches[0],
        category=str(row.get("category") or task),
        task=task,
        benchmark="mmau",
        audio_text=audio_text if isinstance(audio_text, str) and audio_text.strip() else None,
        difficulty=row.get("difficulty"),
        subcategory=row.get("sub-category", row.get("subcategory")),
    )


def load_mmau(path: str | Path, limit: int | None = None, split: str | None = None) -> list[QAItem]:
    """MMAU items from a JSON list or JSONL file, or a dataset (schema in the module docstring); `limit`: the first
    N rows."""
    return _load(path, limit, _mmau_row, split)


def _letter_index(value: str, num_options: int) -> int | None:
    m = re.fullmatch(r"\s*\(?\s*([A-Za-z])\s*[).:]?\s*", value)
    if m and LETTERS.index(m[1].upper()) < num_options:
        return LETTERS.index(m[1].upper())
    return None


def _voicebench_row(benchmark: str):
    def parse(row: dict, label: str, folder: Path | None) -> QAItem:
        audio = _first(row, ("audio", "audio_path"))
        text = _first(row, ("prompt", "question", "text"))
        reference = _first(row, ("reference", "answer"))
        missing = [name for name, value in (("audio or audio_path", audio), ("prompt, question or text", text),
                                            ("reference or answer", reference)) if value is None]
        if missing:
            raise BadRowError(f"missing VoiceBench field(s): {', '.join(missing)}")
        if not isinstance(text, str) or not text.strip():
            raise BadRowError("the question text must be a non-empty string")
        text = text.strip()
        parsed = parse_options(text)
        choices = _first(row, ("choices", "options"))
        if choices is not None:
            options = _check_options(choices)
            question = parsed[0] if parsed else text
        elif parsed is not None:
            question, options = parsed
        else:
            raise BadRowError("no choices: give a 'choices' list, or write them in the text as 'A. ... B. ...'")
        if not isinstance(reference, str):
            raise BadRowError(f"the reference must be a letter or a choice's text (got {reference!r})")
        answer_index = _letter_index(reference, len(options))
        if answer_index is None:
            by_text = [i for i, option in enumerate(options) if normalize_text(option) == normalize_text(reference)]
            if len(by_text) != 1:
                letters = f"A-{LETTERS[len(options) - 1]}"
                raise BadRowError(f"reference {reference!r} is neither a letter {letters} nor one of the choices {options}")
            answer_index = by_text[0]
        name = str(row.get("benchmark") or benchmark)
        return QAItem(
            id=str(row.get("id", row.get("question_id", f"{name}-{label.split()[-1]}"))),
            **_audio_and_ids(row, audio, folder),
            question=question or text,
            options=options,
            answer_index=answer_index,
            category=str(_first(row, ("subject", "category", "split")) or name),
            task=name,
            benchmark=name,
            audio_text=text,
            question_in_audio=True,
            options_in_audio=parsed is not None,
        )

    return parse


def _benchmark_from_name(path: Path) -> str:
    name = path.name.lower()
    if "mmsu" in name:
        return "mmsu"
    if "openbookqa" in name or "obqa" in name:
        return "openbookqa"
    return "voicebench"


def load_voicebench(path: str | Path, benchmark: str | None = None, limit: int | None = None,
                    split: str | None = None) -> list[QAItem]:
    """VoiceBench MMSU / OpenBookQA items from JSONL (or a JSON list), or a dataset; schema in the module docstring."""
    return _load(path, limit, _voicebench_row(benchmark or _benchmark_from_name(Path(path))), split)


def detect_format(path: str | Path, split: str | None = None) -> str:
    """`mmau` or `voicebench`, from the keys of the file's (or dataset's) first row."""
    rows, _ = _read_rows(path, split)
    first = next(iter(rows), None)
    if first is None:
        raise ValueError(f"Benchmark data {path} has no rows.")
    label, row = first
    if isinstance(row, dict):
        if "audio_id" in row and "choices" in row and "answer" in row:
            return "mmau"
        if any(k in row for k in ("audio", "audio_path")) and any(k in row for k in ("prompt", "question", "text")):
            return "voicebench"
    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
    raise ValueError(
        f"Cannot tell the format of {path} from its first row ({label}, keys {keys}): MMAU rows have audio_id, "
        "question, choices, answer; VoiceBench rows have audio or audio_path and prompt; pass --format."
    )


def load_items(path: str | Path, format: str = "auto", limit: int | None = None,
               split: str | None = None) -> list[QAItem]:
    """Items from a local benchmark file or a dataset (`split`: its split): `format` is `mmau`, `voicebench` or
    `auto` (from the first row)."""
    format = detect_format(path, split) if format == "auto" else format
    if format == "mmau":
        return load_mmau(path, limit=limit, split=split)
    if format == "voicebench":
        return load_voicebench(path, limit=limit, split=split)
    raise ValueError(f"Unknown format {format!r}: use mmau, voicebench or auto.")
