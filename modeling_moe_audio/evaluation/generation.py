"""Generation: greedy answers to batches of chats (`greedy_generate`) and to the built-in corpus's rows
(`generate_answers`); scoring them is `accuracy.score_answers`'s."""

import torch

from ..data.conversation import decoded_chat
from ..progress import progress_bar


def greedy_generate(model, processor, conversations: list[list[dict]], max_new_tokens: int = 8) -> list[str]:
    """Greedy answers to a batch of decoded chats, left-padded, on the model's device and in its dtype (audio blocks
    may carry their clip's `"semantic_ids"`, see `MoEAudioProcessor.apply_chat_template`)."""
    inputs = processor.apply_chat_template(
        conversations, tokenize=True, return_dict=True, add_generation_prompt=True,
        processor_kwargs={"padding_side": "left"},
    ).to(model.device, dtype=model.dtype)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def generate_answers(
    model, processor, rows, batch_size: int = 16, max_new_tokens: int = 8, desc: str = "answering"
) -> list[str]:
    """Greedy answers to each row's conversation, without its assistant turn; a bar on stderr counts the rows."""
    model.eval()
    answers = []
    with progress_bar(total=len(rows), desc=desc, unit="question") as bar:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            prompts = [decoded_chat(row["conversation"], row["audio"], with_answer=False,
                                    semantic_ids=row.get("semantic_ids")) for row in batch]
            answers.extend(greedy_generate(model, processor, prompts, max_new_tokens))
            bar.update(len(batch))
    return answers
