"""`moe-audio update-code CHECKPOINT`: replace an old checkpoint's code files with the installed ones, keeping the
old files in a `code-backup-<time>` folder and checking that the logits do not change."""

from .common import command_parser, run


def build_parser():
    parser = command_parser("update-code", __doc__)
    parser.add_argument("checkpoint", help="a checkpoint folder, e.g. one written by moe-audio 0.1.0")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from ..checkpoints.code_update import update_checkpoint_code

    print(run(update_checkpoint_code, args.checkpoint))


if __name__ == "__main__":
    main()
