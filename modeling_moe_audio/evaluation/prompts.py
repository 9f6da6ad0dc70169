"""Prompts: the user turn that asks a `QAItem`, with its audio or text-only, in one of `PROMPT_STYLES`.

Imports nothing heavy at import time, so that the command's parser (which lists the styles) starts quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .answers import LETTERS


if TYPE_CHECKING:
    from .benchmarks import QAItem


ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SPOKEN_QUESTION_INSTRUCTION = "Answer the question in the audio."
TEXT_QUESTION_INSTRUCTION = "Answer the question."
# "lettered": the benchmarks' own prompt. "question": the question alone, for models fine-tuned to answer a bare
# question with the option's words (the extractor maps those words to the option).
PROMPT_STYLES = ("lettered", "question")


def check_prompt_style(style: str) -> None:
    """A ValueError naming the styles when `style` is not one of `PROMPT_STYLES`."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"Unknown prompt style {style!r}: use one of {', '.join(PROMPT_STYLES)}.")


def build_prompt(item: QAItem, text_only: bool = False, style: str = "lettered") -> str:
    """The text of the question's user turn (for audio, it follows the clip).

    Audio: the question (unless it is spoken in the audio), the lettered options (unless they are spoken too) and
    the instruction to answer with the letter. Text-only: the same, preceded by the text form of the audio, so the
    two prompts differ only in how the audio's content is given. `style="question"` keeps only the question (and,
    text-only, the text form of the audio): no options, no instruction.
    """
    check_prompt_style(style)
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
    from ..data.audio import SAMPLING_RATE, decode_audio_item  # datasets and transformers: not for `moe-audio evaluate --help`

    clip = decode_audio_item(item.audio) if audio is None else audio
    block = {"type": "audio", "audio": clip, "sampling_rate": SAMPLING_RATE}
    if item.semantic_ids is not None:
        block["semantic_ids"] = item.semantic_ids  # the processor passes them to a model with a semantic stream
    return [{"role": "user", "content": [block, text]}]
