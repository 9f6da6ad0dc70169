"""Multiple-choice audio QA evaluation (the paper's section 4): MMAU, VoiceBench MMSU / OpenBookQA, modality gap.

Everything reads local files; nothing is downloaded. A benchmark file is normalised into `QAItem`s, each item is
asked by greedy generation (audio prompt, or the text-only prompt for the modality gap), the free-form answer is
mapped to an option index by `extract_choice` (None when nothing, or something ambiguous, matches: never a guess),
and accuracy is computed with the `evaluate` library (`ChoiceAccuracy`, an `evaluate.Metric`), overall, per task,
per category and per benchmark. `modality_gap` reports text accuracy, audio accuracy and gap = audio - text
(Table 1 of the paper; negative when the model does worse from audio than from text).

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

`format="auto"` (`load_items`) looks at the first row: ``audio_id`` with ``choices`` and ``answer`` is MMAU;
``audio``/``audio_path`` with ``prompt``/``question``/``text`` is VoiceBench.

Public API
----------

`QAItem`, `load_mmau`, `load_voicebench`, `load_items`, `parse_options`, `extract_choice`, `build_prompt`,
`build_conversation`, `ChoiceAccuracy`, `evaluate_model`, `modality_gap`, `write_report`, `main` (the
``moe-audio evaluate`` command).
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
import evaluate
import soundfile
import torch
from tqdm.auto import tqdm

from .output_dirs import check_output_dir
from .data.audio import BadRowError, decode_audio_item
from .evaluation import greedy_generate


LETTERS = string.ascii_uppercase
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SPOKEN_QUESTION_INSTRUCTION = "Answer the question in the audio."
TEXT_QUESTION_INSTRUCTION = "Answer the question."
# "lettered": the benchmarks' own prompt. "question": the question alone, for models fine-tuned to answer a bare
# question with the option's words (the extractor maps those words to the option).
PROMPT_STYLES = ("lettered", "question")


# ----------------------------------------------------------------------------------------------------------- items


@dataclass
class QAItem:
    """One multiple-choice question about one audio clip, whatever benchmark it comes from."""

    id: str
    audio: str  # absolute path of the clip
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

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_index]


def _read_rows(path: Path) -> list[tuple[str, object]]:
    """(row label, parsed row) for a JSON list or a JSONL file; blank lines are skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"Benchmark file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise BadRowError(f"{path}: not a valid JSON list ({error.msg}, line {error.lineno})") from None
        return [(f"item {n}", row) for n, row in enumerate(rows, start=1)]
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            out.append((f"line {number}", BadRowError(f"is not valid JSON ({error.msg})")))
    if not out:
        raise ValueError(f"Benchmark file {path} has no rows.")
    return out


def _first(row: dict, keys: tuple[str, ...]):
    return next((row[key] for key in keys if row.get(key) is not None), None)


def _resolve_audio(value, folder: Path) -> str:
    if isinstance(value, dict):
        value = value.get("path")
    if not isinstance(value, str) or not value:
        raise BadRowError("the audio field must be a path (a string) or a {'path': ...} dict")
    path = Path(value)
    path = path if path.is_absolute() else (folder / path)
    path = path.resolve()
    if not path.is_file():
        raise BadRowError(f"audio file {path} does not exist")
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # libsndfile's own error types
        raise BadRowError(f"audio file {path} cannot be decoded ({error})") from None
    if info.frames == 0:
        raise BadRowError(f"audio file {path} is empty")
    return str(path)


def _check_options(options) -> list[str]:
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
        raise BadRowError(f"the choices must be a list of at least 2 non-empty strings (got {options!r})")
    if len(options) > len(LETTERS):
        raise BadRowError(f"{len(options)} choices is more than the {len(LETTERS)} letters A-Z")
    return [option.strip() for option in options]


