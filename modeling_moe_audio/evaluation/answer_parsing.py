"""Answer parsing modes: how a free-form answer becomes a scored option, by our rule or by a published evaluator's.

Published MMAU / MMSU figures are not scored with our strict extractor (`answers.extract_choice`, which leaves an
answer unanswered rather than guess). To compare with them, the same answers can be scored by the rules of the
evaluators that produced them, re-implemented here from their code (read, not copied):

- ``strict`` (default): `answers.extract_choice`. An answer naming no option or several is unanswered (wrong);
  nothing is guessed. Stricter than every published figure: comparable with none of them.
- ``mmau``: the MMAU reference evaluator, ``evaluation.py`` of github.com/Sakshi113/MMAU (file last changed in
  commit 74682927cf7f434cc9ed585b1f8a5e6150381e91, read at 110127f54c0dfba3faa5ec9feee4a7e4148679c5): function
  ``string_match``. No letter is read and nothing is guessed: the answer and every choice are lowercased and cut
  into word tokens (``\\b\\w+\\b``); an answer is correct when it holds every token of the correct choice and none of
  the tokens that other choices have and the correct one lacks (choices with exactly the correct one's tokens are
  not "other"). A bare letter "B" is therefore wrong unless "b" is a word of the choice. What MMAU's own
  leaderboard (test-mini, and the test split's submissions) is scored with.
- ``lmms-eval``: lmms-eval's rules, per benchmark (github.com/EvolvingLMMs-Lab/lmms-eval, read at commit
  75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3):

  - MMAU items: ``lmms_eval/tasks/mmau/utils.py`` (``parse_multi_choice_response``, ``mmau_process_results``;
    last changed in c7eaef373f4b1bd8a6b5f3e85c3391962c30068c). The letters are always A-D, whatever the number
    of choices. The answer loses leading/trailing ``, . ! ? ; : '`` (one character kind after the other, in that
    order) and is padded with a space on each side; then the first of these finds the candidates: ``(X)``
    anywhere; `` X `` between spaces; ``X.`` anywhere (X in A-D, upper case only). No candidate: a random
    letter of A-D (a guess). Several: the one whose `` X `` occurs last (when none occurs between spaces, the
    first in A-D order). The letter's choice text is compared with the answer text, both stripped and
    lowercased. A letter beyond the choices (a 2-choice item answered "D", or such a guess) raises IndexError
    in lmms-eval; here it is scored wrong and counted in "beyond the options".
  - MMSU and other VoiceBench-format items: ``lmms_eval/tasks/mmsu/utils.py`` (``parse_multi_choice_response``,
    adapted there from MMMU; added in fb86776627586ebb45b90bd19a793bc6e52dca19). Letters: one per choice. After the
    same stripping and padding: ``(X)`` anywhere; else ``X`` followed by a space (no space needed before it, so
    "A dog" names A); else ``X.``; else, only when the padded answer has more than 5 words, every choice whose
    text (lowercased) occurs in the answer (lowercased). No candidate: a random letter among the choices'.
    Several: the one occurring last (``(X)`` when found by brackets, `` X `` for plain letters, the choice text
    for text matches; first in A-Z order when none occurs). Correct when the letter is the reference letter.

  lmms-eval's ``voicebench_mmsu`` / ``voicebench_openbookqa`` tasks score VoiceBench's MMSU and OpenBookQA with
  VoiceBench's own list of about 170 answer templates (``voicebench_process_results_mcq``); that list is not
  re-implemented, so no mode here reproduces those tasks' figures (nor the VoiceBench leaderboard's).

Random guesses come from one ``random.Random(seed)`` per evaluation, drawn in item order, so the same answers and
seed give the same guesses. lmms-eval draws from Python's global generator, which its own ``--seed`` seeds and other
code also draws from, so a guess here and there differ draw by draw: figures with guesses are comparable, not equal.

Each mode returns a `ParsedAnswer`, which records whether the option was guessed or one of several candidates.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from .answers import LETTERS, extract_choice_or_ambiguity


ANSWER_PARSING_MODES = ("strict", "mmau", "lmms-eval")

# How a parsed answer came about (what the report counts per mode).
EXTRACTED = "extracted"  # one option found
AMBIGUOUS = "ambiguous"  # several candidates: unanswered (strict), the last one taken (lmms-eval), or choices with
# the same words (mmau, which counts any of them as the correct one)
GUESSED = "guessed"  # no candidate: a random option (lmms-eval)
UNANSWERED = "unanswered"  # no option and no guess
OUTCOMES = (EXTRACTED, AMBIGUOUS, GUESSED, UNANSWERED)


@dataclass(frozen=True)
class ParsedAnswer:
    """The option an answer picks under a mode, and how it was found.

    `index`: the option chosen, or None (no option; for lmms-eval, a letter beyond the options, kept in `letter`).
    `outcome`: one of `OUTCOMES`. `accepted`: the options the mode's rule counts as correct answers when `index`
    is one of them or (mmau, several options with the same words) when it is None: lmms-eval's MMAU rule compares
    choice texts, so choices written alike are one answer to it. `beyond_options`: lmms-eval picked a letter that
    is not among the item's choices (lmms-eval itself raises IndexError there).
    """

    index: int | None
    outcome: str
    letter: str | None = None
    accepted: tuple[int, ...] = field(default=())
    beyond_options: bool = False

    def is_correct(self, answer_index: int) -> bool:
        if self.accepted:
            return answer_index in self.accepted
        return self.index is not None and self.index == answer_index


def check_answer_parsing(mode: str) -> None:
    """A ValueError naming the modes when `mode` is not one of `ANSWER_PARSING_MODES`."""
    if mode not in ANSWER_PARSING_MODES:
        raise ValueError(f"Unknown answer parsing mode {mode!r}: use one of {', '.join(ANSWER_PARSING_MODES)} "
                         "(strict: ours, mmau: MMAU's evaluation.py, lmms-eval: lmms-eval's audio tasks).")


# ------------------------------------------------------------------------------------------------------- strict


def parse_strict(response: str, options: list[str]) -> ParsedAnswer:
    index, ambiguous = extract_choice_or_ambiguity(response, options)
    if index is not None:
        return ParsedAnswer(index, EXTRACTED, LETTERS[index])
    return ParsedAnswer(None, AMBIGUOUS if ambiguous else UNANSWERED)


# ------------------------------------------------------------------------------------------------- MMAU reference


def _word_tokens(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def mmau_string_match(answer: str, prediction: str, choices: list[str]) -> bool:
    """MMAU's `string_match`: every word of `answer` in `prediction`, and no word that another choice has and
    `answer` lacks (choices with exactly `answer`'s words are not "another"). An answer without words: False."""
    said, wanted = _word_tokens(prediction), _word_tokens(answer)
    if not said:
        return False
    others = set()
    for choice in choices:
        words = _word_tokens(choice)
        if words != wanted:
            others |= words - wanted
    return wanted <= said and said.isdisjoint(others)


def parse_mmau(response: str, options: list[str]) -> ParsedAnswer:
    """The options for which MMAU's `string_match` holds: one is the answer; several (only choices with the same
    words can match together) are all accepted, as MMAU would count the item right whichever of them is correct."""
    matching = tuple(i for i, option in enumerate(options) if mmau_string_match(option, response or "", options))
    if len(matching) == 1:
        return ParsedAnswer(matching[0], EXTRACTED, LETTERS[matching[0]])
    if matching:
        return ParsedAnswer(None, AMBIGUOUS, accepted=matching)
    return ParsedAnswer(None, UNANSWERED)


# ------------------------------------------------------------------------------------------------------ lmms-eval

_LMMS_STRIPPED = (",", ".", "!", "?", ";", ":", "'")


def _lmms_pad(response: str) -> str:
    for character in _LMMS_STRIPPED:  # one kind after the other, as lmms-eval does: "B.," loses "," then "."
        response = response.strip(character)
    return f" {response} "


def _last(candidates: list[str], positions: list[int]) -> str:
    best = max(positions)
    return candidates[positions.index(best)]  # numpy.argmax: the first of the largest


def _lmms_result(letter: str, outcome: str, options: list[str], accepted_by_text: bool) -> ParsedAnswer:
    index = LETTERS.index(letter)
    if index >= len(options):
        return ParsedAnswer(None, outcome, letter, beyond_options=True)
    accepted = ()
    if accepted_by_text:  # MMAU's rule compares choice texts, stripped and lowercased
        said = options[index].strip().lower()
        accepted = tuple(i for i, option in enumerate(options) if option.strip().lower() == said)
    return ParsedAnswer(index, outcome, letter, accepted)


def parse_lmms_eval_mmau(response: str, options: list[str], rng: random.Random) -> ParsedAnswer:
    """lmms-eval's MMAU rule (module docstring); `rng` draws the guess when no letter A-D is found."""
    letters = LETTERS[:4]
    padded = _lmms_pad(response or "")
    candidates = [x for x in letters if f"({x})" in padded]
    if not candidates:
        candidates = [x for x in letters if f" {x} " in padded]
    if not candidates:
        candidates = [x for x in letters if f"{x}." in padded]
    if not candidates:
        return _lmms_result(rng.choice(letters), GUESSED, options, True)
    if len(candidates) > 1:
        return _lmms_result(_last(candidates, [padded.rfind(f" {x} ") for x in candidates]), AMBIGUOUS, options, True)
    return _lmms_result(candidates[0], EXTRACTED, options, True)


def parse_lmms_eval_mmsu(response: str, options: list[str], rng: random.Random) -> ParsedAnswer:
    """lmms-eval's MMSU rule (MMMU's parser; module docstring); `rng` draws the guess when nothing is found."""
    letters = list(LETTERS[: len(options)])
    padded = _lmms_pad(response or "")
    by_text, bracketed = False, False
    candidates = [x for x in letters if f"({x})" in padded]
    bracketed = bool(candidates)
    if not candidates:
        candidates = [x for x in letters if f"{x} " in padded]
    if not candidates:
        candidates = [x for x in letters if f"{x}." in padded]
    if not candidates and len(padded.split()) > 5:
        candidates = [x for x, option in zip(letters, options) if option.lower() in padded.lower()]
        by_text = bool(candidates)
    if not candidates:
        return _lmms_result(rng.choice(letters), GUESSED, options, False)
    if len(candidates) > 1:
        if by_text:
            positions = [padded.lower().rfind(options[LETTERS.index(x)].lower()) for x in candidates]
        elif bracketed:
            positions = [padded.rfind(f"({x})") for x in candidates]
        else:
            positions = [padded.rfind(f" {x} ") for x in candidates]
        return _lmms_result(_last(candidates, positions), AMBIGUOUS, options, False)
    return _lmms_result(candidates[0], EXTRACTED, options, False)


# --------------------------------------------------------------------------------------------------- dispatching


class AnswerParser:
    """Parses the answers of one evaluation under `mode`, with one seeded generator for every guess, drawn in the
    order answers are parsed. `parse(response, options, benchmark)`: `benchmark` picks lmms-eval's rule (mmau:
    its MMAU task; anything else: its MMSU task)."""

    def __init__(self, mode: str = "strict", seed: int = 0):
        check_answer_parsing(mode)
        self.mode, self.seed = mode, seed
        self.rng = random.Random(seed)

    def parse(self, response: str, options: list[str], benchmark: str = "mmau") -> ParsedAnswer:
        if self.mode == "strict":
            return parse_strict(response, options)
        if self.mode == "mmau":
            return parse_mmau(response, options)
        if benchmark == "mmau":
            return parse_lmms_eval_mmau(response, options, self.rng)
        return parse_lmms_eval_mmsu(response, options, self.rng)


def count_outcomes(parsed: list[ParsedAnswer]) -> dict[str, int]:
    """{outcome: number of answers} for every outcome, and "beyond_options" (lmms-eval letters past the choices)."""
    counts = {outcome: sum(p.outcome == outcome for p in parsed) for outcome in OUTCOMES}
    counts["beyond_options"] = sum(p.beyond_options for p in parsed)
    return counts
