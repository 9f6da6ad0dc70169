"""What every analysis shares: rows grouped by category, batches on the model's device, the next-token loss, and
the measuring state (eval mode, gradients only where needed) from which the model is restored as it was.

The loss analysed is the next-token loss of the assistant's answer only, as in training with the collator's labels,
computed from the logits in the model's precision (at least float32). The balance loss of eq. 6 never enters: the
model is called without labels and the loss is taken from the logits rather than from the model's `loss` (which
adds the router losses, and whose cross-entropy always upcasts to float32, which would cap a float64 check).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ..data.corpus import CATEGORIES
from ..unwrap import audio_adapter


def category_order(categories) -> list[str]:
    """The built-in corpus's categories in its order, then any others sorted: the same order in every result."""
    categories = set(categories)
    known = [category for category in CATEGORIES if category in categories]
    return known + sorted(categories - set(known))


def group_by_category(rows, category_key: str = "category") -> dict[str, list[dict]]:
    """Rows grouped by their category, keeping the rows' order within each group."""
    groups: dict[str, list[dict]] = {}
    for index, row in enumerate(rows):
        category = row.get(category_key) if hasattr(row, "get") else None
        if category is None:
            raise ValueError(
                f"Row {index} has no {category_key!r}: every analysed row needs a category (pass category_key= to "
                "name the column that holds it)."
            )
        groups.setdefault(str(category), []).append(row)
    if not groups:
        raise ValueError("No rows to analyse.")
    return {category: groups[category] for category in category_order(groups)}


def split_rows(rows, category_key: str = "category") -> tuple[list[dict], list[dict]]:
    """Split rows into a gradient half and a held-out evaluation half, alternately within each category.

    Eq. 12 measures the effect of a step on losses the step did not see, so the two halves share no row; alternating
    within each category keeps both halves' category mix that of `rows`.
    """
    gradient_rows, eval_rows = [], []
    for category, members in group_by_category(rows, category_key).items():
        if len(members) < 2:
            raise ValueError(
                f"Category {category!r} has {len(members)} row: it needs at least 2 to give both a gradient row "
                "and a held-out row."
            )
        gradient_rows.extend(members[0::2])
        eval_rows.extend(members[1::2])
    return gradient_rows, eval_rows


def batches(rows: list, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


def collate_on_device(model, collator, rows: list) -> dict:
    """A batch on the model's device; floating inputs (the mel features) in the model's dtype."""
    batch = collator(list(rows))
    device, dtype = model.device, model.dtype
    return {
        key: (value.to(device, dtype) if value.is_floating_point() else value.to(device))
        if torch.is_tensor(value)
        else value
        for key, value in batch.items()
    }


def next_token_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the labelled tokens (logit t predicts label t+1) and their count.

    Summing (not averaging) per batch lets several batches add up to one mean over all of a category's tokens.
    """
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = batch["labels"][:, 1:].to(logits.device)
    loss_sum = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss_sum, int((targets != -100).sum())


def analysed_parameters(model, parameters) -> list[torch.nn.Parameter]:
    """`"adapter"`: the adapter's parameters (the module the paper compares, dense vs MoE); or the given ones."""
    if isinstance(parameters, str):
        if parameters != "adapter":
            raise ValueError(f"parameters must be 'adapter' or an iterable of parameters, got {parameters!r}.")
        chosen = list(audio_adapter(model).parameters())
    else:
        chosen = list(parameters)
    if not chosen:
        raise ValueError("No parameters to analyse.")
    return chosen


@contextmanager
def measuring(model, trainable=()):
    """Eval mode (no dropout, no router jitter), gradients only for `trainable`; both restored.

    Turning `requires_grad` off elsewhere keeps the backward pass to what the analysis needs.
    """
    was_training = model.training
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    trainable_ids = {id(parameter) for parameter in trainable}
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(id(parameter) in trainable_ids)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def json_matrix(matrix) -> list[list[float | None]]:
    """Rows of floats, NaN as null: strict JSON has no NaN."""
    return [[_finite_or_none(float(value)) for value in row] for row in torch.as_tensor(matrix).tolist()]
