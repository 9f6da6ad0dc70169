"""`moe-audio evaluate MODEL DATA [--output_dir DIR]`: multiple-choice audio QA on a local benchmark file or dataset.

MMAU (JSON or JSONL) or VoiceBench MMSU / OpenBookQA (JSONL), or the same rows as a dataset (saved with
`save_to_disk`, parquet, a Hub dataset id; `--split`), asked by greedy generation and scored with the
evaluate library; writes `DIR/results.json` and `DIR/results.md`. `--text_only_gap` also asks the text form of the
audio, without audio, and reports the modality gap. `--answer_parsing mmau|lmms-eval` scores the answers by a
published evaluator's rules instead of ours. The file formats: `modeling_moe_audio.evaluation.benchmarks`.
"""

from pathlib import Path

from ..evaluation.answer_parsing import ANSWER_PARSING_MODES
from ..evaluation.prompts import PROMPT_STYLES
from .common import add_seed, command_parser, quiet_if_asked, run


def build_parser():
    parser = command_parser("evaluate", __doc__)
    parser.add_argument("model", help="checkpoint folder or Hub id (loaded with trust_remote_code=True)")
    parser.add_argument("data", help="benchmark: an MMAU JSON/JSONL or VoiceBench JSONL file, or the same rows as a "
                        "dataset (save_to_disk folder, parquet file or folder, Hub dataset id)")
    parser.add_argument("--split", help="split of a dataset DATA; none given: the only one, else 'test'")
    parser.add_argument("--format", choices=("mmau", "voicebench", "auto"), default="auto",
                        help="schema of DATA; auto: from its first row")
    parser.add_argument("--output_dir",
                        help="folder for results.json and results.md; none given: eval/<DATA file stem>")
    parser.add_argument("--batch_size", type=int, default=8, help="questions per generate call")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--max_new_tokens", type=int, default=16, help="tokens generated per answer at most")
    parser.add_argument("--prompt_style", choices=PROMPT_STYLES, default="lettered",
                        help="lettered: the question, lettered options and 'answer with the letter'; "
                        "question: the question alone, for models trained to answer it with the option's words")
    parser.add_argument("--answer_parsing", choices=ANSWER_PARSING_MODES, default="strict",
                        help="how answers map to options: strict (ours: no guess, ambiguous answers unanswered), "
                        "mmau (MMAU's reference evaluation.py: comparable with MMAU's leaderboard), lmms-eval "
                        "(lmms-eval's mmau / mmsu tasks: a random guess when no letter is found, the last of "
                        "several; comparable with lmms-eval-reported figures)")
    add_seed(parser, "the random guesses of --answer_parsing lmms-eval")
    parser.add_argument("--text_only_gap", action="store_true",
                        help="also ask the text form of the audio, without audio, and report the modality gap")
    parser.add_argument("--device", help="torch device; none given: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="model dtype; auto: the checkpoint's")
    parser.add_argument("--no_progress", action="store_true",
                        help="no progress bars on stderr (as TQDM_DISABLE=1 does)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output_dir")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    quiet_if_asked(args)
    from ..evaluation.reports import render_markdown

    from ..evaluation.scoring import run_evaluation  # torch, transformers: after --help

    output_dir = Path(args.output_dir) if args.output_dir else Path("eval") / Path(args.data).stem
    results = run(run_evaluation, args.model, args.data, output_dir, format=args.format, limit=args.limit,
                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, prompt_style=args.prompt_style,
                  answer_parsing=args.answer_parsing, seed=args.seed, text_only_gap=args.text_only_gap,
                  device=args.device, dtype=args.dtype, progress=not args.no_progress, overwrite=args.overwrite,
                  split=args.split)
    print(render_markdown(results))
    print(f"wrote {output_dir / 'results.json'} and {output_dir / 'results.md'}")


if __name__ == "__main__":
    main()
