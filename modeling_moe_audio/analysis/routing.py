"""Section 5.1: which experts each category's audio tokens are routed to (Figure 3), and load statistics of
routing counts (shared with the training callback)."""

from __future__ import annotations

import math

import torch

from ..data.collator import MoEAudioDataCollator
from ..progress import progress_bar
from ..unwrap import audio_adapter
from .measuring import batches, collate_on_device, group_by_category, measuring


NO_EXPERTS_MESSAGE = (
    "This model's adapter is dense (adapter_type={adapter_type!r}): a dense adapter has no experts to map, so "
    "there is no expert activation heatmap. The gradient analyses (category_gradients, gradient_cosine, "
    "gradient_influence) still work."
)


def load_statistics(counts) -> dict:
    """How evenly routed (token, expert) pairs spread over the experts, from one count per expert.

    `shares`: each expert's fraction of the pairs; `max_mean_load`: the most loaded expert's count over the mean
    count (1 = perfectly even); `load_entropy`: the entropy of the shares over log(num_experts) (1 = perfectly even).
    """
    counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
    shares = counts / counts.sum()
    entropy = -(shares * shares.clamp_min(1e-12).log()).sum() / math.log(len(shares)) if len(shares) > 1 else 1.0
    return {
        "shares": shares.tolist(),
        "max_mean_load": float(counts.max() / counts.mean()),
        "load_entropy": float(entropy),
    }


def require_experts(model) -> None:
    adapter = audio_adapter(model)
    if not hasattr(adapter, "router") or getattr(model.config, "adapter_type", "moe") != "moe":
        raise ValueError(NO_EXPERTS_MESSAGE.format(adapter_type=getattr(model.config, "adapter_type", None)))


def expert_activation(model, processor, rows, category_key: str = "category", batch_size: int = 16) -> dict:
    """Figure 3: how often each routed expert is chosen by the audio tokens of each category.

    The rate of expert e for category c is (number of (token, expert) routing decisions that chose e, over the
    audio tokens of rows of category c) / (number of audio tokens of category c): a token-normalised activation
    rate, so categories with longer or more clips weigh the same, and each category's rates sum to top_k. The
    shared expert, which every token uses, is not routed and not counted.

    Returns (JSON-serialisable) `categories`, `num_experts`, `top_k`, `counts[c]` (a list, one count per expert),
    `tokens[c]` and `rates[c]` (None where a category has no audio token). Raises a `ValueError` for a dense
    adapter, which has no experts to map.
    """
    require_experts(model)
    rows = list(rows)
    categories = list(group_by_category(rows, category_key))
    num_experts, audio_token_id = model.config.num_experts, model.config.audio_token_id
    counts = {category: torch.zeros(num_experts, dtype=torch.long) for category in categories}
    tokens = dict.fromkeys(categories, 0)
    collator = MoEAudioDataCollator(processor)
    with measuring(model), torch.no_grad(), progress_bar(total=len(rows), desc="expert routing", unit="row") as bar:
        for batch_rows in batches(rows, batch_size):
            bar.update(len(batch_rows))
            batch = collate_on_device(model, collator, batch_rows)
            batch.pop("labels", None)
            selected = model(**batch, output_router_logits=True, use_cache=False, logits_to_keep=1).selected_experts
            # selected_experts has one row per audio token in placeholder order: batch rows, then positions.
            per_row = (batch["input_ids"] == audio_token_id).sum(dim=1).tolist()
            if selected is None or selected.shape[0] != sum(per_row):
                raise RuntimeError("The model returned no routing decision for some audio tokens.")
            for row, row_selected in zip(batch_rows, torch.split(selected.cpu(), per_row)):
                category = str(row[category_key])
                counts[category] += torch.bincount(row_selected.reshape(-1), minlength=num_experts)
                tokens[category] += row_selected.shape[0]
    return {
        "categories": categories,
        "num_experts": num_experts,
        "top_k": model.config.num_experts_per_tok,
        "counts": {category: counts[category].tolist() for category in categories},
        "tokens": tokens,
        "rates": {
            category: [count / tokens[category] for count in counts[category].tolist()] if tokens[category] else None
            for category in categories
        },
    }
