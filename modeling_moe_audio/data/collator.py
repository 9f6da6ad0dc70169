"""The batch collator of training: decoded chats -> padded model inputs with labels on the assistant's tokens."""

from dataclasses import dataclass

from ..processing_moe_audio import MoEAudioProcessor
from .conversation import decoded_chat


@dataclass
class MoEAudioDataCollator:
    """Decodes each row's audio, applies the chat template and labels only the assistant's tokens.

    Rows need a `conversation` (audio blocks in order) and an `audio` list with one item per audio block: paths
    or `datasets.Audio` dicts (`decode=False` gives `{"path", "bytes"}`), and may carry `semantic_ids` (one list per
    clip: the processor cuts them into the model's `semantic_audio_ids`). Batches are padded on the right;
    labels are -100 on the prompt, the audio placeholders and the padding.
    """

    processor: MoEAudioProcessor
    padding_side: str = "right"

    def __call__(self, rows: list[dict]) -> dict:
        chats = [decoded_chat(row["conversation"], row["audio"], semantic_ids=row.get("semantic_ids")) for row in rows]
        return dict(
            self.processor.apply_chat_template(
                chats, tokenize=True, return_labels=True, processor_kwargs={"padding_side": self.padding_side}
            )
        )