def _normalise(text: str) -> str:
    """Lowercase words and digits only, single-spaced: what option texts are compared on."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _without_article(normalised: str) -> str:
    return re.sub(r"^(?:a|an|the) ", "", normalised)


def _load(path, limit, parse_row) -> list[QAItem]:
    path = Path(path)
    items = []
    for label, row in _read_rows(path):
        if limit is not None and len(items) >= limit:
            break
        row_id = row.get("id", row.get("question_id")) if isinstance(row, dict) else None
        where = f"{path}, {label}" + (f" (id {row_id})" if row_id is not None else "")
        try:
            if isinstance(row, BadRowError):
                raise row
            if not isinstance(row, dict):
                raise BadRowError("is not a JSON object")
            items.append(parse_row(row, label, path))
        except BadRowError as error:
            raise BadRowError(f"{where}: {error}") from None
    if not items:
        raise ValueError(f"Benchmark file {path} has no rows.")
    return items


def _mmau_row(row: dict, label: str, path: Path) -> QAItem:
    missing = [key for key in ("audio_id", "question", "choices", "answer") if row.get(key) is None]
    if missing:
        raise BadRowError(f"missing MMAU field(s) {missing} (needs audio_id, question, choices, answer)")
    if not isinstance(row["question"], str) or not isinstance(row["answer"], str):
        raise BadRowError("'question' and 'answer' must be strings")
    options = _check_options(row["choices"])
    answer = row["answer"].strip()
    matches = [i for i, option in enumerate(options) if option == answer]
    if not matches:
        matches = [i for i, option in enumerate(options) if _normalise(option) == _normalise(answer)]
    if len(matches) != 1:
        reason = "is not among" if not matches else "matches several of"
        raise BadRowError(f"answer {row['answer']!r} {reason} the choices {options}")
    task = str(row.get("task") or "mmau")
    audio_text = _first(row, ("audio_text", "transcript"))
    return QAItem(
        id=str(row.get("id", f"mmau-{label.split()[-1]}")),
        audio=_resolve_audio(row["audio_id"], path.parent),
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


def load_mmau(path: str | Path, limit: int | None = None) -> list[QAItem]:
    """MMAU items from a JSON list or JSONL file (schema in the module docstring); `limit`: the first N rows."""
    return _load(path, limit, _mmau_row)


_OPTION_MARK = re.compile(r"(?<![A-Za-z0-9])(?P<open>\()?(?P<letter>[A-Z])(?(open)\)|[.):])(?=\s)")


def parse_options(text: str) -> tuple[str, list[str]] | None:
    """Split a question whose options are written in it ("... A. x B. y" or one per line) into (question, options).

    Options are marked ``A.``, ``A)``, ``(A)`` or ``A:`` and must run A, B, C, ... in order; the last run of marks
    that starts at A wins, so a letter mark inside the question ("vitamin A. Which...") does not split it.
    None when fewer than two options are found.
    """
    marks = [(m.start(), m.end(), LETTERS.index(m["letter"])) for m in _OPTION_MARK.finditer(text + " ")]
    best = None
    for i, (_, _, letter) in enumerate(marks):
        if letter != 0:
            continue
        chain, want = [marks[i]], 1
        for mark in marks[i + 1 :]:
            if mark[2] == want:
                chain.append(mark)
                want += 1
        if len(chain) >= 2 and (best is None or len(chain) >= len(best)):
            best = chain
    if best is None:
        return None
    options = []
    for k, (_, end, _) in enumerate(best):
        stop = best[k + 1][0] if k + 1 < len(best) else len(text)
        option = re.sub(r"[\s,;]*(?:\bor\b)?[\s,;]*$", "", text[end:stop]).strip()
        options.append(option.rstrip(".").strip())
    if not all(options):
        return None
    return text[: best[0][0]].strip(), options


def _letter_index(value: str, num_options: int) -> int | None:
    m = re.fullmatch(r"\s*\(?\s*([A-Za-z])\s*[).:]?\s*", value)
    if m and LETTERS.index(m[1].upper()) < num_options:
        return LETTERS.index(m[1].upper())
    return None


def _voicebench_row(benchmark: str):
    def parse(row: dict, label: str, path: Path) -> QAItem:
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
            by_text = [i for i, option in enumerate(options) if _normalise(option) == _normalise(reference)]
            if len(by_text) != 1:
                letters = f"A-{LETTERS[len(options) - 1]}"
                raise BadRowError(f"reference {reference!r} is neither a letter {letters} nor one of the choices {options}")
            answer_index = by_text[0]
        name = str(row.get("benchmark") or benchmark)
        return QAItem(
            id=str(row.get("id", row.get("question_id", f"{name}-{label.split()[-1]}"))),
            audio=_resolve_audio(audio, path.parent),
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


def load_voicebench(path: str | Path, benchmark: str | None = None, limit: int | None = None) -> list[QAItem]:
    """VoiceBench MMSU / OpenBookQA items from JSONL (or a JSON list); schema in the module docstring."""
    path = Path(path)
    return _load(path, limit, _voicebench_row(benchmark or _benchmark_from_name(path)))


def detect_format(path: str | Path) -> str:
    """`mmau` or `voicebench`, from the keys of the file's first row."""
    label, row = _read_rows(Path(path))[0]
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


