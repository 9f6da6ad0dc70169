"""The paper's claims beyond accuracy, measured on each run of a comparison and summarised over its seeds.

- Modality gap (Table 1): audio accuracy - text accuracy on the same questions, where the corpus has a text form
  of them (the conflict corpus's word questions, `data.corpus.TEXT_FORM`).
- Gradient conflict (eq. 11, Figure 4): the cosines between the categories' adapter gradients, logged during
  training (`GradientConflictCallback` on the validation questions) and measured at its end; more negative is more
  conflict.
- Gradient influence (eq. 12, Figure 5), at the end of training.
- Expert specialisation (Figure 3): how differently the kinds of audio are routed, as the mean over pairs of the
  total variation distance between their expert shares (0: every kind uses the experts alike; 1: no expert shared),
  after training and, for reference, at initialisation. The router sees the audio, not the question, so routing is
  grouped by the clip's `kind` where rows carry one (the conflict corpus, whose content and paralinguistic questions
  are asked of the same clips), else by category.

`measure_run` measures one trained run; `summarise_claims` gives, per configuration, the spread over seeds and,
against the baseline where both have the measure, the paired difference over seeds (`statistics`).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from ..analysis.report import run_analysis
from ..analysis.routing import expert_activation
from ..checkpoints.loading import load_checkpoint
from ..data.manifest import load_rows
from .statistics import paired_difference, spread


def routing_specialisation(rates: dict) -> float:
    """Mean total variation distance between the expert shares of every pair of categories (`expert_activation`'s
    `rates`, each summing to top_k per category)."""
    shares = {c: [r / sum(values) for r in values] for c, values in rates.items() if values}
    pairs = list(itertools.combinations(shares, 2))
    if not pairs:
        raise ValueError("Routing specialisation needs at least two categories with audio tokens.")
    return sum(0.5 * sum(abs(a - b) for a, b in zip(shares[x], shares[y])) for x, y in pairs) / len(pairs)


def cosines_during_training(checkpoint: Path) -> dict[str, list[tuple[int, float]]]:
    """`grad_cos/<a>-<b>` as logged during training (the checkpoint's `trainer_state.json`): {pair: [(step, value)]}."""
    state = Path(checkpoint) / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.is_file() else []
    logged = {}
    for entry in history:
        for key, value in entry.items():
            if key.startswith("grad_cos/"):
                logged.setdefault(key.removeprefix("grad_cos/"), []).append((entry["step"], value))
    return logged


def _pairs(categories: list[str], matrix: list[list]) -> dict[str, float | None]:
    return {f"{a}-{b}": matrix[i][j] for (i, a), (j, b) in itertools.combinations(enumerate(categories), 2)}


def audio_rows(rows: list[dict]) -> list[dict]:
    """The rows that hold audio: the analyses follow gradients through the adapter, which text rows never reach."""
    return [row for row in rows if row["audio"]]


def measure_run(checkpoint: Path, init_checkpoint: Path, manifests: dict, name: str) -> dict:
    """Everything but accuracy that one trained run says about the claims; the analyses' figures and
    `analysis.json` go to `checkpoint/analysis`. `manifests`: the corpus's "validation" (gradients), "test"
    (influence losses and routing) and, optionally, "test_text" (the modality gap's text form)."""
    model, processor = load_checkpoint(checkpoint)
    test_rows = audio_rows(load_rows(manifests["test"]))
    analysis = run_analysis(model, processor, audio_rows(load_rows(manifests["validation"])), checkpoint / "analysis",
                            eval_rows=test_rows, model_name=name)
    categories = analysis["categories"]
    measured = {
        "categories": categories,
        "cosine_end": _pairs(categories, analysis["gradient_cosine"]["matrix"]),
        "cosine_matrix": analysis["gradient_cosine"]["matrix"],
        "influence_matrix": analysis["gradient_influence"]["matrix"],
        "cosine_history": cosines_during_training(checkpoint),
    }
    history = measured["cosine_history"]
    measured["cosine_during_training"] = {pair: sum(v for _, v in values) / len(values)
                                          for pair, values in history.items() if values}
    if "rates" in analysis["expert_activation"]:
        routing_key = "kind" if all("kind" in row for row in test_rows) else "category"
        rates = expert_activation(model, processor, test_rows, routing_key)["rates"]
        init_model, init_processor = load_checkpoint(init_checkpoint)
        initial = expert_activation(init_model, init_processor, test_rows, routing_key)["rates"]
        measured["routing_key"] = routing_key
        measured["expert_rates"] = rates
        measured["specialisation"] = {"trained": routing_specialisation(rates),
                                      "initial": routing_specialisation(initial)}
    return measured


# The scalar measures summarised over seeds: (key, what it is, how to read it), in the tables' order.
SCALARS = (
    ("modality_gap", "modality gap: audio - text accuracy on the word questions", "closer to 0 is better"),
    ("cosine_during_training", "gradient cosine between categories, mean over pairs and over training",
     "higher is less conflict"),
    ("cosine_end", "gradient cosine between categories, mean over pairs, end of training", "higher is less conflict"),
    ("specialisation", "routing specialisation after training (initialisation in brackets)",
     "0 = kinds of audio routed alike"),
)


def scalar_measures(result: dict) -> dict[str, float]:
    """One run's scalar measures (those it has)."""
    scalars = {}
    if "modality_gap" in result:
        scalars["modality_gap"] = result["modality_gap"]["gap"]
    claims = result.get("claims", {})
    for key in ("cosine_during_training", "cosine_end"):
        values = [v for v in claims.get(key, {}).values() if v is not None]
        if values:
            scalars[key] = sum(values) / len(values)
    if "specialisation" in claims:
        scalars["specialisation"] = claims["specialisation"]["trained"]
        scalars["specialisation_initial"] = claims["specialisation"]["initial"]
    return scalars


def summarise_claims(results: list[dict], configs: list[str], seeds: list[int], baseline: str) -> dict:
    """Per scalar measure: each configuration's spread over the seeds; against the baseline (where both have it,
    over two seeds or more) the paired difference; for specialisation, trained - initialisation per configuration.
    Per gradient pair: each configuration's spread of the cosine during training."""
    by_run = {(r["config"], r["seed"]): scalar_measures(r) for r in results}
    summary = {"measures": {}, "differences": {}, "specialisation_gain": {}, "pairs": {}, "pair_differences": {}}
    for key in (*(key for key, _, _ in SCALARS), "specialisation_initial"):
        having = {name: [by_run[name, s][key] for s in seeds] for name in configs
                  if all(key in by_run[name, s] for s in seeds)}
        if having:
            summary["measures"][key] = {name: spread(values) for name, values in having.items()}
        if baseline in having and len(seeds) > 1:
            summary["differences"][key] = {name: paired_difference(values, having[baseline])
                                           for name, values in having.items() if name != baseline}
    for name in configs:
        runs = [by_run[name, s] for s in seeds]
        if len(seeds) > 1 and all("specialisation" in r for r in runs):
            summary["specialisation_gain"][name] = paired_difference([r["specialisation"] for r in runs],
                                                                     [r["specialisation_initial"] for r in runs])
    claims = {(r["config"], r["seed"]): r.get("claims", {}) for r in results}
    for name in configs:
        pairs = sorted(set().union(*(claims[name, s].get("cosine_during_training", {}) for s in seeds)))
        summary["pairs"][name] = {pair: spread([claims[name, s]["cosine_during_training"][pair] for s in seeds])
                                  for pair in pairs
                                  if all(pair in claims[name, s].get("cosine_during_training", {}) for s in seeds)}
    if len(seeds) > 1:
        for name in configs:
            shared = [pair for pair in summary["pairs"][name] if pair in summary["pairs"].get(baseline, {})]
            if name != baseline and shared:
                summary["pair_differences"][name] = {pair: paired_difference(
                    [claims[name, s]["cosine_during_training"][pair] for s in seeds],
                    [claims[baseline, s]["cosine_during_training"][pair] for s in seeds]) for pair in shared}
    return summary


def _cell(s: dict) -> str:
    return f"{s['mean']:+.3f} ± {s['std']:.3f}"


def _difference(d: dict) -> str:
    if d["ci_low"] is None:
        return f"{d['mean']:+.3f}"
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], p = {d['p_value']:.2g}"


