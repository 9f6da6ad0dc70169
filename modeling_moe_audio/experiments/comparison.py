"""Configurations trained over several seeds on the same corpus and budget, and compared with a baseline.

Each (configuration, seed) run initialises the tiny model with that seed, trains it with that seed's data order on
the one corpus of the comparison, and answers the same test questions; runs of the same seed are paired. For every
configuration and category: the mean, spread and range over the seeds, and against the baseline the mean paired
difference with its 95% confidence interval and p-value (`statistics.paired_difference`). With a single seed the
difference is paired over the test questions instead, which covers only the test sampling of that one run.

Runs are resumable: a run whose `result.json` exists is not trained again. `moe-audio compare` (MoE against dense
by default) and `moe-audio ablate` (the rows of `presets.ABLATIONS` against the paper's 8-choose-4) both run here.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis.routing import expert_activation, load_statistics
from ..checkpoints.loading import load_checkpoint
from ..checkpoints.parameters import count_parameters
from ..data.corpus import SPLITS, TEXT_TEST_MANIFEST, VARIANTS, write_corpus
from ..data.manifest import load_rows
from ..output_dirs import finish_run, start_run
from ..presets import ABLATIONS, ablation_config, load_config
from ..progress import announce, progress_enabled
from .claims import audio_rows, format_claims, measure_run, plot_claims, summarise_claims
from .statistics import paired_difference, spread, verdict
from .tiny import FULL, PRESET, QUICK, evaluate_one, train_one


ADAPTER_CONFIGS = ("moe", "dense")


def known_configs() -> list[str]:
    return [*ADAPTER_CONFIGS, *ABLATIONS]


def config_for(name: str):
    """The tiny model of configuration `name`: `moe`, `dense`, or an ablation row (the MoE model with one change)."""
    if name in ADAPTER_CONFIGS:
        return load_config(PRESET, adapter_type=name)
    if name in ABLATIONS:
        return ablation_config(name, base=PRESET)
    raise ValueError(f"Unknown configuration {name!r}; choose from {', '.join(known_configs())}.")


def check_plan(configs: list[str], seeds: list[int], baseline: str) -> None:
    unknown = [name for name in configs if name not in known_configs()]
    if unknown:
        raise ValueError(f"Unknown configurations {unknown}; choose from {', '.join(known_configs())}.")
    if len(set(configs)) != len(configs) or len(set(seeds)) != len(seeds):
        raise ValueError("Each configuration and each seed may be given once.")
    if not seeds:
        raise ValueError("Give at least one seed.")
    if baseline not in configs:
        raise ValueError(f"The baseline {baseline!r} must be one of the configurations compared ({', '.join(configs)}).")


def load_balance(checkpoint: Path, rows: list[dict]) -> dict:
    """Max/mean expert load and the normalised routing entropy over the test questions' audio tokens."""
    model, processor = load_checkpoint(checkpoint)
    activation = expert_activation(model, processor, rows)
    counts = [sum(per_expert) for per_expert in zip(*(activation["counts"][c] for c in activation["categories"]))]
    load = load_statistics(counts)
    return {"max_mean_load": load["max_mean_load"], "load_entropy": load["load_entropy"]}


def run_folder(name: str, seed: int) -> str:
    return f"{name}/seed-{seed}"


def run_one(name: str, seed: int, output: Path, manifests: dict, budget: dict, resuming: bool) -> dict:
    """Train and score configuration `name` with `seed` in `output/<name>/seed-<seed>` (or read its result)."""
    folder = run_folder(name, seed)
    result_path = output / folder / "result.json"
    if resuming and result_path.is_file():
        announce(f"{folder}: already done ({result_path})")
        return json.loads(result_path.read_text())
    config = config_for(name)
    seconds = train_one(folder, config, output, manifests, budget, seed, gradient_probe=manifests["validation"],
                        probe_every=budget["probe_every"])
    accuracy, hits = evaluate_one(output / folder, manifests["test"])
    counts = count_parameters(config)
    result = {
        "config": name,
        "seed": seed,
        "accuracy": accuracy,
        "hits": hits,
        "adapter_params_total": counts["adapter_total_params"],
        "adapter_params_active": counts["adapter_active_params"],
        "train_seconds": round(seconds, 1),
    }
    if config.adapter_type == "moe":
        announce(f"{folder}: measuring the expert load on the test questions")
        result["balance"] = load_balance(output / folder, audio_rows(load_rows(manifests["test"])))
    if "test_text" in manifests:
        announce(f"{folder}: asking the word questions in their text form")
        text_accuracy, _ = evaluate_one(output / folder, manifests["test_text"])
        result["modality_gap"] = {"audio_accuracy": accuracy["content"], "text_accuracy": text_accuracy["overall"],
                                  "gap": accuracy["content"] - text_accuracy["overall"]}
    announce(f"{folder}: gradient cosines, influence and routing (the paper's section 5)")
    result["claims"] = measure_run(output / folder, output / f"{folder}-init", manifests, f"{name}, seed {seed}")
    result_path.write_text(json.dumps(result, indent=2))
    return result


