"""The demo: the whole loop on the built-in corpus, for the tiny MoE model and the tiny dense baseline.

Writes the corpus, initialises both models from the `tiny-4s` preset with the same seed, trains each on the same
data and budget, answers the test questions by greedy generation, and writes `OUTPUT/results.json`, both
checkpoints (`OUTPUT/moe`, `OUTPUT/dense`, with processors, loadable with `trust_remote_code=True`) and
TensorBoard logs (`OUTPUT/<model>/runs`).
"""

import json
from pathlib import Path

from ..checkpoints.parameters import count_parameters
from ..data.corpus import write_corpus
from ..checkpoints.model_card import write_model_card
from ..output_dirs import finish_run, start_run
from ..presets import load_config
from ..progress import announce, progress_enabled
from .statistics import paired_difference, verdict
from .tiny import FULL, PRESET, QUICK, evaluate_one, train_one


ADAPTERS = ("moe", "dense")
CATEGORIES = ("overall", "speech", "music", "sound")


def format_table(results: dict) -> str:
    lines = [
        "| model | " + " | ".join(CATEGORIES) + " | params total | params active | train time |",
        "| --- | " + " | ".join("---" for _ in CATEGORIES) + " | --- | --- | --- |",
    ]
    for name, result in results.items():
        accuracy = result["accuracy"]
        lines.append(
            f"| {name} | " + " | ".join(f"{accuracy[c]:.3f}" for c in CATEGORIES)
            + f" | {result['params_total']:,} | {result['params_active']:,} | {result['train_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def run_demo(output: str | Path = "runs/demo", quick: bool = False, seed: int = 0, overwrite: bool = False) -> dict:
    """Run the demo into `output` (an empty folder; `overwrite` replaces a run or files there) and return the
    summary written to `output/results.json`."""
    output = Path(output)
    start_run(output, "demo", {"quick": quick, "seed": seed}, overwrite)
    budget = QUICK if quick else FULL
    announce(f"writing the corpus to {output / 'corpus'}")
    manifests = write_corpus(output / "corpus", seed=seed, sizes=budget["sizes"], overwrite=True,
                             progress=progress_enabled())
    results, hits = {}, {}
    for adapter_type in ADAPTERS:
        config = load_config(PRESET, adapter_type=adapter_type)
        train_seconds = train_one(adapter_type, config, output, manifests, budget, seed)
        params = count_parameters(config)
        accuracy, hits[adapter_type] = evaluate_one(output / adapter_type, manifests["test"])
        trained = json.loads((output / adapter_type / "train_results.json").read_text())
        write_model_card(output / adapter_type, training_summary=trained["summary"],
                         eval_results={f"accuracy_{k}": v for k, v in accuracy.items()})
        results[adapter_type] = {
            "accuracy": accuracy,
            "params_total": params["model_total_params"],
            "params_active": params["model_active_params"],
            "adapter_params_total": params["adapter_total_params"],
            "adapter_params_active": params["adapter_active_params"],
            "train_seconds": round(train_seconds, 1),
        }
    # Both models answered the same questions: the per-question difference bounds this run's test sampling noise.
    difference = paired_difference([float(h) for h in hits["moe"]], [float(h) for h in hits["dense"]])
    summary = {"quick": quick, "seed": seed, "budget": budget, "models": results, "moe_minus_dense": difference,
               "verdict": verdict("MoE", "dense", difference, "overall test accuracy", "questions")}
    (output / "results.json").write_text(json.dumps(summary, indent=2))
    finish_run(output)
    return summary
