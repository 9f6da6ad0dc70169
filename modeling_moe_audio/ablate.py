"""`moe-audio ablate`: the paper's Table 2 and Table 3 configurations at tiny scale on the built-in corpus.

    moe-audio ablate [--output runs/ablate] [--quick] [--configs 8-choose-4,8-choose-1] [--seed 0]

Every configuration is the demo's tiny MoE model with one change (expert count, top-k, expert width, or no
balance loss), trained with the same corpus, budget (so the same tokens) and seed, then scored on the test
questions. The run is resumable: a configuration whose `result.json` exists is not trained again, so running
the same command after an interruption finishes the rest. Writes `OUTPUT/ablation.md` and `OUTPUT/ablation.json`.
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from .analysis import expert_activation
from .corpus import write_corpus
from .demo import FULL, PRESET, QUICK, evaluate_one, train_one
from .parameters import count_parameters
from .presets import load_config


# Table 2 (D = the expert width of the preset, 24 at tiny scale) and Table 3's "w/o EBL".
ABLATIONS = {
    "8-choose-4": {},
    "16-choose-4": {"num_experts": 16},
    "8-choose-1": {"num_experts_per_tok": 1},
    "4-choose-2": {"num_experts": 4, "num_experts_per_tok": 2},
    "8-choose-4-width-half": {"expert_width_factor": 0.5},
    "8-choose-4-width-double": {"expert_width_factor": 2.0},
    "8-choose-4-no-balance-loss": {"router_aux_loss_coef": 0.0},
}


def ablation_config(name: str):
    overrides = dict(ABLATIONS[name])
    factor = overrides.pop("expert_width_factor", None)
    config = load_config(PRESET, **overrides)
    if factor:
        config.expert_intermediate_size = int(config.expert_intermediate_size * factor)
    return config


def load_balance(checkpoint: Path, rows: list[dict]) -> dict:
    """Max/mean expert load and the normalised routing entropy over the test questions' audio tokens."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    activation = expert_activation(model, processor, rows)
    counts = torch.tensor([activation["counts"][c] for c in activation["categories"]], dtype=torch.float64).sum(0)
    share = counts / counts.sum()
    entropy = float(-(share * share.clamp_min(1e-12).log()).sum() / torch.log(torch.tensor(float(len(share)))))
    return {"max_mean_load": float(counts.max() / counts.mean()), "load_entropy": entropy}


def run_one(name: str, output: Path, manifests: dict, budget: dict, seed: int) -> dict:
    result_path = output / name / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    config = ablation_config(name)
    seconds = train_one(name, config, output, manifests, budget, seed)
    from .data import load_manifest

    rows = list(load_manifest(manifests["test"])[0])
    counts = count_parameters(config)
    result = {
        "config": name,
        "accuracy": evaluate_one(output / name, manifests["test"]),
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


def run_ablation(output="runs/ablate", quick=False, seed=0, configs=None) -> list[dict]:
    output = Path(output)
    names = configs or list(ABLATIONS)
    unknown = [name for name in names if name not in ABLATIONS]
    if unknown:
        raise ValueError(f"Unknown configurations {unknown}; choose from {list(ABLATIONS)}.")
    budget = QUICK if quick else FULL
    corpus = output / "corpus"
    if (corpus / "test.jsonl").is_file():  # resuming: the same corpus
        manifests = {split: corpus / f"{split}.jsonl" for split in ("train", "validation", "test")}
    else:
        manifests = write_corpus(corpus, seed=seed, sizes=budget["sizes"], overwrite=True)
    results = [run_one(name, output, manifests, budget, seed) for name in names]
    (output / "ablation.json").write_text(json.dumps({"quick": quick, "seed": seed, "results": results}, indent=2))
    (output / "ablation.md").write_text(format_table(results) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moe-audio ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/ablate")
    parser.add_argument("--quick", action="store_true", help="the demo's quick corpus and budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", help=f"comma-separated subset of {', '.join(ABLATIONS)}")
    args = parser.parse_args(argv)
    try:
        results = run_ablation(args.output, args.quick, args.seed, args.configs.split(",") if args.configs else None)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    print(format_table(results))
    print(f"\nwrote {Path(args.output) / 'ablation.md'}")
