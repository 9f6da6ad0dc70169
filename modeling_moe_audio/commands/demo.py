"""`moe-audio demo`: the whole loop on the built-in corpus, for the tiny MoE model and the tiny dense baseline.

    moe-audio demo [--output_dir runs/demo] [--quick] [--seed 0] [--overwrite]

Writes the corpus, initialises both models from the `tiny-4s` preset with the same seed, trains each on the same
data and budget, answers the test questions by greedy generation, and writes `OUTPUT/results.json`, both
checkpoints (`OUTPUT/moe`, `OUTPUT/dense`, loadable with `trust_remote_code=True`) and TensorBoard logs.
"""

import time

from .common import add_no_progress, add_output_dir, add_seed, command_parser, quiet_if_asked, run


def build_parser():
    parser = command_parser("demo", __doc__)
    add_output_dir(parser, "the corpus, checkpoints and results", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="a smaller corpus and budget (a smoke test)")
    add_seed(parser, "the corpus, the initialisation and the data order")
    add_no_progress(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    quiet_if_asked(args)
    from ..experiments.demo import ADAPTERS, format_table, run_demo

    start = time.perf_counter()
    summary = run(run_demo, args.output_dir, args.quick, args.seed, args.overwrite)
    print(format_table(summary["models"]))
    moe, dense = (summary["models"][name]["accuracy"]["overall"] for name in ADAPTERS)
    print(f"\nOverall test accuracy: MoE {moe:.3f}, dense {dense:.3f}. {summary['verdict']}")
    print(f"results: {args.output_dir}/results.json; total time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