def corpus_manifests(output: Path, budget: dict, corpus_seed: int, resuming: bool, variant: str = "default") -> dict:
    corpus = output / "corpus"
    if resuming and (corpus / "test.jsonl").is_file():  # the run's own corpus, written when it started
        manifests = {split: corpus / f"{split}.jsonl" for split in SPLITS}
        if (corpus / TEXT_TEST_MANIFEST).is_file():
            manifests["test_text"] = corpus / TEXT_TEST_MANIFEST
        return manifests
    announce(f"writing the corpus to {corpus}")
    return write_corpus(corpus, seed=corpus_seed, sizes=budget["sizes"], overwrite=True, progress=progress_enabled(),
                        variant=variant)


def summarise(results: list[dict], configs: list[str], seeds: list[int], baseline: str) -> dict:
    """Per configuration and category, the spread over seeds; per configuration, the paired difference from the
    baseline (over seeds, or over test questions with one seed) and its verdict."""
    by_run = {(r["config"], r["seed"]): r for r in results}
    categories = ["overall", *sorted(c for c in results[0]["accuracy"] if c != "overall")]
    summary = {"seeds": seeds, "baseline": baseline, "categories": categories, "configs": {}, "differences": {}}
    for name in configs:
        runs = [by_run[name, seed] for seed in seeds]
        summary["configs"][name] = {c: spread([run["accuracy"][c] for run in runs]) for c in categories}
    for name in configs:
        if name == baseline:
            continue
        if len(seeds) > 1:
            per_category = {
                c: paired_difference([by_run[name, s]["accuracy"][c] for s in seeds],
                                     [by_run[baseline, s]["accuracy"][c] for s in seeds])
                for c in categories
            }
            over = "seeds"
        else:  # one seed: the same test questions pair the two models
            (seed,) = seeds
            hits, base_hits = by_run[name, seed]["hits"], by_run[baseline, seed]["hits"]
            per_category = {"overall": paired_difference([float(h) for h in hits], [float(h) for h in base_hits])}
            over = "questions"
        summary["differences"][name] = {
            "per_category": per_category,
            "over": over,
            "verdict": verdict(name, baseline, per_category["overall"], "overall test accuracy", over),
        }
    return summary


def _interval(difference: dict) -> str:
    if difference["ci_low"] is None:
        return f"{difference['mean']:+.3f}"
    return f"{difference['mean']:+.3f} [{difference['ci_low']:+.3f}, {difference['ci_high']:+.3f}]"


def format_tables(summary: dict) -> str:
    categories = summary["categories"]
    seeds = summary["seeds"]
    lines = [f"Accuracy over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}): mean ± standard deviation "
             "(min-max)", "", "| configuration | " + " | ".join(categories) + " |",
             "| --- " * (1 + len(categories)) + "|"]
    for name, per_category in summary["configs"].items():
        cells = [f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}-{s['max']:.3f})" for s in
                 (per_category[c] for c in categories)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if summary["differences"]:
        first = next(iter(summary["differences"].values()))
        shown = [c for c in categories if c in first["per_category"]]
        over = "the test questions of the one seed" if first["over"] == "questions" else f"{len(seeds)} seeds"
        lines += ["", f"Difference from {summary['baseline']}: mean [95% CI] over {over}; p: paired t-test",
                  "", "| configuration | " + " | ".join(shown) + " | p (overall) |",
                  "| --- " * (2 + len(shown)) + "|"]
        for name, difference in summary["differences"].items():
            cells = [_interval(difference["per_category"][c]) for c in shown]
            p_value = difference["per_category"]["overall"]["p_value"]
            lines.append(f"| {name} - {summary['baseline']} | " + " | ".join(cells)
                         + f" | {'-' if p_value is None else format(p_value, '.2g')} |")
        lines += [""] + [difference["verdict"] for difference in summary["differences"].values()]
    claims = format_claims(summary["claims"], summary["baseline"]) if "claims" in summary else ""
    if claims:
        lines += ["", "The paper's other measures, per run at the end of training unless said (mean ± sd over seeds):",
                  "", claims]
    return "\n".join(lines)


