"""`moe-audio demo`: the whole loop on the built-in corpus, for the tiny MoE model and the tiny dense baseline.

    moe-audio demo [--output runs/demo] [--quick] [--seed 0] [--overwrite]

Writes the corpus, initialises both models from the `tiny` preset with the same seed, trains each with
`moe-audio train` on the same data and budget, answers the test questions by greedy generation, and writes
`OUTPUT/results.json`, both checkpoints (`OUTPUT/moe`, `OUTPUT/dense`, with processors, loadable with
`trust_remote_code=True`) and TensorBoard logs (`OUTPUT/<model>/runs`).
"""

import argparse
import json
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoProcessor

from . import train as train_command
from .build import check_output_dir, init_checkpoint
from .corpus import write_corpus
from .data import load_manifest
from .evaluation import generate_answers, normalize_answer, reference_answer
from .model_card import write_model_card
from .parameters import count_parameters
from .presets import load_config, shipped_tokenizer


# Corpus sizes count examples (four questions per clip); budgets are the same for both models.
FULL = {"sizes": {"train": 2400, "validation": 200, "test": 400}, "epochs": 12, "batch_size": 16, "lr": 1e-3}
QUICK = {"sizes": {"train": 480, "validation": 40, "test": 120}, "epochs": 3, "batch_size": 16, "lr": 1e-3}
ADAPTERS = ("moe", "dense")
# The tiny preset with 4 s Whisper windows: the corpus's clips last 1-3 s, and a 30 s window would spend most of
# the encoder's time on padding.
PRESET = "tiny-4s"


def train_one(name: str, config, output: Path, manifests: dict, budget: dict, seed: int) -> float:
    """Initialise `config` with `seed` in `output/<name>-init` and train it into `output/<name>`; returns seconds."""
    init_dir = output / f"{name}-init"
    init_checkpoint(config, init_dir, tokenizer=shipped_tokenizer(PRESET), seed=seed, overwrite=True)
    start = time.perf_counter()
    train_command.main([
        "--model", str(init_dir),
        "--train_data", str(manifests["train"]),
        "--eval_data", str(manifests["validation"]),
        "--output_dir", str(output / name),
        "--stage", "full",
        "--train_encoder",
        "--num_train_epochs", str(budget["epochs"]),
        "--per_device_train_batch_size", str(budget["batch_size"]),
        "--per_device_eval_batch_size", str(budget["batch_size"]),
        "--learning_rate", str(budget["lr"]),
        "--warmup_steps", "20",
        "--weight_decay", "0.01",
        "--seed", str(seed),
        "--data_seed", str(seed),
        "--use_cpu",
        "--logging_steps", "10",
        "--eval_strategy", "epoch",
        "--save_strategy", "no",
        "--report_to", "tensorboard",
        "--dataloader_num_workers", "0",
        "--overwrite_output_dir",  # the demo (and ablate) decide what may be replaced in `output`
    ])
    return time.perf_counter() - start


def evaluate_one(checkpoint: Path, test_manifest: Path) -> dict:
    model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    rows = list(load_manifest(test_manifest)[0])
    answers = generate_answers(model, processor, rows)
    correct, total = {}, {}
    for row, answer in zip(rows, answers):
        hit = normalize_answer(answer) == normalize_answer(reference_answer(row))
        for key in ("overall", row["category"]):
            correct[key] = correct.get(key, 0) + hit
            total[key] = total.get(key, 0) + 1
    return {key: correct[key] / total[key] for key in total}


def format_table(results: dict) -> str:
    categories = ["overall", "speech", "music", "sound"]
    lines = [
        "| model | " + " | ".join(categories) + " | params total | params active | train time |",
        "| --- | " + " | ".join("---" for _ in categories) + " | --- | --- | --- |",
    ]
    for name, result in results.items():
        accuracy = result["accuracy"]
        lines.append(
            f"| {name} | " + " | ".join(f"{accuracy[c]:.3f}" for c in categories)
            + f" | {result['params_total']:,} | {result['params_active']:,} | {result['train_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def run_demo(output: str | Path = "runs/demo", quick: bool = False, seed: int = 0, overwrite: bool = False) -> dict:
    output = Path(output)
    check_output_dir(output, overwrite)
    budget = QUICK if quick else FULL
    manifests = write_corpus(output / "corpus", seed=seed, sizes=budget["sizes"], overwrite=overwrite)
    results = {}
    for adapter_type in ADAPTERS:
        config = load_config(PRESET, adapter_type=adapter_type)
        train_seconds = train_one(adapter_type, config, output, manifests, budget, seed)
        params = count_parameters(config)
        accuracy = evaluate_one(output / adapter_type, manifests["test"])
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
    summary = {"quick": quick, "seed": seed, "budget": budget, "models": results}
    (output / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moe-audio demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", help="directory for the corpus, checkpoints and results")
    parser.add_argument("--quick", action="store_true", help="a smaller corpus and budget (a smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output directory")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = run_demo(args.output, args.quick, args.seed, args.overwrite)
    print(format_table(summary["models"]))
    moe, dense = (summary["models"][name]["accuracy"]["overall"] for name in ADAPTERS)
    verdict = "beats" if moe > dense else "does not beat"
    print(f"\nThe MoE adapter {verdict} the dense adapter here ({moe:.3f} vs {dense:.3f} overall test accuracy).")
    print(f"results: {Path(args.output) / 'results.json'}; total time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
