"""The paper's Table 2 and Table 3 configurations at tiny scale on the built-in corpus, over one or more seeds.

Every configuration is the demo's tiny MoE model with one change (a row of `presets.ABLATIONS`: expert count,
top-k, expert width, or no balance loss), trained with the same corpus, budget (so the same tokens) and seeds, then
scored on the test questions and compared with the paper's 8-choose-4 (always run, as the baseline). The run is
resumable: a (configuration, seed) run whose `result.json` exists is not trained again, so running the same command
after an interruption finishes the rest. Writes `OUTPUT/ablation.md`, `OUTPUT/ablation.json` and
`OUTPUT/ablation.png`; each run is in `OUTPUT/<configuration>/seed-<seed>`.
"""

from __future__ import annotations

from pathlib import Path

from ..output_dirs import finish_run, start_run
from ..presets import ABLATIONS
from .comparison import format_tables, run_comparison
from .tiny import FULL, QUICK


BASELINE = "8-choose-4"


def format_table(summary: dict) -> str:
    """Accuracy (mean over the seeds), parameter counts and routing balance per configuration, then the comparison
    with the baseline."""
    runs = summary["runs"]
    lines = [
        "| configuration | overall | speech | music | sound | adapter params total | active | max/mean load | "
        "load entropy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, per_category in summary["configs"].items():
        own = [r for r in runs if r["config"] == name]
        balance = {key: sum(r["balance"][key] for r in own) / len(own) for key in ("max_mean_load", "load_entropy")}
        lines.append(
            f"| {name} | " + " | ".join(f"{per_category[c]['mean']:.3f}" for c in ("overall", "speech", "music", "sound"))
            + f" | {own[0]['adapter_params_total']:,} | {own[0]['adapter_params_active']:,} | "
            f"{balance['max_mean_load']:.2f} | {balance['load_entropy']:.3f} |"
        )
    return "\n".join(lines) + "\n\n" + format_tables(summary)


def run_ablation(output="runs/ablate", quick=False, seeds=(0,), configs=None, overwrite=False) -> dict:
    """Train and score each configuration (all of `ABLATIONS` by default) with each seed; resumable (see the module
    docstring). The corpus is made with the first seed."""
    output = Path(output)
    names = list(configs or ABLATIONS)
    unknown = [name for name in names if name not in ABLATIONS]
    if unknown:
        raise ValueError(f"Unknown configurations {unknown}; choose from {list(ABLATIONS)}.")
    if BASELINE not in names:
        names.insert(0, BASELINE)
    seeds = list(seeds)
    budget = QUICK if quick else FULL
    resuming = start_run(output, "ablate", {"quick": quick, "seeds": seeds, "configs": names}, overwrite,
                         resumable=True)
    summary = run_comparison(output, names, seeds, budget, BASELINE, corpus_seed=seeds[0], resuming=resuming,
                             name="ablation")
    (output / "ablation.md").write_text(format_table(summary) + "\n")
    finish_run(output)
    return summary
