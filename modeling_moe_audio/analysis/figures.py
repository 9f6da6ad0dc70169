"""The figures of section 5, drawn by matplotlib's Agg canvas (no pyplot, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def new_figure(width: float, height: float):
    """A figure drawn by the Agg canvas directly: no pyplot, no global backend switch, no display needed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("The analysis plots need matplotlib: pip install matplotlib.") from error
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path) -> Path:
    path = Path(path)
    # "tight": the saved area grows to hold every label, so a long axis label is never cut at the edge.
    figure.savefig(path, format="png", dpi=120, bbox_inches="tight", pad_inches=0.08)
    return path


def _annotate(axes, image, values, fmt: str, spreads=None) -> None:
    """Write each cell's value on it (and "± spread" under it, given `spreads` of the same shape), in white on dark
    cells and black on light ones."""
    for row, row_values in enumerate(values):
        for column, value in enumerate(row_values):
            value = float(value)
            if not math.isfinite(value):
                axes.text(column, row, "nan", ha="center", va="center", fontsize=8)
                continue
            red, green, blue, _ = image.cmap(image.norm(value))
            color = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
            text = format(value, fmt)
            if spreads is not None:
                text += "\n±" + format(float(spreads[row][column]), fmt)
            axes.text(column, row, text, ha="center", va="center", fontsize=8 if spreads is None else 7, color=color)


def plot_heatmap(rates, path, title: str = "Expert activation rate per audio token", spreads=None,
                 experts_in_order: bool = False) -> Path:
    """Figure 3: categories (rows) by routed experts (columns), each cell the token-normalised activation rate.

    `rates` is `expert_activation`'s result or its `rates` dict ({category: [rate per expert]}); `spreads` (the
    same shape, e.g. the standard deviation over seeds of mean `rates`) are printed under the values.
    `experts_in_order`: the columns are positions in an order of the experts (1, 2, ...), not expert numbers.
    """
    rates = rates["rates"] if "rates" in rates else rates
    categories = [category for category, values in rates.items() if values is not None]
    if not categories:
        raise ValueError("No category has an audio token: there is no activation rate to plot.")
    values = [rates[category] for category in categories]
    num_experts = len(values[0])
    figure = new_figure(1.2 + 0.6 * num_experts, 1.4 + 0.5 * len(categories))
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="viridis", vmin=0.0, aspect="auto")
    axes.set_xticks(range(num_experts), [f"{e + 1}" if experts_in_order else f"E{e}" for e in range(num_experts)])
    axes.set_yticks(range(len(categories)), categories)
    axes.set_xlabel("routed expert, in order" if experts_in_order else "routed expert")
    axes.set_title(title, fontsize=10)
    _annotate(axes, image, values, ".2f", None if spreads is None else [spreads[c] for c in categories])
    figure.colorbar(image, ax=axes, label="activations / token")
    return save_png(figure, path)


def plot_matrix(categories, matrix, path, title: str, **labels) -> Path:
    """Figures 4 and 5 as a PNG at `path`: `draw_matrix` saved."""
    return save_png(draw_matrix(categories, matrix, title, **labels), path)


def draw_matrix(categories, matrix, title: str, xlabel: str = "category j", ylabel: str = "category i",
                limit: float = 1.0, spreads=None):
    """A category-by-category matrix on a diverging scale from -limit to +limit (NaN cells blank); the figure.
    `spreads` (same shape, e.g. the standard deviation over seeds of a mean matrix) are printed under the values.

    The scale is fixed (cosines lie in [-1, 1], and influences are normalised so that I[i][i] = 1), so figures of
    different models and seeds share their colours, and one outlier cannot wash out the rest: a value beyond the
    scale takes the end colour, the colour bar gets an arrow, and the cell still prints its value.
    """
    values = torch.as_tensor(matrix, dtype=torch.float64)
    finite = values[torch.isfinite(values)]
    beyond_low = bool(finite.numel() and float(finite.min()) < -limit)
    beyond_high = bool(finite.numel() and float(finite.max()) > limit)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}
    size = 0.9 if spreads is None else 1.1
    figure = new_figure(1.8 + size * len(categories), 1.2 + size * len(categories))
    axes = figure.add_subplot()
    image = axes.imshow(values.numpy(), cmap="RdBu", vmin=-limit, vmax=limit)
    axes.set_xticks(range(len(categories)), categories)
    axes.set_yticks(range(len(categories)), categories)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    _annotate(axes, image, values.tolist(), ".3f" if spreads is None else ".2f", spreads)
    figure.colorbar(image, ax=axes, extend=extend[beyond_low, beyond_high])
    return figure


def loss_curve_figure(log_history: list[dict], title: str, no_aux_reason: str | None = None):
    """Training and evaluation loss against the step (left) and the load-balancing loss `moe/aux_loss` of eq. 10
    (right, its own axis: it sits near top_k, far above the language-model loss). `log_history` is the Trainer's
    `state.log_history`. Where no aux loss was logged the right panel says why (`no_aux_reason`, e.g. a dense
    adapter) instead of drawing an empty axis."""
    from matplotlib.ticker import MaxNLocator  # matplotlib is optional: `new_figure` explains how to get it

    def series(key):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        return [step for step, _ in points], [value for _, value in points]

    figure = new_figure(10.0, 3.8)
    losses, aux = figure.subplots(1, 2)
    aux_steps, aux_values = series("moe/aux_loss")
    # The model's training loss adds lambda * aux loss to the next-token loss; its evaluation loss does too.
    with_aux = " (+ λ·aux)" if aux_steps else ""
    curves = (("loss", f"train loss{with_aux}", "-", "tab:blue"), ("eval_loss", f"eval loss{with_aux}", "o-", "tab:orange"))
    for key, label, style, color in curves:
        steps, values = series(key)
        if steps:
            losses.plot(steps, values, style, label=label, color=color, markersize=4)
    losses.set_xlabel("optimizer step")
    losses.set_ylabel("loss")
    losses.xaxis.set_major_locator(MaxNLocator(integer=True))
    losses.set_title("Language-model loss", fontsize=10)
    if losses.get_lines():
        losses.legend(fontsize=8)
    else:
        losses.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=losses.transAxes)
    aux.set_title("Load-balancing loss (eq. 10)", fontsize=10)
    if aux_steps:
        aux.plot(aux_steps, aux_values, "-", color="tab:green", label="moe/aux_loss")
        aux.set_xlabel("optimizer step")
        aux.xaxis.set_major_locator(MaxNLocator(integer=True))
        aux.set_ylabel("aux loss (top_k when balanced)")
    else:
        aux.text(0.5, 0.5, no_aux_reason or "no aux loss logged yet", ha="center", va="center", wrap=True,
                 transform=aux.transAxes)
        aux.set_xticks([])
        aux.set_yticks([])
    figure.suptitle(title, fontsize=11)
    return figure
