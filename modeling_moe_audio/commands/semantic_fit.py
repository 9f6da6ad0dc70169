"""`moe-audio semantic-fit CHECKPOINT DATA --codebook_size K --layer L --output_dir DIR`: give a checkpoint a
second (semantic) stream whose ids it computes itself.

    moe-audio semantic-fit runs/tiny-moe runs/corpus/train.jsonl --codebook_size 64 --layer 2 --output_dir runs/tiny-sem

Runs the checkpoint's Whisper encoder over DATA's audio (a manifest or a dataset, as `moe-audio train` takes it),
stacks the output of encoder layer L into 12.5 Hz vectors as the model stacks its features, fits K k-means clusters
(scikit-learn MiniBatchKMeans) and writes a new checkpoint (CHECKPOINT is never changed) with semantic_vocab_size K
and the cluster centres as its codebook: rows without semantic_ids get the nearest centre of each audio token. Its
semantic embeddings start at zero, so it answers as CHECKPOINT does until trained. This is a stand-in for a trained
speech tokenizer (GLM-4-Voice's), not one: pip install 'moe-audio[semantic]' for scikit-learn.
"""

from .common import add_no_progress, add_output_dir, add_seed, command_parser, quiet_if_asked, run


def build_parser():
    parser = command_parser("semantic-fit", __doc__)
    parser.add_argument("checkpoint", help="the checkpoint folder (or Hub id) whose encoder is used; never changed")
    parser.add_argument("data", help="audio to fit on: a JSONL manifest, a dataset saved with save_to_disk, a parquet "
                        "file or folder, or a Hub dataset id")
    parser.add_argument("--codebook_size", type=int, required=True,
                        help="K: codebook entries (k-means clusters), the new semantic_vocab_size")
    parser.add_argument("--layer", type=int, required=True,
                        help="L: the Whisper encoder layer whose output is clustered (0: its input, the last: its output)")
    add_output_dir(parser, "the new checkpoint")
    parser.add_argument("--limit", type=int, help="use only the first N rows of DATA")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per encoder pass")
    parser.add_argument("--split", help="split of DATA (dataset dicts, folders, Hub ids); none given: the only one, "
                        "else 'train'")
    add_seed(parser, "k-means")
    add_no_progress(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import importlib.util
    import sys

    if importlib.util.find_spec("sklearn") is None:
        sys.exit("error: semantic-fit needs scikit-learn, which is not installed: pip install 'moe-audio[semantic]'")
    quiet_if_asked(args)
    from ..checkpoints.semantic_codebook import semantic_fit

    fitted = run(semantic_fit, args.checkpoint, args.data, args.codebook_size, args.layer, args.output_dir,
                 limit=args.limit, batch_size=args.batch_size, seed=args.seed, overwrite=args.overwrite,
                 split=args.split)
    print(f"wrote {args.output_dir}: a {args.codebook_size}-entry codebook on encoder layer {args.layer}, fitted on "
          f"{fitted['audio_tokens']} audio tokens of {fitted['rows']} rows")


if __name__ == "__main__":
    main()
