"""`moe-audio push FOLDER REPO_ID`: publish a checkpoint (weights, config, code, processor, card) in one commit."""

from .common import command_parser, run


def build_parser():
    parser = command_parser("push", __doc__)
    parser.add_argument("folder", help="a checkpoint folder (from init, train, upcycle or demo)")
    parser.add_argument("repo_id", help="the Hub model repository, e.g. you/tiny-moe")
    parser.add_argument("--token", help="a Hub token (default: the one `hf auth login` saved)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="an existing branch to commit to (default main)")
    parser.add_argument("--dry_run", action="store_true", help="list what would be uploaded and left out; upload nothing")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from ..hub.publish import checkpoint_files, publish

    uploaded, left_out = run(checkpoint_files, args.folder)
    print(f"uploading {len(uploaded)} files to {args.repo_id}:", *uploaded, sep="\n  ")
    if left_out:
        print(f"leaving out {len(left_out)} files (training leftovers, logs, backups):", *left_out, sep="\n  ")
    if args.dry_run:
        return
    commit = run(publish, args.folder, args.repo_id, args.token, args.private, args.revision)
    print(f"pushed {args.folder} to {args.repo_id}: {commit}")


if __name__ == "__main__":
    main()