def format_claims(summary: dict, baseline: str) -> str:
    """The claims' tables in markdown: each measure per configuration (mean ± sd over seeds) and the difference
    from the baseline (mean [95% CI], paired t-test), then the gradient cosine of each pair during training."""
    measures, lines = summary["measures"], []
    if not measures:
        return ""
    configs = list(summary["pairs"])  # every configuration, in the comparison's order
    lines += ["| measure | how to read it | " + " | ".join(configs) + " | difference from "
              f"{baseline} (95% CI) |", "| --- " * (3 + len(configs)) + "|"]
    for key, what, reading in SCALARS:
        if key not in measures:
            continue
        cells = []
        for name in configs:
            s = measures[key].get(name)
            cell = _cell(s) if s else "-"
            if key == "specialisation" and s:
                cell += f" ({measures['specialisation_initial'][name]['mean']:.3f})"
            cells.append(cell)
        differences = summary["differences"].get(key, {})
        shown = "; ".join(f"{name}: {_difference(d)}" for name, d in differences.items())
        if key == "specialisation":
            shown = "; ".join(f"{name} trained - initial: {_difference(d)}"
                              for name, d in summary["specialisation_gain"].items())
        lines.append(f"| {what} | {reading} | " + " | ".join(cells) + f" | {shown or '-'} |")
    pairs = sorted({pair for per_pair in summary["pairs"].values() for pair in per_pair})
    if pairs:
        differences = summary.get("pair_differences", {})
        lines += ["", "Gradient cosine of each pair of categories, mean over training (mean ± sd over seeds), and the "
                  f"difference from {baseline} (mean [95% CI], paired t-test):", "",
                  "| pair | " + " | ".join(summary["pairs"]) + " | difference |",
                  "| --- " * (2 + len(summary["pairs"])) + "|"]
        for pair in pairs:
            shown = "; ".join(f"{name}: {_difference(d[pair])}" for name, d in differences.items() if pair in d)
            lines.append(f"| {pair} | " + " | ".join(_cell(per_pair[pair]) if pair in per_pair else "-"
                                                     for per_pair in summary["pairs"].values()) + f" | {shown or '-'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Figures 3-5 and the cosines during training, as means over the seeds with their spread
# ----------------------------------------------------------------------------------------------------------------


def _mean_and_std(matrices: list) -> tuple:
    import numpy as np

    stacked = np.array([[[np.nan if v is None else v for v in row] for row in m] for m in matrices], dtype=float)
    std = np.nanstd(stacked, axis=0, ddof=1) if len(matrices) > 1 else np.zeros(stacked.shape[1:])
    return np.nanmean(stacked, axis=0), std


def _by_favoured_kind(rates: list[list[float]]) -> list[list[float]]:
    """Experts are interchangeable from seed to seed (expert 3 of one seed has nothing to do with expert 3 of
    another), so before averaging, each seed's experts (columns of kinds x experts `rates`) are put in one order:
    grouped by the kind they favour most (rate above their own mean over kinds), in the rows' order, the most
    favouring first."""
    import numpy as np

    values = np.asarray(rates, dtype=float)
    excess = values - values.mean(axis=0, keepdims=True)  # (kinds, experts)
    favoured, margin = excess.argmax(axis=0), excess.max(axis=0)
    order = sorted(range(values.shape[1]), key=lambda e: (favoured[e], -margin[e]))
    return values[:, order].tolist()


def plot_claims(results: list[dict], configs: list[str], output: Path, prefix: str, label: str) -> dict[str, str]:
    """Per configuration, Figure 3 (MoE only), 4 and 5 as the mean over its seeds with the standard deviation under
    each value, and one figure of every pair's gradient cosine during training (mean line, ±1 sd band); `label`
    (the models and corpus) goes into the titles. Returns {figure: file name} of the PNGs written to `output`."""
    from ..analysis.figures import draw_matrix, new_figure, plot_heatmap, save_png

    files = {}
    for name in configs:
        runs = [r["claims"] for r in results if r["config"] == name and "claims" in r]
        if not runs:
            continue
        seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
        categories = runs[0]["categories"]
        if all("expert_rates" in run for run in runs):
            kinds = [kind for kind in runs[0]["expert_rates"] if runs[0]["expert_rates"][kind] is not None]
            mean, std = _mean_and_std([_by_favoured_kind([run["expert_rates"][kind] for kind in kinds]) for run in runs])
            path = plot_heatmap({k: list(mean[i]) for i, k in enumerate(kinds)}, output / f"{prefix}-{name}-experts.png",
                                f"Expert activation rate per audio token, mean ± sd over {seeds}\n({name}, {label}; "
                                "each seed's experts ordered by the kind they favour)",
                                spreads={k: list(std[i]) for i, k in enumerate(kinds)}, experts_in_order=True)
            files[f"{name} experts"] = path.name
        for key, title, axes_labels in (
            ("cosine_matrix", "Gradient cosine similarity, eq. 11", {}),
            ("influence_matrix", "Gradient influence, eq. 12",
             {"xlabel": "j (category stepped on)", "ylabel": "i (category measured)"}),
        ):
            mean, std = _mean_and_std([run[key] for run in runs])
            figure = draw_matrix(categories, mean.tolist(), f"{title},\nmean ± sd over {seeds}\n({name}, {label})",
                                 spreads=std.tolist(), **axes_labels)
            path = save_png(figure, output / f"{prefix}-{name}-{key.split('_')[0]}.png")
            files[f"{name} {key.split('_')[0]}"] = path.name
    pairs = sorted({pair for r in results for pair in r.get("claims", {}).get("cosine_history", {})})
    if pairs:
        import numpy as np

        figure = new_figure(1.0 + 3.2 * len(pairs), 3.2)
        for index, pair in enumerate(pairs):
            axes = figure.add_subplot(1, len(pairs), index + 1)
            for name in configs:
                histories = [r["claims"]["cosine_history"].get(pair, []) for r in results
                             if r["config"] == name and "claims" in r]
                steps = sorted(set.intersection(*(set(s for s, _ in h) for h in histories))) if histories else []
                if not steps:
                    continue
                values = np.array([[dict(h)[s] for s in steps] for h in histories])
                mean = values.mean(axis=0)
                std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
                axes.plot(steps, mean, label=name)
                axes.fill_between(steps, mean - std, mean + std, alpha=0.2)
            axes.axhline(0.0, color="grey", linewidth=0.8)
            axes.set_title(pair, fontsize=10)
            axes.set_xlabel("optimizer step")
            if index == 0:
                axes.set_ylabel("gradient cosine")
                axes.legend(fontsize=8)
        figure.suptitle(f"Gradient cosine between categories during training, mean ± sd over seeds ({label})",
                        fontsize=10)
        files["cosine during training"] = save_png(figure, output / f"{prefix}-cosine-training.png").name
    return files