def plot_comparison(results: list[dict], summary: dict, path: Path, title: str) -> Path:
    """Per category, each configuration's accuracy on every seed (dots) and its mean with a 95% interval."""
    from scipy import stats

    from ..analysis.figures import new_figure, save_png

    categories = summary["categories"]
    configs = list(summary["configs"])
    figure = new_figure(1.5 + 2.2 * len(categories), 3.4)
    for index, category in enumerate(categories):
        axes = figure.add_subplot(1, len(categories), index + 1)
        for position, name in enumerate(configs):
            values = [r["accuracy"][category] for r in results if r["config"] == name]
            offsets = [position + 0.08 * (i - (len(values) - 1) / 2) for i in range(len(values))]
            axes.scatter(offsets, values, s=14, alpha=0.6)
            s = summary["configs"][name][category]
            half_width = (stats.t.ppf(0.975, s["n"] - 1) * s["std"] / s["n"] ** 0.5) if s["n"] > 1 else 0.0
            axes.errorbar([position + 0.3], [s["mean"]], yerr=[half_width], fmt="o", color="black", capsize=3)
        axes.set_xticks(range(len(configs)), configs, rotation=30, ha="right")
        axes.set_title(category, fontsize=10)
        if index == 0:
            axes.set_ylabel("test accuracy")
    figure.suptitle(title, fontsize=10)
    return save_png(figure, path)


def run_comparison(output: str | Path, configs: list[str], seeds: list[int], budget: dict, baseline: str,
                   corpus_seed: int, resuming: bool, name: str = "comparison", corpus: str = "default") -> dict:
    """Train and score every (configuration, seed) run in `output` (claimed by the caller), then write
    `<name>.json`, `<name>.md` and `<name>.png` there; returns the summary (with the runs under "runs")."""
    output = Path(output)
    check_plan(configs, seeds, baseline)
    manifests = corpus_manifests(output, budget, corpus_seed, resuming, corpus)
    plan = [(config, seed) for seed in seeds for config in configs]
    results = []
    for number, (config, seed) in enumerate(plan, 1):
        announce(f"run {number} of {len(plan)}: {config}, seed {seed}")
        results.append(run_one(config, seed, output, manifests, budget, resuming))
    summary = summarise(results, configs, seeds, baseline)
    summary["claims"] = summarise_claims(results, configs, seeds, baseline)
    label = f"tiny models, {corpus} corpus"
    summary["figures"] = plot_claims(results, configs, output, name, label)
    (output / f"{name}.json").write_text(json.dumps({**summary, "budget": budget, "corpus": corpus,
                                                     "corpus_seed": corpus_seed, "runs": results}, indent=2))
    (output / f"{name}.md").write_text(format_tables(summary) + "\n")
    plot_comparison(results, summary, output / f"{name}.png",
                    f"Test accuracy of the tiny models over {len(seeds)} seed(s), {corpus} corpus (seed {corpus_seed})")
    return {**summary, "runs": results}


def compare(output: str | Path = "runs/compare", configs=ADAPTER_CONFIGS, seeds=(0, 1, 2, 3, 4), baseline: str = "dense",
            corpus_seed: int = 0, quick: bool = False, overwrite: bool = False, corpus: str = "default") -> dict:
    """`moe-audio compare`: claim `output` (or resume the same comparison there), run, write the tables and the plot;
    returns the summary, with the markdown under "tables"."""
    configs, seeds = list(configs), list(seeds)
    check_plan(configs, seeds, baseline)
    if corpus not in VARIANTS:
        raise ValueError(f"Unknown corpus {corpus!r}; choose one of {', '.join(VARIANTS)}.")
    settings = {"configs": configs, "seeds": seeds, "baseline": baseline, "corpus": corpus,
                "corpus_seed": corpus_seed, "quick": quick}
    resuming = start_run(output, "compare", settings, overwrite, resumable=True)
    summary = run_comparison(output, configs, seeds, QUICK if quick else FULL, baseline, corpus_seed, resuming,
                             corpus=corpus)
    finish_run(output)
    return {**summary, "tables": format_tables(summary)}
