"""Question answering by generation: greedy answers for dataset rows, and their scoring."""

import re

import torch

from .data import decode_audio_item


def generate_answers(model, processor, rows, batch_size: int = 16, max_new_tokens: int = 8) -> list[str]:
    """Greedy answers to each row's conversation, without its assistant turn (left-padded batches)."""
    model.eval()
    answers = []
    for start in range(0, len(rows), batch_size):
        conversations = []
        for row in rows[start : start + batch_size]:
            clips = iter([decode_audio_item(item) for item in row["audio"]])
            prompt = [m for m in row["conversation"] if m["role"] != "assistant"]
            conversations.append([
                {
                    "role": m["role"],
                    "content": [
                        {"type": "audio", "audio": next(clips)} if b["type"] == "audio" else
                        {"type": "text", "text": b["text"]}
                        for b in m["content"]
                    ],
                }
                for m in prompt
            ])
        inputs = processor.apply_chat_template(
            conversations, tokenize=True, return_dict=True, add_generation_prompt=True,
            processor_kwargs={"padding_side": "left"},
        )
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.extend(processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def normalize_answer(text: str) -> str:
    """The first word, lowercased, without punctuation: what a one-word answer is scored on."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def reference_answer(row: dict) -> str:
    for message in row["conversation"]:
        if message["role"] == "assistant":
            return " ".join(b["text"] for b in message["content"] if b["type"] == "text")
    raise ValueError("The row has no assistant message to score against.")