def load_items(path: str | Path, format: str = "auto", limit: int | None = None) -> list[QAItem]:
    """Items from a local benchmark file: `format` is `mmau`, `voicebench` or `auto` (from the first row)."""
    format = detect_format(path) if format == "auto" else format
    if format == "mmau":
        return load_mmau(path, limit=limit)
    if format == "voicebench":
        return load_voicebench(path, limit=limit)
    raise ValueError(f"Unknown format {format!r}: use mmau, voicebench or auto.")


# ---------------------------------------------------------------------------------------------- answer extraction

_LEAD_INS = (
    r"\banswer\b(?:\s+(?:to\s+(?:this|the)\s+question|here|then))?\s*(?:is|was|would be|should be|will be|must be|=)?",
    r"\b(?:correct|right|best|final)\s+(?:option|choice|letter)\s*(?:is|would be|should be|=)?",
    r"\bi\s*(?:would|'d|will|'ll)?\s*(?:choose|pick|select|go with)\b",
    r"\\boxed\s*\{",
)
_SELECTOR = r"(?:(?:option|choice|letter)\s*(?:number\s*)?[#:]?\s*)"
_LETTER = r"(?P<open>[(\[])?\s*(?P<x>[A-Za-z])\s*(?(open)[)\]])(?![A-Za-z0-9])"
_NUMBER = r"(?P<open>[(\[])?\s*(?P<n>\d{1,2})\s*(?(open)[)\]])(?![0-9])"
_TIER1 = [re.compile(lead + r"\s*[:\-]?\s*" + _SELECTOR + "?" + _LETTER, re.I) for lead in _LEAD_INS] + [
    re.compile(lead + r"\s*[:\-]?\s*" + _SELECTOR + _NUMBER, re.I) for lead in _LEAD_INS
] + [
    re.compile(r"\b(?:option|choice)\s+" + _LETTER + r"\s+is\s+(?:the\s+)?(?:correct|right|best)", re.I),
]
_TIER2 = [re.compile(r"^\s*(?P<open>[(\[])?(?P<x>[A-Za-z])(?(open)[)\]]|(?=[.):,]|\s*$|\s*\n))")]
_TIER3 = [
    re.compile(r"(?<![A-Za-z0-9])(?P<open>\()(?P<x>[A-Za-z])\)"),
    re.compile(r"\b(?:option|choice)\s+(?P<x>[A-Z])(?![A-Za-z0-9])", re.I),
    re.compile(r"\b(?:option|choice)\s*#?(?P<n>\d{1,2})(?![0-9])", re.I),
]
_BOLD = re.compile(r"\*\*\s*\(?(?P<x>[A-Za-z])\)?[.):]?\s*\*\*")
_AMBIGUOUS = object()


def _strip_markup(text: str) -> str:
    text = re.sub(r"\\(?:text|textbf|mathbf|mathrm)\s*\{([^{}]*)\}", r"\1", text)
    return re.sub(r"[*`$]|\\[()\[\]]", "", text).strip()


