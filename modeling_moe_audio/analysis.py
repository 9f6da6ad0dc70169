"""The analyses of the paper's section 5: expert activation by audio category (5.1, Figure 3) and gradient
conflicts between categories (5.2: eq. 11, Figure 4; eq. 12, Figure 5).

Everything works on dataset rows as `load_manifest` returns them (dicts with `conversation`, `audio` and a
category column such as the built-in corpus's `category`), batches them with `MoEAudioDataCollator`, and leaves
the model as it found it: training mode, `requires_grad` flags, `.grad` fields, config and parameter values.

The loss analysed is the next-token loss of the assistant's answer only, as in training with the collator's
labels, computed from the logits in the model's precision (at least float32). The balance loss of eq. 6 never
enters: the model is called without labels and the loss is taken from the logits rather than from the model's
`loss` (which would add the router losses, and which transformers always upcasts to float32, capping a float64
check).
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .corpus import CATEGORIES
from .data import MoEAudioDataCollator
from .training import audio_adapter


NO_EXPERTS_MESSAGE = (
    "This model's adapter is dense (adapter_type={adapter_type!r}): a dense adapter has no experts to map, so "
    "there is no expert activation heatmap. The gradient analyses (category_gradients, gradient_cosine, "
    "gradient_influence) still work."
)

INFLUENCE_SIGN_CONVENTION = (
    "I[i][j] = mean over evaluation batches of category i of (L_i(theta) - L_i(theta'_j)) / (L_i(theta) - "
    "L_i(theta'_i)), theta'_j = theta - step_size * g_j / |g_j| on the analysed parameters. Rows i: the category "
    "whose loss is measured; columns j: the category whose gradient is stepped along. Positive: a step on j lowers "
    "i's loss; negative: it raises it. I[i][i] = 1 by definition."
)

# ---------------------------------------------------------------------------------------------------------------
# Rows, batches and the loss
# ---------------------------------------------------------------------------------------------------------------


def _category_order(categories) -> list[str]:
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
    return {category: groups[category] for category in _category_order(groups)}


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


def _batches(rows: list, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


def _collate(model, collator, rows: list) -> dict:
    """A batch on the model's device; floating inputs (the mel features) in the model's dtype."""
    batch = collator(list(rows))
    device, dtype = model.device, model.dtype
    return {
        key: (value.to(device, dtype) if value.is_floating_point() else value.to(device))
        if torch.is_tensor(value)
        else value
        for key, value in batch.items()
    }


def _next_token_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
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


def _analysed_parameters(model, parameters) -> list[torch.nn.Parameter]:
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
def _measuring(model, trainable=()):
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


def _json_matrix(matrix) -> list[list[float | None]]:
    """Rows of floats, NaN as null: strict JSON has no NaN."""
    return [[_finite_or_none(float(value)) for value in row] for row in torch.as_tensor(matrix).tolist()]


# ---------------------------------------------------------------------------------------------------------------
# Section 5.1: expert activation (Figure 3)
# ---------------------------------------------------------------------------------------------------------------


def _require_experts(model) -> None:
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
    _require_experts(model)
    rows = list(rows)
    categories = list(group_by_category(rows, category_key))
    num_experts, audio_token_id = model.config.num_experts, model.config.audio_token_id
    counts = {category: torch.zeros(num_experts, dtype=torch.long) for category in categories}
    tokens = dict.fromkeys(categories, 0)
    collator = MoEAudioDataCollator(processor)
    with _measuring(model), torch.no_grad():
        for batch_rows in _batches(rows, batch_size):
            batch = _collate(model, collator, batch_rows)
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


# ---------------------------------------------------------------------------------------------------------------
# Section 5.2: gradient conflicts (eqs. 11 and 12, Figures 4 and 5)
# ---------------------------------------------------------------------------------------------------------------


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
    params = _analysed_parameters(model, parameters)
    collator = MoEAudioDataCollator(processor)
    accumulate_dtype = torch.promote_types(params[0].dtype, torch.float32)
    gradients = {}
    with _measuring(model, trainable=params):
        for category, members in group_by_category(list(rows), category_key).items():
            total = torch.zeros(sum(p.numel() for p in params), dtype=accumulate_dtype, device=params[0].device)
            num_tokens = 0
            for batch_rows in _batches(members, batch_size):
                loss_sum, batch_tokens = _next_token_loss_sum(model, _collate(model, collator, batch_rows))
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
    loss_sum, num_tokens = _next_token_loss_sum(model, batch)
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
    params = _analysed_parameters(model, parameters)
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
        with _measuring(model), torch.no_grad():
            for i, category in enumerate(categories):
                ratios, degenerate, negative = [], 0, 0
                for batch_rows in _batches(eval_groups[category], batch_size):
                    batch = _collate(model, collator, batch_rows)
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


# ---------------------------------------------------------------------------------------------------------------
# Plots and the whole analysis
# ---------------------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    """A figure drawn by the Agg canvas directly: no pyplot, no global backend switch, no display needed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("The analysis plots need matplotlib: pip install matplotlib.") from error
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _annotate(axes, image, values, fmt: str) -> None:
    """Write each cell's value on it, in white on dark cells and black on light ones."""
    for row, row_values in enumerate(values):
        for column, value in enumerate(row_values):
            value = float(value)
            if not math.isfinite(value):
                axes.text(column, row, "nan", ha="center", va="center", fontsize=8)
                continue
            red, green, blue, _ = image.cmap(image.norm(value))
            color = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
            axes.text(column, row, format(value, fmt), ha="center", va="center", fontsize=8, color=color)


