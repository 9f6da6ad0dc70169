"""`moe-audio compare`: configurations trained over several seeds on the same data and budget, with confidence intervals.

    moe-audio compare [--configs moe,dense] [--seeds 0 1 2 3 4] [--baseline dense] [--quick] [--output_dir runs/compare]

Each (configuration, seed) run initialises the tiny model with that seed and trains it with that seed's data order on
the one built-in corpus of the comparison (`--corpus_seed`), with the demo's budget; runs with the same seed are
paired. Per category: the mean, standard deviation and range over the seeds, and the mean difference from the
baseline with its 95% confidence interval and a paired t-test. A winner is named only when the interval excludes
zero. Every run also measures the paper's other claims (`experiments.claims`): the gradient cosines between
categories during training and at its end, the gradient influence, the routing specialisation (MoE) and, on the
conflict corpus, the modality gap against the word questions' text form; the same table gives their spread and
paired differences. Resumable: run the same command again after an interruption and it finishes the rest. Writes
`OUTPUT/comparison.md`, `OUTPUT/comparison.json`, `OUTPUT/comparison.png` (accuracy) and
`OUTPUT/comparison-*.png` (Figures 3-5 as means over the seeds, and the cosines during training); each run is in
`OUTPUT/<configuration>/seed-<seed>`, its section-5 analyses in `.../analysis`.
"""

from .common import add_no_progress, command_parser, quiet_if_asked, run


def build_parser():
    parser = command_parser("compare", __doc__)
    parser.add_argument("--output_dir", default="runs/compare",
                        help="folder to write the corpus, checkpoints and tables to; an unfinished run there is resumed")
    parser.add_argument("--configs", default="moe,dense",
                        help="comma-separated configurations: moe, dense, or ablation rows such as 8-choose-1")
    parser.add_argument("--baseline", default="dense", help="the configuration the others are compared with")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds of the initialisation and the data order, one run per configuration and seed")
    parser.add_argument("--corpus", choices=("default", "conflict"), default="default",
                        help="the built-in corpus: default (speech, music, sound, each asked its kind and attributes) or "
                             "conflict (spoken words asked their content and their pitch, loudness and background)")
    parser.add_argument("--corpus_seed", type=int, default=0, help="seed of the built-in corpus, the same for every run")
    parser.add_argument("--quick", action="store_true", help="the demo's quick corpus and budget (a smoke test)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an --output_dir that holds other files or another run")
    add_no_progress(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    quiet_if_asked(args)
    from ..experiments.comparison import compare

    summary = run(compare, args.output_dir, args.configs.split(","), args.seeds, args.baseline, args.corpus_seed,
                  args.quick, args.overwrite, args.corpus)
    print(summary["tables"])
    print(f"\nwrote {args.output_dir}/comparison.md, comparison.json and comparison.png")


if __name__ == "__main__":
    main()