def _accept_letter(text: str, match: re.Match, strict_case: bool) -> bool:
    """Whether a matched letter reads as an option letter, not a word ("a dog", "I think")."""
    if match.groupdict().get("open"):
        return True
    letter, rest = match["x"], text[match.end():]
    if not rest.strip():
        return True
    if rest[0] == "." and rest[1:2].isalpha():  # "a.m.", "e.g."
        return False
    if rest[0] in ".,;:!?)]}\"'\n":
        return True
    if rest[0].isspace():  # followed by a word: an article or a pronoun unless clearly a capital option letter
        if letter in "aiI":
            return False
        return not strict_case or letter.isupper()
    return False


def _candidates(patterns, text: str, num_options: int, strict_case: bool):
    """Option indices named by any of `patterns` in `text`; _AMBIGUOUS for "B or C"."""
    found = []
    for pattern in patterns:
        for match in pattern.finditer(text):
            if match.groupdict().get("n") is not None:
                index = int(match["n"]) - 1
            elif _accept_letter(text, match, strict_case):
                index = LETTERS.index(match["x"].upper())
                if re.match(r"\s*(?:,|/|\bor\b|\band\b)\s*\(?[A-Z]\)?(?![A-Za-z0-9])", text[match.end():]):
                    return _AMBIGUOUS
            else:
                continue
            if 0 <= index < num_options:
                found.append((match, index))
    return found


def _decide(found):
    if found is _AMBIGUOUS:
        return _AMBIGUOUS
    indices = {index for _, index in found}
    if len(indices) > 1:
        return _AMBIGUOUS
    return indices.pop() if indices else None


def _text_matches(response: str, options: list[str]) -> list[int]:
    """Options whose text appears in the response as whole words; an option found only inside a longer matching
    option ("dog" inside "hot dog") does not count."""
    said = f" {_normalise(response)} "
    names = [_without_article(_normalise(option)) for option in options]
    order = sorted((i for i, name in enumerate(names) if name), key=lambda i: -len(names[i]))
    taken, matched = [], []
    for i in order:
        needle = f" {names[i]} "
        spans = [(m.start(), m.start() + len(needle)) for m in re.finditer(f"(?= {re.escape(names[i])} )", said)]
        free = [s for s in spans if not any(a <= s[0] and s[1] <= b for a, b in taken)]
        if free:
            matched.append(i)
        taken.extend(spans)
    return sorted(matched)


def extract_choice(response: str, options: list[str]) -> int | None:
    """The option a free-form answer picks, as an index into `options`, or None when it names none or several.

    In order, the first rule that finds something decides (several different options found by one rule: None):
    1. an explicit answer: "Answer: B", "The answer is (b)", "correct option is C", "I'd choose D", "\\boxed{A}",
       "Option B is correct", "answer is option 2";
    2. a letter opening the answer: "B", "b", "(B)", "B.", "B)", "B: dog", "**B**" (not "A dog is barking": a
       letter followed by a word is only a letter with clear punctuation, so the article "a" / pronoun "I" never
       count);
    3. a letter elsewhere: "(B)", "**B**", "option B", "option 2";
    4. option text: the whole answer, or one option's text in a sentence (case and punctuation-insensitive, whole
       words, a leading article ignored); two options mentioned is ambiguous;
    5. a bare number "2" (1-based) when no option is itself a number.
    A letter that contradicts the answer's text ("B. cat" when cat is A; "C" when the options are note names
    and "C" is option B) is ambiguous too. Letters beyond the options are ignored.
    """
    if not isinstance(response, str) or not response.strip():
        return None
    n = len(options)
    plain = _strip_markup(response)
    normalised_options = [_without_article(_normalise(o)) for o in options]
    whole = _without_article(_normalise(plain))
    exact = [i for i, name in enumerate(normalised_options) if name and name == whole]

    for patterns, text, strict in ((_TIER1, plain, False), (_TIER2, plain, False), (_TIER3, plain, True)):
        found = _candidates(patterns, text, n, strict)
        if patterns is _TIER3 and found is not _AMBIGUOUS:
            bold = _candidates([_BOLD], response, n, False)
            found = _AMBIGUOUS if bold is _AMBIGUOUS else found + bold
        choice = _decide(found)
        if choice is _AMBIGUOUS:
            return None
        if choice is not None:
            if exact and exact[0] != choice:
                return None
            if patterns is _TIER2:  # "B. cat" where cat is another option
                rest = _without_article(_normalise(plain[found[0][0].end():]))
                if any(name == rest and i != choice for i, name in enumerate(normalised_options)):
                    return None
            return choice
    if len(exact) == 1:
        return exact[0]
    matched = _text_matches(plain, options)
    if len(matched) == 1:
        return matched[0]
    if matched:
        return None
    number = re.fullmatch(r"\W*(\d{1,2})\W*", plain)
    if number and not any(re.fullmatch(r"[0-9 ]+", name) for name in normalised_options if name):
        index = int(number[1]) - 1
        return index if 0 <= index < n else None
    return None


