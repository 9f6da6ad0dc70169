"""The whole of section 5 on one model: `analysis.json` and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoints.loading import load_checkpoint
from ..data.manifest import load_rows
from ..output_dirs import check_output_dir
from ..unwrap import audio_adapter
from .figures import plot_heatmap, plot_matrix
from .gradients import INFLUENCE_SIGN_CONVENTION, category_gradients, gradient_cosine, gradient_influence
from .measuring import analysed_parameters, json_matrix, split_rows
from .routing import NO_EXPERTS_MESSAGE, expert_activation


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
    model_name: str | None = None,
) -> dict:
    """All of section 5 that applies to the model; writes `analysis.json` and the PNGs into `out_dir`.

    `model_name` (e.g. the checkpoint's name) goes into every figure's title, with the adapter type.

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
    adapter_type = getattr(model.config, "adapter_type", None)
    named = f"{model_name}, {adapter_type} adapter" if model_name else f"{adapter_type} adapter"
    if getattr(model.config, "adapter_type", None) == "moe" and hasattr(audio_adapter(model), "router"):
        activation = expert_activation(model, processor, rows, category_key, batch_size)
        files["expert_heatmap"] = plot_heatmap(
            activation, out_dir / "expert_heatmap.png", f"Expert activation rate per audio token ({named})"
        ).name
    else:
        activation = {"skipped": NO_EXPERTS_MESSAGE.format(adapter_type=getattr(model.config, "adapter_type", None))}

    params = analysed_parameters(model, parameters)
    gradients = category_gradients(model, processor, gradient_rows, params, category_key, batch_size)
    categories, cosine = gradient_cosine(gradients)
    _, influence = gradient_influence(
        model, processor, gradient_rows, eval_rows, step_size, params, category_key, batch_size, gradients=gradients
    )
    files["gradient_cosine"] = plot_matrix(
        categories, cosine, out_dir / "gradient_cosine.png", f"Gradient cosine similarity, eq. 11 ({named})"
    ).name
    files["gradient_influence"] = plot_matrix(
        categories, influence, out_dir / "gradient_influence.png", f"Gradient influence, eq. 12 ({named})",
        xlabel="j (category stepped on)", ylabel="i (category measured)",
    ).name

    result = {
        "adapter_type": getattr(model.config, "adapter_type", None),
        "categories": categories,
        "expert_activation": activation,
        "gradient_cosine": {
            "categories": categories,
            "matrix": json_matrix(cosine),
            "gradient_norms": {c: float(g.to(torch.float64).norm()) for c, g in gradients.items()},
            "parameters": parameters if isinstance(parameters, str) else "custom",
            "num_parameters": sum(parameter.numel() for parameter in params),
            "num_gradient_rows": len(gradient_rows),
        },
        "gradient_influence": {
            "categories": categories,
            "matrix": json_matrix(influence),
            "step_size": step_size,
            "num_eval_rows": len(eval_rows),
            "sign_convention": INFLUENCE_SIGN_CONVENTION,
        },
        "files": files,
    }
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return result


def analyze_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    output_dir: str | Path,
    eval_data: str | Path | None = None,
    category_key: str = "category",
    step_size: float = 1e-2,
    limit: int | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
) -> dict:
    """`run_analysis` on a checkpoint (folder or Hub id) and manifests whose rows carry a category."""
    check_output_dir(output_dir, overwrite)  # before the long part
    model, processor = load_checkpoint(checkpoint)
    rows = load_rows(data, limit)
    missing = [i for i, row in enumerate(rows) if row.get(category_key) is None]
    if missing:
        raise ValueError(f"rows {missing[:5]} of {data} have no {category_key!r}; the analyses compare categories, "
                         "so every row needs one (or pass --category_key).")
    eval_rows = load_rows(eval_data, limit) if eval_data else None
    return run_analysis(model, processor, rows, output_dir, eval_rows=eval_rows, step_size=step_size,
                        category_key=category_key, batch_size=batch_size, model_name=Path(str(checkpoint)).name)
