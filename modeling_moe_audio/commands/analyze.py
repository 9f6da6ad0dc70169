"""`moe-audio analyze MODEL DATA --output_dir DIR`: the paper's section-5 analyses on a checkpoint and a manifest.

Writes `DIR/analysis.json` and the figures `expert_heatmap.png` (MoE models only), `gradient_cosine.png` (eq. 11)
and `gradient_influence.png` (eq. 12). DATA is a manifest whose rows carry a category (the built-in corpus's
`category`, or `--category_key`); with `--eval_data`, the influence losses are measured on those rows, otherwise
DATA is split in half per category.
"""

import json

from .common import add_no_progress, add_output_dir, command_parser, quiet_if_asked, run


def build_parser():
    parser = command_parser("analyze", __doc__)
    parser.add_argument("model", help="checkpoint folder or Hub id")
    parser.add_argument("data", help="JSONL manifest with a category column")
    add_output_dir(parser, "analysis.json and the figures")
    parser.add_argument("--eval_data", help="manifest for the influence losses (default: half of DATA)")
    parser.add_argument("--category_key", default="category", help="the column that holds each row's category")
    parser.add_argument("--step_size", type=float, default=1e-2, help="lambda of eq. 12's normalised step")
    parser.add_argument("--limit", type=int, help="use only the first N rows of each manifest")
    parser.add_argument("--batch_size", type=int, default=16, help="rows per forward and backward pass")
    add_no_progress(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    quiet_if_asked(args)
    from ..analysis.report import analyze_checkpoint

    result = run(analyze_checkpoint, args.model, args.data, args.output_dir, eval_data=args.eval_data,
                 category_key=args.category_key, step_size=args.step_size, limit=args.limit,
                 batch_size=args.batch_size, overwrite=args.overwrite)
    print(json.dumps({key: value for key, value in result.items() if key != "expert_activation"}, indent=2)[:4000])
    print(f"wrote {args.output_dir}/analysis.json and the figures")


if __name__ == "__main__":
    main()