# ------------------------------------------------------------------------------------------------------- prompting


def build_prompt(item: QAItem, text_only: bool = False, style: str = "lettered") -> str:
    """The text of the question's user turn (for audio, it follows the clip).

    Audio: the question (unless it is spoken in the audio), the lettered options (unless they are spoken too) and
    the instruction to answer with the letter. Text-only: the same, preceded by the text form of the audio, so the
    two prompts differ only in how the audio's content is given. `style="question"` keeps only the question (and,
    text-only, the text form of the audio): no options, no instruction.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"Unknown prompt style {style!r}: use one of {', '.join(PROMPT_STYLES)}.")
    lines = []
    if text_only:
        if not item.audio_text:
            raise ValueError(f"Item {item.id} has no text form of its audio: it cannot be asked text-only.")
        lines.append(item.audio_text)
    if item.question_in_audio:
        lines.append(TEXT_QUESTION_INSTRUCTION if text_only else SPOKEN_QUESTION_INSTRUCTION)
    else:
        lines.append(item.question)
    if style == "question":
        return "\n".join(lines)
    if not item.options_in_audio:
        lines.extend(f"{LETTERS[i]}. {option}" for i, option in enumerate(item.options))
    lines.append(ANSWER_INSTRUCTION)
    return "\n".join(lines)


def build_conversation(item: QAItem, text_only: bool = False, audio=None, style: str = "lettered") -> list[dict]:
    """The chat for one item: `[{"role": "user", "content": [audio block, text block]}]`, or text only.

    `audio`: the decoded clip (16 kHz mono float32); decoded from `item.audio` when not given. `style`: see
    `build_prompt`.
    """
    text = {"type": "text", "text": build_prompt(item, text_only, style)}
    if text_only:
        return [{"role": "user", "content": [text]}]
    clip = decode_audio_item(item.audio) if audio is None else audio
    return [{"role": "user", "content": [{"type": "audio", "audio": clip}, text]}]


# -------------------------------------------------------------------------------------------------------- scoring


class ChoiceAccuracy(evaluate.Metric):
    """Accuracy of predicted option indices (-1: no answer extracted, never correct), as an `evaluate.Metric`.

    Defined here so it works offline (the Hub's "accuracy" module cannot be downloaded); `compute` returns
    {"accuracy": correct / total}, like that module.
    """

    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of multiple-choice questions whose predicted option index is the reference's.",
            citation="",
            inputs_description="predictions, references: option indices (int); -1 for an unanswered question.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": correct / len(references)}


_METRIC = None


def _default_metric() -> evaluate.EvaluationModule:
    global _METRIC
    if _METRIC is None:
        _METRIC = ChoiceAccuracy(keep_in_memory=True)
    return _METRIC


def _score(rows: list[dict], metric) -> dict:
    predictions = [-1 if r["predicted_index"] is None else r["predicted_index"] for r in rows]
    references = [r["answer_index"] for r in rows]
    accuracy = metric.compute(predictions=predictions, references=references)["accuracy"]
    return {
        "accuracy": float(accuracy),
        "num_items": len(rows),
        "correct": sum(r["correct"] for r in rows),
        "answered": sum(r["predicted_index"] is not None for r in rows),
    }


def _breakdown(rows: list[dict], key: str, metric) -> dict:
    groups = defaultdict(list)
    for row in rows:
        groups[row[key]].append(row)
    return {name: _score(groups[name], metric) for name in sorted(groups)}


def evaluate_model(
    model,
    processor,
    items: list[QAItem],
    batch_size: int = 8,
    text_only: bool = False,
    max_new_tokens: int = 16,
    generate_fn: Callable[[list[list[dict]], int], list[str]] | None = None,
    metric: evaluate.EvaluationModule | None = None,
    progress: bool = True,
    prompt_style: str = "lettered",
) -> dict:
    """Ask every item (greedy, batched), extract the chosen options and score them.

    `text_only=True` asks the text-only prompt (`build_prompt(item, text_only=True)`): no audio is decoded or
    given to the model. `generate_fn(conversations, max_new_tokens) -> answers` replaces the model's greedy
    generation (default: `greedy_generate(model, processor, ...)`). `metric`: any `evaluate` module whose
    `compute(predictions=, references=)` returns {"accuracy": ...} over option indices (default `ChoiceAccuracy`).
    `prompt_style`: "lettered" (default) or "question" (see `build_prompt`).

    Returns {"mode": "audio" | "text", "prompt_style", "accuracy", "num_items", "correct", "answered" (answers mapped
    to an option), "per_task", "per_category", "per_benchmark" (each {name: {"accuracy", "num_items", "correct", "answered"}}),
    "predictions": one dict per item (id, task, category, benchmark, prompt, response, predicted_index,
    predicted_letter, answer_index, answer_letter, correct)}. Accuracies are fractions in [0, 1].
    """
    if not items:
        raise ValueError("No items to evaluate.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive (got {batch_size}).")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"Unknown prompt style {prompt_style!r}: use one of {', '.join(PROMPT_STYLES)}.")
    if text_only:
        missing = [item.id for item in items if not item.audio_text]
        if missing:
            raise ValueError(f"{len(missing)} item(s) have no text form of their audio (first: {missing[0]}): "
                             "they cannot be asked text-only.")
    if generate_fn is None:
        if model is None or processor is None:
            raise ValueError("Give a model and a processor, or a generate_fn.")
        model.eval()

        def generate_fn(conversations, max_new_tokens):
            return greedy_generate(model, processor, conversations, max_new_tokens)

    metric = _default_metric() if metric is None else metric
    mode = "text" if text_only else "audio"
    rows = []
    benchmarks = "/".join(sorted({item.benchmark for item in items}))
    with tqdm(total=len(items), desc=f"{benchmarks} ({mode})", unit="item", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            conversations = [build_conversation(item, text_only, style=prompt_style) for item in batch]
            answers = generate_fn(conversations, max_new_tokens)
            if len(answers) != len(batch):
                raise RuntimeError(f"The generator returned {len(answers)} answers for {len(batch)} questions.")
            for item, answer in zip(batch, answers):
                index = extract_choice(answer, item.options)
                rows.append({
                    "id": item.id, "task": item.task, "category": item.category, "benchmark": item.benchmark,
                    "prompt": build_prompt(item, text_only, prompt_style), "response": answer,
                    "predicted_index": index, "predicted_letter": None if index is None else LETTERS[index],
                    "answer_index": item.answer_index, "answer_letter": item.answer_letter,
                    "correct": index == item.answer_index,
                })
            bar.update(len(batch))
    return {
        "mode": mode,
        "prompt_style": prompt_style,
        **_score(rows, metric),
        "per_task": _breakdown(rows, "task", metric),
        "per_category": _breakdown(rows, "category", metric),
        "per_benchmark": _breakdown(rows, "benchmark", metric),
        "predictions": rows,
    }


def _gap_table(audio: dict, text: dict) -> dict:
    return {
        name: {
            "num_items": audio[name]["num_items"],
            "text_accuracy": text[name]["accuracy"],
            "audio_accuracy": audio[name]["accuracy"],
            "gap": audio[name]["accuracy"] - text[name]["accuracy"],
        }
        for name in audio
    }


def modality_gap(
    model,
    processor,
    items: list[QAItem],
    batch_size: int = 8,
    max_new_tokens: int = 16,
    generate_fn: Callable[[list[list[dict]], int], list[str]] | None = None,
    audio_results: dict | None = None,
    metric: evaluate.EvaluationModule | None = None,
    progress: bool = True,
    prompt_style: str = "lettered",
) -> dict:
    """Audio and text-only accuracy on the items that carry a text form of their audio, and gap = audio - text.

    Items without one (MMAU) are left out and counted in "skipped"; none at all is an error. `audio_results`: an
    `evaluate_model` result for exactly these `items` (same order), reused instead of asking the audio again.
    Returns {"num_items", "skipped", "text_accuracy", "audio_accuracy", "gap", "per_task", "per_category",
    "per_benchmark" (each {name: {"num_items", "text_accuracy", "audio_accuracy", "gap"}}), "audio", "text"
    (the two `evaluate_model` results)}. Fractions; a negative gap means audio does worse than text.
    """
    with_text = [item for item in items if item.audio_text]
    if not with_text:
        raise ValueError("No item carries a text form of its audio, so there is no text-only baseline "
                         "(MMAU has none; VoiceBench rows do).")
    kwargs = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, generate_fn=generate_fn, metric=metric,
                  progress=progress, prompt_style=prompt_style)
    reuse = audio_results is not None and len(with_text) == len(items) and [
        p["id"] for p in audio_results["predictions"]] == [item.id for item in items] and audio_results.get(
        "prompt_style", "lettered") == prompt_style
    audio = audio_results if reuse else evaluate_model(model, processor, with_text, **kwargs)
    text = evaluate_model(model, processor, with_text, text_only=True, **kwargs)
    return {
        "num_items": len(with_text),
        "skipped": len(items) - len(with_text),
        "text_accuracy": text["accuracy"],
        "audio_accuracy": audio["accuracy"],
        "gap": audio["accuracy"] - text["accuracy"],
        **{key: _gap_table(audio[key], text[key]) for key in ("per_task", "per_category", "per_benchmark")},
        "audio": audio,
        "text": text,
    }


# -------------------------------------------------------------------------------------------------------- reports


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _accuracy_table(title: str, table: dict) -> list[str]:
    lines = [f"| {title} | items | answered | accuracy (%) |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['num_items']} | {r['answered']} | {_pct(r['accuracy'])} |" for name, r in table.items()]
    return lines


def _gap_lines(title: str, table: dict) -> list[str]:
    lines = [f"| {title} | items | text accuracy (%) | audio accuracy (%) | modality gap (audio - text) |",
             "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {name} | {r['num_items']} | {_pct(r['text_accuracy'])} | {_pct(r['audio_accuracy'])} | "
        f"{100 * r['gap']:+.2f} |"
        for name, r in table.items()
    ]
    return lines


def render_markdown(results: dict) -> str:
    """The report as markdown: audio accuracy overall / per task / per category, and the modality gap table."""
    lines = ["# Multiple-choice audio QA evaluation", ""]
    for key in ("model", "data", "format"):
        if key in results:
            lines.append(f"- {key}: `{results[key]}`")
    evaluation = results.get("evaluation")
    if evaluation is not None:
        style = evaluation.get("prompt_style", "lettered")
        lines += ["", f"## Accuracy ({evaluation['mode']} input, {style} prompt)", ""]
        overall = {"overall": {k: evaluation[k] for k in ("num_items", "answered", "accuracy")}}
        lines += _accuracy_table("", overall) + [""]
        lines += _accuracy_table("task", evaluation["per_task"]) + [""]
        lines += _accuracy_table("category", evaluation["per_category"])
    gap = results.get("modality_gap")
    if gap is not None:
        lines += ["", "## Modality gap (audio accuracy - text accuracy, percentage points)", ""]
        overall = {"overall": {k: gap[k] for k in ("num_items", "text_accuracy", "audio_accuracy", "gap")}}
        lines += _gap_lines("", overall) + [""]
        lines += _gap_lines("task", gap["per_task"]) + [""]
        lines += _gap_lines("category", gap["per_category"])
        if gap.get("skipped"):
            lines += ["", f"{gap['skipped']} item(s) without a text form of their audio are not in the gap."]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write `results.json` (everything, predictions included) and `results.md` (tables) to `out_dir`.

    `results`: {"evaluation": an `evaluate_model` result, "modality_gap": a `modality_gap` result (optional), and
    any of "model", "data", "format"}; a bare `evaluate_model` or `modality_gap` result is accepted too.
    Returns {"json": path, "markdown": path}.
    """
    if "predictions" in results:
        results = {"evaluation": results}
    elif "gap" in results and "audio" in results:
        results = {"evaluation": results["audio"], "modality_gap": results}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(results), encoding="utf-8")
    return paths


