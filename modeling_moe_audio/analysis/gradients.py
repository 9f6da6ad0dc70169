"""Section 5.2: gradient conflicts between categories (eq. 11, Figure 4; eq. 12, Figure 5)."""

from __future__ import annotations

import math
import warnings

import torch

from ..data.collator import MoEAudioDataCollator
from ..progress import progress_bar
from .measuring import (
    analysed_parameters,
    batches,
    collate_on_device,
    group_by_category,
    measuring,
    next_token_loss_sum,
)


INFLUENCE_SIGN_CONVENTION = (
    "I[i][j] = mean over evaluation batches of category i of (L_i(theta) - L_i(theta'_j)) / (L_i(theta) - "
    "L_i(theta'_i)), theta'_j = theta - step_size * g_j / |g_j| on the analysed parameters. Rows i: the category "
    "whose loss is measured; columns j: the category whose gradient is stepped along. Positive: a step on j lowers "
    "i's loss; negative: it raises it. I[i][i] = 1 by definition."
)


def category_gradients(
    model, processor, rows, parameters="adapter", category_key: str = "category", batch_size: int = 16
) -> dict[str, torch.Tensor]:
    """g_c = the gradient of category c's mean next-token loss, for each category (the vectors of eqs. 11, 12).

    `parameters="adapter"` takes the adapter's parameters (the paper compares the dense and MoE adapters); an
    iterable of parameters takes those. The gradient is flattened and concatenated in parameter order, in the
    parameters' dtype or float32 if that is narrower. The mean is over all labelled tokens of the category's rows:
    each batch's gradient is weighted by its token count and the sum divided by the category's token count, so
    batching does not change the result (up to rounding).

    Only the task loss counts: the model is in eval mode (no dropout) and the loss is computed from the logits of a
    call without labels, so the router losses never enter. The gradients come from `torch.autograd.grad`, so no
    parameter's `.grad` is touched.
    """
    params = analysed_parameters(model, parameters)
    collator = MoEAudioDataCollator(processor)
    accumulate_dtype = torch.promote_types(params[0].dtype, torch.float32)
    gradients = {}
    rows = list(rows)
    with measuring(model, trainable=params), progress_bar(total=len(rows), desc="gradients", unit="row") as bar:
        for category, members in group_by_category(rows, category_key).items():
            total = torch.zeros(sum(p.numel() for p in params), dtype=accumulate_dtype, device=params[0].device)
            num_tokens = 0
            for batch_rows in batches(members, batch_size):
                bar.update(len(batch_rows))
                loss_sum, batch_tokens = next_token_loss_sum(model, collate_on_device(model, collator, batch_rows))
                if batch_tokens == 0:
                    continue
                # Differentiate the batch's mean (gradients of token-count size, safe in half precision) and
                # weight it by its token count: the weighted sum over batches / all tokens is the category's mean.
                grads = torch.autograd.grad(loss_sum / batch_tokens, params, allow_unused=True)
                total += batch_tokens * _flatten(grads, params, accumulate_dtype)
                num_tokens += batch_tokens
            if num_tokens == 0:
                raise ValueError(f"Category {category!r} has no labelled token: its loss and gradient are undefined.")
            gradients[category] = total / num_tokens
    return gradients


def _flatten(grads, params, dtype) -> torch.Tensor:
    """Concatenate gradients in parameter order; a parameter the loss does not reach has gradient 0."""
    return torch.cat([
        (torch.zeros_like(p, dtype=dtype) if grad is None else grad.to(dtype)).reshape(-1)
        for grad, p in zip(grads, params)
    ])


