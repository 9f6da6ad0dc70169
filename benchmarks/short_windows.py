"""Short Whisper windows on the demo corpus: accuracy and training time of the same MoE model with 30 s and 4 s windows.

    python benchmarks/short_windows.py --output runs/short-windows            # about 35 minutes on 2 cores
    python benchmarks/short_windows.py --output runs/short-windows --windows 30 4 2

The demo's corpus (seed 0, the full budget: 2400 training examples, 12 epochs) and its tiny MoE model, initialised
with the same seed and trained the same way for each window length; only `audio_config.max_source_positions` differs
(`set_audio_window`, what `moe-audio init --window_seconds` does). The corpus's clips last 1-3 s, so every clip fits
in one window of any length here. The 4 s run is the demo's MoE run (preset `tiny-4s`). Prints and writes
`OUTPUT/results.json`: test accuracy per window (overall and per category), training seconds, and each shorter
window's paired difference against 30 s over the same test questions, with its 95% interval.
"""

import argparse
import json
import sys
from pathlib import Path

from modeling_moe_audio.checkpoints.build import set_audio_window
from modeling_moe_audio.data.corpus import write_corpus
from modeling_moe_audio.experiments.statistics import paired_difference, verdict
from modeling_moe_audio.experiments.tiny import FULL, QUICK, evaluate_one, train_one
from modeling_moe_audio.output_dirs import finish_run, start_run
from modeling_moe_audio.presets import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="an empty folder (or a run of this script)")
    parser.add_argument("--windows", type=int, nargs="+", default=[30, 4], help="window lengths in seconds; the "
                        "first is the baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the demo's quick budget (a smoke test, not a result)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    start_run(args.output, "short-windows", {"windows": args.windows, "seed": args.seed, "quick": args.quick},
              args.overwrite)
    budget = QUICK if args.quick else FULL
    manifests = write_corpus(args.output / "corpus", seed=args.seed, sizes=budget["sizes"], overwrite=True)
    results, hits = {}, {}
    for seconds in args.windows:
        config = load_config("tiny")  # 30 s windows
        if seconds != 30:
            set_audio_window(config, seconds)
        name = f"moe-{seconds}s"
        train_seconds = train_one(name, config, args.output, manifests, budget, args.seed)
        accuracy, hits[seconds] = evaluate_one(args.output / name, manifests["test"])
        results[name] = {"window_seconds": seconds, "accuracy": accuracy, "train_seconds": round(train_seconds, 1)}
        print(json.dumps(results[name]), flush=True)
    baseline = args.windows[0]
    for seconds in args.windows[1:]:
        difference = paired_difference([float(h) for h in hits[seconds]], [float(h) for h in hits[baseline]])
        results[f"moe-{seconds}s"]["minus_baseline"] = difference
        results[f"moe-{seconds}s"]["verdict"] = verdict(f"{seconds} s windows", f"{baseline} s windows", difference,
                                                        "overall test accuracy", "questions")
        print(results[f"moe-{seconds}s"]["verdict"], flush=True)
    summary = {"command": " ".join(["python", "benchmarks/short_windows.py", *sys.argv[1:]]), "budget": budget,
               "results": results}
    (args.output / "results.json").write_text(json.dumps(summary, indent=2))
    finish_run(args.output)


if __name__ == "__main__":
    main()