# ------------------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-audio evaluate",
        description="Multiple-choice audio QA (MMAU, VoiceBench MMSU / OpenBookQA) by greedy generation, scored "
        "with the evaluate library; writes results.json and results.md.",
    )
    parser.add_argument("model", help="checkpoint directory or Hub id (loaded with trust_remote_code=True)")
    parser.add_argument("data", help="local benchmark file: MMAU JSON/JSONL or VoiceBench JSONL")
    parser.add_argument("--format", choices=("mmau", "voicebench", "auto"), default="auto",
                        help="schema of DATA (default: auto, from its first row)")
    parser.add_argument("--out", help="output directory (default: eval/<DATA file stem>)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--prompt-style", choices=PROMPT_STYLES, default="lettered",
                        help="lettered: the question, lettered options and 'answer with the letter' (default); "
                        "question: the question alone, for models trained to answer it with the option's words")
    parser.add_argument("--text-only-gap", action="store_true",
                        help="also ask the text form of the audio, without audio, and report the modality gap")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="model dtype (default: the checkpoint's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out directory")
    return parser


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM, AutoProcessor

    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--batch-size and --limit must be positive.")
    format = detect_format(args.data) if args.format == "auto" else args.format
    items = load_items(args.data, format, limit=args.limit)
    if args.text_only_gap and not any(item.audio_text for item in items):
        raise ValueError(f"--text-only-gap: no item of {args.data} carries a text form of its audio "
                         "(MMAU has none; VoiceBench rows do).")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, dtype=dtype).to(device)
    settings = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=not args.no_progress,
                    prompt_style=args.prompt_style)
    results = {"model": str(args.model), "data": str(args.data), "format": format}
    results["evaluation"] = evaluate_model(model, processor, items, **settings)
    if args.text_only_gap:
        gap_items = [item for item in items if item.audio_text]
        reuse = results["evaluation"] if len(gap_items) == len(items) else None
        results["modality_gap"] = modality_gap(model, processor, gap_items, audio_results=reuse, **settings)
    return results


def main(argv: list[str] | None = None) -> None:
    """`moe-audio evaluate MODEL DATA [--format mmau|voicebench|auto] [--out DIR] [--batch-size N] [--limit N]
    [--prompt-style lettered|question] [--text-only-gap] [--overwrite]`."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out) if args.out else Path("eval") / Path(args.data).stem
    try:
        check_output_dir(out, args.overwrite)  # before the long part: a finished evaluation is never lost
        results = run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:  # BadRowError is a ValueError
        sys.exit(f"error: {error}")
    paths = write_report(results, out)
    print(render_markdown(results))
    print(f"wrote {paths['json']} and {paths['markdown']}")


if __name__ == "__main__":
    main()
