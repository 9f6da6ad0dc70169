"""Conversations of dataset rows, in one normal form, and their decoded chats for the processor.

Normal form (what `load_manifest` stores): a list of messages `{"role", "content"}` whose content is a list of
blocks `{"type": "text", "text": ..., "path": None}` or `{"type": "audio", "text": None, "path": ...}`, the audio
in the order it is heard. A row's `audio` column holds one item per audio block, in the same order (a path, or a
`datasets.Audio` dict; the block's `path` then names the clip).
"""

from collections.abc import Callable

from ..processing_moe_audio import SAMPLING_RATE
from .audio import BadRowError, decode_audio_item


def row_conversation(row: dict) -> list[dict]:
    """A manifest row's conversation: its own, or one built from `audio` (one item or a list: paths or
    `datasets.Audio` dicts, each an audio block's `path` until `normal_form` resolves it) + `prompt` + `response`."""
    if "conversation" in row:
        return row["conversation"]
    audio = list(row["audio"]) if isinstance(row["audio"], list) else [row["audio"]]
    return [
        {"role": "user", "content": [{"type": "audio", "path": path} for path in audio]
         + [{"type": "text", "text": row["prompt"]}]},
        {"role": "assistant", "content": [{"type": "text", "text": row["response"]}]},
    ]


def normal_form(conversation: list[dict], resolve_audio: Callable[[object], str]) -> list[dict]:
    """The conversation in normal form, each audio block's `path` replaced by `resolve_audio(path)`, called in the
    order the audio is heard."""
    messages = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        blocks = []
        for block in content:
            path = resolve_audio(block.get("path")) if block.get("type") == "audio" else None
            blocks.append({"type": block["type"], "text": block.get("text"), "path": path})
        messages.append({"role": message["role"], "content": blocks})
    return messages


def audio_blocks(conversation: list[dict]) -> list[dict]:
    """The audio blocks of a conversation in normal form, in order."""
    return [block for message in conversation for block in message["content"] if block["type"] == "audio"]


def decoded_chat(conversation: list[dict], audio_items: list, with_answer: bool = True,
                 semantic_ids: list[list[int]] | None = None) -> list[dict]:
    """The chat the processor takes: each audio block holding its decoded clip (and, given `semantic_ids`, one list
    per clip, its clip's ids as `"semantic_ids"`, which the processor passes to the model); `with_answer=False` leaves
    out the assistant's turns (the prompt a model answers)."""
    num_blocks = len(audio_blocks(conversation))
    if num_blocks != len(audio_items):
        raise ValueError(
            f"A row's conversation has {num_blocks} audio blocks but its 'audio' column holds {len(audio_items)} "
            "items; give one audio item per audio block, in order."
        )
    if semantic_ids is not None and len(semantic_ids) != num_blocks:
        raise ValueError(f"A row's conversation has {num_blocks} audio blocks but its semantic_ids hold "
                         f"{len(semantic_ids)} lists; give one list of ids per clip, in order.")
    clips = iter([decode_audio_item(item, index) for index, item in enumerate(audio_items)])
    clip_ids = iter(semantic_ids or [])

    def audio_block() -> dict:
        block = {"type": "audio", "audio": next(clips), "sampling_rate": SAMPLING_RATE}
        if semantic_ids is not None:
            block["semantic_ids"] = next(clip_ids)
        return block

    return [
        {
            "role": message["role"],
            "content": [
                audio_block() if block["type"] == "audio" else {"type": "text", "text": block["text"]}
                for block in message["content"]
            ],
        }
        for message in conversation
        if with_answer or message["role"] != "assistant"
    ]


def reference_answer(row: dict) -> str:
    """The text of a row's first assistant turn: what a generated answer is scored against."""
    for message in row["conversation"]:
        if message["role"] == "assistant":
            return " ".join(block["text"] for block in message["content"] if block["type"] == "text")
    raise BadRowError("The row has no assistant message to score against.")
