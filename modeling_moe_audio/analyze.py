"""`moe-audio analyze MODEL DATA --out DIR`: the paper's section-5 analyses on a checkpoint and a manifest.

Writes `DIR/analysis.json` and the figures `expert_heatmap.png` (MoE models only), `gradient_cosine.png` (eq. 11)
and `gradient_influence.png` (eq. 12). DATA is a manifest whose rows carry a category (the built-in corpus's
`category`, or `--category-key`); with `--eval-data`, the influence losses are measured on those rows, otherwise
DATA is split in half per category.
"""

import argparse
import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoProcessor, TrainerCallback

from .analysis import category_gradients, gradient_cosine, run_analysis
from .build import check_output_dir
from .data import load_manifest


def load_rows(path, limit: int | None = None) -> list[dict]:
    rows = list(load_manifest(path)[0])
    return rows[:limit] if limit else rows


class GradientConflictCallback(TrainerCallback):
    """Logs the gradient cosine similarity between categories (eq. 11) every `every_steps` optimizer steps.

    The gradients are those of each category's mean next-token loss on `rows` (a fixed probe set) with respect to
    the adapter. Metrics `grad_cos/<a>-<b>` go to the logs, TensorBoard and `log_history`; put the callback first
    (`install`) so the reporting callbacks see them.
    """

    def __init__(self, processor, rows: list[dict], every_steps: int = 50, category_key: str = "category"):
        self.processor, self.rows, self.every_steps, self.category_key = processor, rows, every_steps, category_key

    @classmethod
    def install(cls, trainer, **kwargs) -> "GradientConflictCallback":
        callback = cls(**kwargs)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or "train_runtime" in logs or state.global_step == 0 or state.global_step % self.every_steps:
            return  # the end-of-training summary is not a new step
        categories, matrix = gradient_cosine(
            category_gradients(model, self.processor, self.rows, category_key=self.category_key)
        )
        metrics = {
            f"grad_cos/{a}-{b}": float(matrix[i, j])
            for i, a in enumerate(categories) for j, b in enumerate(categories) if i < j
        }
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moe-audio analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="checkpoint directory or Hub id")
    parser.add_argument("data", help="JSONL manifest with a category column")
    parser.add_argument("--out", required=True, help="directory for analysis.json and the figures")
    parser.add_argument("--eval-data", help="manifest for the influence losses (default: half of DATA)")
    parser.add_argument("--category-key", default="category")
    parser.add_argument("--step-size", type=float, default=1e-2, help="lambda of eq. 12's normalised step")
    parser.add_argument("--limit", type=int, help="use only the first N rows of each manifest")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out directory")
    args = parser.parse_args(argv)
    try:
        check_output_dir(Path(args.out), args.overwrite)
    except FileExistsError as error:
        raise SystemExit(f"error: {error}")

    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    rows = load_rows(args.data, args.limit)
    missing = [i for i, row in enumerate(rows) if row.get(args.category_key) is None]
    if missing:
        raise SystemExit(f"error: rows {missing[:5]} of {args.data} have no {args.category_key!r}; the analyses "
                         "compare categories, so every row needs one (or pass --category-key).")
    eval_rows = load_rows(args.eval_data, args.limit) if args.eval_data else None
    result = run_analysis(model, processor, rows, args.out, eval_rows=eval_rows, step_size=args.step_size,
                          category_key=args.category_key, batch_size=args.batch_size)
    print(json.dumps({key: value for key, value in result.items() if key != "expert_activation"}, indent=2)[:4000])
    print(f"wrote {args.out}/analysis.json and the figures")
