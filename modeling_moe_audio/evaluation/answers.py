"""Answers: reading the option a free-form answer picks (`extract_choice`), splitting options written into a
question (`parse_options`), and the two normalisations answers are compared on.

- `normalize_text`: every word, lowercased, without punctuation ("The Dog!" -> "the dog"): what option texts and
  multiple-choice references are matched on;
- `first_word`: only the first of those words ("Speech, I think." -> "speech"): what a one-word answer of the
  built-in corpus is scored on.
"""

from __future__ import annotations

import re
import string


LETTERS = string.ascii_uppercase


def normalize_text(text: str) -> str:
    """Lowercase words and digits only, single-spaced: what option texts are compared on."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def first_word(text: str) -> str:
    """The first word of `normalize_text(text)` ("" when there is none): what a one-word answer is scored on."""
    words = normalize_text(text).split()
    return words[0] if words else ""


def _without_article(normalised: str) -> str:
    return re.sub(r"^(?:a|an|the) ", "", normalised)


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
    said = f" {normalize_text(response)} "
    names = [_without_article(normalize_text(option)) for option in options]
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
    choice = _extract_choice(response, options)
    return None if choice is _AMBIGUOUS else choice


def extract_choice_or_ambiguity(response: str, options: list[str]) -> tuple[int | None, bool]:
    """`extract_choice`'s answer and whether a None means "several options named" (True) rather than "none"."""
    choice = _extract_choice(response, options)
    return (None, True) if choice is _AMBIGUOUS else (choice, False)


def _extract_choice(response: str, options: list[str]):
    if not isinstance(response, str) or not response.strip():
        return None
    n = len(options)
    plain = _strip_markup(response)
    normalised_options = [_without_article(normalize_text(o)) for o in options]
    whole = _without_article(normalize_text(plain))
    exact = [i for i, name in enumerate(normalised_options) if name and name == whole]

    for patterns, text, strict in ((_TIER1, plain, False), (_TIER2, plain, False), (_TIER3, plain, True)):
        found = _candidates(patterns, text, n, strict)
        if patterns is _TIER3 and found is not _AMBIGUOUS:
            bold = _candidates([_BOLD], response, n, False)
            found = _AMBIGUOUS if bold is _AMBIGUOUS else found + bold
        choice = _decide(found)
        if choice is _AMBIGUOUS:
            return _AMBIGUOUS
        if choice is not None:
            if exact and exact[0] != choice:
                return _AMBIGUOUS
            if patterns is _TIER2:  # "B. cat" where cat is another option
                rest = _without_article(normalize_text(plain[found[0][0].end():]))
                if any(name == rest and i != choice for i, name in enumerate(normalised_options)):
                    return _AMBIGUOUS
            return choice
    if len(exact) == 1:
        return exact[0]
    matched = _text_matches(plain, options)
    if len(matched) == 1:
        return matched[0]
    if matched:
        return _AMBIGUOUS
    number = re.fullmatch(r"\W*(\d{1,2})\W*", plain)
    if number and not any(re.fullmatch(r"[0-9 ]+", name) for name in normalised_options if name):
        index = int(number[1]) - 1
        return index if 0 <= index < n else None
    return None