def plot_heatmap(rates, path, title: str = "Expert activation rate per audio token") -> Path:
    """Figure 3: categories (rows) by routed experts (columns), each cell the token-normalised activation rate.

    `rates` is `expert_activation`'s result or its `rates` dict ({category: [rate per expert]}).
    """
    rates = rates["rates"] if "rates" in rates else rates
    categories = [category for category, values in rates.items() if values is not None]
    if not categories:
        raise ValueError("No category has an audio token: there is no activation rate to plot.")
    values = [rates[category] for category in categories]
    num_experts = len(values[0])
    figure = _new_figure(1.2 + 0.6 * num_experts, 1.4 + 0.5 * len(categories))
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="viridis", vmin=0.0, aspect="auto")
    axes.set_xticks(range(num_experts), [f"E{e}" for e in range(num_experts)])
    axes.set_yticks(range(len(categories)), categories)
    axes.set_xlabel("routed expert")
    axes.set_title(title, fontsize=10)
    _annotate(axes, image, values, ".2f")
    figure.colorbar(image, ax=axes, label="activations / token")
    path = Path(path)
    figure.savefig(path, format="png", dpi=120)
    return path


def plot_matrix(
    categories, matrix, path, title: str, xlabel: str = "category j", ylabel: str = "category i"
) -> Path:
    """Figures 4 and 5: a category-by-category matrix on a diverging scale centred at 0 (NaN cells left blank)."""
    values = torch.as_tensor(matrix, dtype=torch.float64)
    finite = values[torch.isfinite(values)]
    limit = float(finite.abs().max()) if finite.numel() and float(finite.abs().max()) > 0 else 1.0
    figure = _new_figure(1.8 + 0.9 * len(categories), 1.2 + 0.8 * len(categories))
    axes = figure.add_subplot()
    image = axes.imshow(values.numpy(), cmap="RdBu", vmin=-limit, vmax=limit)
    axes.set_xticks(range(len(categories)), categories)
    axes.set_yticks(range(len(categories)), categories)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    _annotate(axes, image, values.tolist(), ".3f")
    figure.colorbar(image, ax=axes)
    path = Path(path)
    figure.savefig(path, format="png", dpi=120)
    return path


def run_analysis(
    model,
    processor,
    rows,
    out_dir,
    eval_rows=None,
    step_size: float = 1e-2,
    parameters="adapter",
    category_key: str = "category",
    batch_size: int = 16,
) -> dict:
    """All of section 5 that applies to the model; writes `analysis.json` and the PNGs into `out_dir`.

    The expert heatmap (Figure 3, MoE only) uses all `rows`. With `eval_rows`, the gradients come from all `rows`
    and eq. 12's losses from `eval_rows`; without, `split_rows` halves `rows` within each category (gradients from
    one half, losses from the other). Eq. 11 uses the same gradients g_j as eq. 12's steps, so the two figures
    describe the same vectors. For a dense adapter the heatmap is replaced by a message (`expert_activation:
    {"skipped": ...}` in the JSON) that there are no experts to map. NaN matrix cells are null in the JSON.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    gradient_rows, eval_rows = split_rows(rows, category_key) if eval_rows is None else (rows, list(eval_rows))
    files = {}
    if getattr(model.config, "adapter_type", None) == "moe" and hasattr(audio_adapter(model), "router"):
        activation = expert_activation(model, processor, rows, category_key, batch_size)
        files["expert_heatmap"] = plot_heatmap(activation, out_dir / "expert_heatmap.png").name
    else:
        activation = {"skipped": NO_EXPERTS_MESSAGE.format(adapter_type=getattr(model.config, "adapter_type", None))}

    params = _analysed_parameters(model, parameters)
    gradients = category_gradients(model, processor, gradient_rows, params, category_key, batch_size)
    categories, cosine = gradient_cosine(gradients)
    _, influence = gradient_influence(
        model, processor, gradient_rows, eval_rows, step_size, params, category_key, batch_size, gradients=gradients
    )
    files["gradient_cosine"] = plot_matrix(
        categories, cosine, out_dir / "gradient_cosine.png", "Gradient cosine similarity (eq. 11)"
    ).name
    files["gradient_influence"] = plot_matrix(
        categories, influence, out_dir / "gradient_influence.png", "Gradient influence (eq. 12)",
        xlabel="j (category stepped on)", ylabel="i (category measured)",
    ).name

    result = {
        "adapter_type": getattr(model.config, "adapter_type", None),
        "categories": categories,
        "expert_activation": activation,
        "gradient_cosine": {
            "categories": categories,
            "matrix": _json_matrix(cosine),
            "gradient_norms": {c: float(g.to(torch.float64).norm()) for c, g in gradients.items()},
            "parameters": parameters if isinstance(parameters, str) else "custom",
            "num_parameters": sum(parameter.numel() for parameter in params),
            "num_gradient_rows": len(gradient_rows),
        },
        "gradient_influence": {
            "categories": categories,
            "matrix": _json_matrix(influence),
            "step_size": step_size,
            "num_eval_rows": len(eval_rows),
            "sign_convention": INFLUENCE_SIGN_CONVENTION,
        },
        "files": files,
    }
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return result


__all__ = [
    "INFLUENCE_SIGN_CONVENTION",
    "NO_EXPERTS_MESSAGE",
    "category_gradients",
    "expert_activation",
    "gradient_cosine",
    "gradient_influence",
    "group_by_category",
    "plot_heatmap",
    "plot_matrix",
    "run_analysis",
    "split_rows",
]