def gradient_cosine(gradients: dict[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    """Eq. 11: Sim(g_i, g_j) = g_i . g_j / (|g_i| |g_j|) for every pair of categories (float64 matrix).

    Negative values mean a step that lowers one category's loss raises the other's to first order (conflict). A
    zero gradient has no direction: its row and column are NaN, with a warning.
    """
    categories = list(gradients)
    stacked = torch.stack([gradients[category].detach().to("cpu", torch.float64) for category in categories])
    norms = stacked.norm(dim=1)
    if (norms == 0).any():
        zero = [category for category, norm in zip(categories, norms.tolist()) if norm == 0]
        warnings.warn(f"Zero gradient for {zero}: its cosine similarities are undefined (NaN).", RuntimeWarning)
    units = stacked / norms[:, None]  # normalising first keeps the diagonal at 1 to float64 rounding
    return categories, units @ units.T


def _unit_directions(gradient: torch.Tensor, params: list[torch.Tensor], category: str) -> list[torch.Tensor]:
    """g / |g| cut back into the parameters' shapes (the step direction of eq. 12)."""
    norm = gradient.to(torch.float64).norm()
    if norm == 0 or not torch.isfinite(norm):
        raise ValueError(f"The gradient of category {category!r} has norm {float(norm)}: it gives no step direction.")
    unit = (gradient.to(torch.float64) / norm).to(gradient.dtype)
    pieces = unit.split([parameter.numel() for parameter in params])
    return [piece.to(parameter.device).view_as(parameter) for piece, parameter in zip(pieces, params)]


def _mean_loss(model, batch: dict) -> float:
    loss_sum, num_tokens = next_token_loss_sum(model, batch)
    return float(loss_sum) / num_tokens if num_tokens else math.nan


def gradient_influence(
    model,
    processor,
    gradient_rows,
    eval_rows,
    step_size: float = 1e-2,
    parameters="adapter",
    category_key: str = "category",
    batch_size: int = 16,
    gradients: dict[str, torch.Tensor] | None = None,
    min_relative_delta: float | None = None,
) -> tuple[list[str], torch.Tensor]:
    """Eq. 12: I[i][j] = E over evaluation batches of category i of [Δ_j L_i / Δ_i L_i].

    θ'_j = θ - step_size * g_j / |g_j| on the analysed parameters only (`parameters`, default the adapter), g_j
    from `category_gradients` on `gradient_rows` (or pass `gradients`); Δ_j L_i = L_i(θ) - L_i(θ'_j), L_i the mean
    next-token loss of one batch of `eval_rows` of category i (held-out rows: the step never saw them; batches hold
    one category). Rows i of the returned float64 matrix are the measured category, columns j the stepped one.

    Sign convention: positive means a step on j lowers i's loss (constructive transfer), negative that it raises it
    (interference); I[i][i] = 1 by definition. Only the task loss counts (see `category_gradients`); the
    parameters are restored bit for bit afterwards, even on an error.

    A batch whose own-step change |Δ_i L_i| is at most `min_relative_delta * L_i(θ)` (default 16 float epsilons of
    the loss's dtype: below that the difference is rounding noise) gives no ratio: it is left out of the mean with a
    warning, and a row with no batch left is NaN. A batch with Δ_i L_i < 0 (the own step raised the held-out loss:
    step_size too large, or a gradient split that does not represent the held-out rows) is kept, as eq. 12 says,
    but flips that batch's signs, so it is warned about.
    """
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not 0 < step_size < math.inf:
        raise ValueError(f"step_size must be a positive finite number, got {step_size!r}.")
    params = analysed_parameters(model, parameters)
    if gradients is None:
        if gradient_rows is None:
            raise ValueError("Pass gradient_rows (the rows whose category gradients give the steps) or gradients.")
        gradients = category_gradients(model, processor, gradient_rows, params, category_key, batch_size)
    categories = list(gradients)
    num_parameters = sum(parameter.numel() for parameter in params)
    for category, gradient in gradients.items():
        if gradient.numel() != num_parameters:
            raise ValueError(
                f"The gradient of {category!r} has {gradient.numel()} entries but the analysed parameters have "
                f"{num_parameters}: compute it with category_gradients on the same parameters."
            )
    eval_groups = group_by_category(list(eval_rows), category_key)
    if set(eval_groups) != set(categories):
        raise ValueError(
            f"The gradient categories {categories} and the evaluation categories {list(eval_groups)} differ; eq. 12 "
            "needs both a gradient and held-out rows for every category."
        )
    directions = {category: _unit_directions(gradients[category], params, category) for category in categories}
    if min_relative_delta is None:
        min_relative_delta = 16 * torch.finfo(torch.promote_types(model.dtype, torch.float32)).eps

    collator = MoEAudioDataCollator(processor)
    originals = [parameter.detach().clone() for parameter in params]
    matrix = torch.full((len(categories), len(categories)), math.nan, dtype=torch.float64)
    try:
        bar = progress_bar(total=sum(map(len, eval_groups.values())), desc="influence", unit="row")
        with measuring(model), torch.no_grad(), bar:
            for i, category in enumerate(categories):
                ratios, degenerate, negative = [], 0, 0
                for batch_rows in batches(eval_groups[category], batch_size):
                    bar.update(len(batch_rows))
                    batch = collate_on_device(model, collator, batch_rows)
                    base = _mean_loss(model, batch)
                    deltas = []
                    for stepped in categories:
                        for parameter, original, direction in zip(params, originals, directions[stepped]):
                            parameter.copy_(original - step_size * direction)
                        deltas.append(base - _mean_loss(model, batch))
                    for parameter, original in zip(params, originals):
                        parameter.copy_(original)
                    own = deltas[i]
                    if not math.isfinite(own) or abs(own) <= min_relative_delta * abs(base):
                        degenerate += 1
                        continue
                    negative += own < 0
                    ratios.append(torch.tensor(deltas, dtype=torch.float64) / own)
                _warn_influence(category, degenerate, negative, len(ratios) + degenerate, step_size)
                if ratios:
                    matrix[i] = torch.stack(ratios).mean(dim=0)
    finally:
        with torch.no_grad():
            for parameter, original in zip(params, originals):
                parameter.copy_(original)
    return categories, matrix


def _warn_influence(category: str, degenerate: int, negative: int, batches: int, step_size: float) -> None:
    if degenerate:
        warnings.warn(
            f"Gradient influence: in {degenerate} of {batches} evaluation batches of {category!r} the step on its own "
            f"gradient changed its loss by no more than rounding noise (step_size={step_size}); those batches are "
            "left out of the mean" + (", and the row is NaN." if degenerate == batches else "."),
            RuntimeWarning,
        )
    if negative:
        warnings.warn(
            f"Gradient influence: in {negative} of {batches} evaluation batches of {category!r} the step on its own "
            f"gradient raised its held-out loss (Δ_i L_i < 0), which flips the sign of those batches' ratios; try a "
            "smaller step_size or more gradient rows.",
            RuntimeWarning,
        )
