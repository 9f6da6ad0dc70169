"""`moe-audio ablate`: the paper's Table 2 and Table 3 configurations at tiny scale on the built-in corpus.

    moe-audio ablate [--output_dir runs/ablate] [--quick] [--configs 8-choose-4,8-choose-1] [--seeds 0 1 2]

Every configuration is the demo's tiny MoE model with one change (expert count, top-k, expert width, or no
balance loss), trained with the same corpus, budget and seeds, then scored on the test questions and compared with
the paper's 8-choose-4 (always run): with several seeds, the mean difference and its 95% confidence interval. Resumable: run
the same command again after an interruption and it finishes the rest. Writes `OUTPUT/ablation.md` and
`OUTPUT/ablation.json`.
"""

from ..presets import ABLATIONS
from .common import add_no_progress, command_parser, quiet_if_asked, run


def build_parser():
    parser = command_parser("ablate", __doc__)
    parser.add_argument("--output_dir", default="runs/ablate",
                        help="folder to write the corpus, checkpoints and tables to; an unfinished run there is resumed")
    parser.add_argument("--quick", action="store_true", help="the demo's quick corpus and budget")
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0],
                        help="seeds of the initialisation and the data order (the first also makes the corpus)")
    add_no_progress(parser)
    parser.add_argument("--configs", help=f"comma-separated subset of {', '.join(ABLATIONS)} (default: all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an --output_dir that holds other files or another run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    quiet_if_asked(args)
    from ..experiments.ablation import format_table, run_ablation

    summary = run(run_ablation, args.output_dir, args.quick, args.seeds,
                  args.configs.split(",") if args.configs else None, args.overwrite)
    print(format_table(summary))
    print(f"\nwrote {args.output_dir}/ablation.md")


if __name__ == "__main__":
    main()
