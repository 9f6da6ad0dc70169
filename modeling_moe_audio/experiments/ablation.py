"""The paper's Table 2 and Table 3 configurations at tiny scale on the built-in corpus.

Every configuration is the demo's tiny MoE model with one change (a row of `presets.ABLATIONS`: expert count,
top-k, expert width, or no balance loss), trained with the same corpus, budget (so the same tokens) and seed, then
scored on the test questions. The run is resumable: a configuration whose `result.json` exists is not trained
again, so running the same command after an interruption finishes the rest. Writes `OUTPUT/ablation.md` and
`OUTPUT/ablation.json`.
"""

import json
from pathlib import Path

from ..analysis.routing import expert_activation, load_statistics
from ..checkpoints.loading import load_checkpoint
from ..checkpoints.parameters import count_parameters
from ..data.corpus import write_corpus
from ..data.manifest import load_rows
from ..output_dirs import finish_run, start_run
from ..presets import ABLATIONS, ablation_config
from ..progress import announce, progress_enabled
from .tiny import FULL, PRESET, QUICK, evaluate_one, train_one


def load_balance(checkpoint: Path, rows: list[dict]) -> dict:
    """Max/mean expert load and the normalised routing entropy over the test questions' audio tokens."""
    model, processor = load_checkpoint(checkpoint)
    activation = expert_activation(model, processor, rows)
    counts = [sum(per_expert) for per_expert in zip(*(activation["counts"][c] for c in activation["categories"]))]
    load = load_statistics(counts)
    return {"max_mean_load": load["max_mean_load"], "load_entropy": load["load_entropy"]}


def run_one(name: str, output: Path, manifests: dict, budget: dict, seed: int, resuming: bool = False) -> dict:
    result_path = output / name / "result.json"
    if resuming and result_path.is_file():
        announce(f"{name}: already done ({result_path})")
        return json.loads(result_path.read_text())
    config = ablation_config(name, base=PRESET)
    seconds = train_one(name, config, output, manifests, budget, seed)
    rows = load_rows(manifests["test"])
    counts = count_parameters(config)
    accuracy = evaluate_one(output / name, manifests["test"])
    announce(f"{name}: measuring the expert load on the test questions")
    result = {
        "config": name,
        "accuracy": accuracy,
        "balance": load_balance(output / name, rows),
        "adapter_params_total": counts["adapter_total_params"],
        "adapter_params_active": counts["adapter_active_params"],
        "train_seconds": round(seconds, 1),
    }
    result_path.write_text(json.dumps(result, indent=2))
    return result


def format_table(results: list[dict]) -> str:
    lines = [
        "| configuration | overall | speech | music | sound | adapter params total | active | max/mean load | "
        "load entropy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        a = r["accuracy"]
        lines.append(
            f"| {r['config']} | {a['overall']:.3f} | {a['speech']:.3f} | {a['music']:.3f} | {a['sound']:.3f} | "
            f"{r['adapter_params_total']:,} | {r['adapter_params_active']:,} | {r['balance']['max_mean_load']:.2f} | "
            f"{r['balance']['load_entropy']:.3f} |"
        )
    return "\n".join(lines)


def run_ablation(output="runs/ablate", quick=False, seed=0, configs=None, overwrite=False) -> list[dict]:
    """Train and score each configuration (all of `ABLATIONS` by default); resumable (see the module docstring)."""
    output = Path(output)
    names = configs or list(ABLATIONS)
    unknown = [name for name in names if name not in ABLATIONS]
    if unknown:
        raise ValueError(f"Unknown configurations {unknown}; choose from {list(ABLATIONS)}.")
    budget = QUICK if quick else FULL
    corpus = output / "corpus"
    resuming = start_run(output, "ablate", {"quick": quick, "seed": seed}, overwrite, resumable=True)
    if resuming and (corpus / "test.jsonl").is_file():  # the same corpus
        manifests = {split: corpus / f"{split}.jsonl" for split in ("train", "validation", "test")}
    else:
        announce(f"writing the corpus to {corpus}")
        manifests = write_corpus(corpus, seed=seed, sizes=budget["sizes"], overwrite=True,
                                 progress=progress_enabled())
    results = []
    for number, name in enumerate(names, 1):
        announce(f"configuration {number} of {len(names)}: {name}")
        results.append(run_one(name, output, manifests, budget, seed, resuming))
    (output / "ablation.json").write_text(json.dumps({"quick": quick, "seed": seed, "results": results}, indent=2))
    (output / "ablation.md").write_text(format_table(results) + "\n")
    finish_run(output)
    return results
