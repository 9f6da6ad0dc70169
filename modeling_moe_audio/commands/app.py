"""`moe-audio app CHECKPOINT [--host 127.0.0.1] [--port 7860]`: a local web page to try a checkpoint.

Record or upload a clip, ask a question, and watch the greedy answer stream in. For an MoE checkpoint the page also
draws which experts each 80 ms audio token of the clip was routed to, with their weights, under the waveform, and
the clip's expert shares against the model's average: the shares logged in training when the checkpoint kept them
(trainer_state.json or its TensorBoard logs), the average over `--corpus` when given, else an even share. Needs the
`app` extra (`pip install "moe-audio[app]"`: Gradio). By default the page is served to this machine only
(127.0.0.1); there is no share link, no analytics, and nothing is fetched from the internet.
"""

from .common import command_parser, run


def build_parser():
    parser = command_parser("app", __doc__)
    parser.add_argument("checkpoint", help="checkpoint folder or Hub id")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (0.0.0.0 makes the page reachable from other machines)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--corpus", help="JSONL manifest whose clips give the model's average expert shares")
    parser.add_argument("--corpus_limit", type=int, help="use only the first N rows of --corpus")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="longest answer, in tokens")
    parser.add_argument("--max_audio_seconds", type=float, default=30.0, help="longest clip the page accepts")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import importlib.util
    import sys

    if importlib.util.find_spec("gradio") is None:
        sys.exit('error: the web demo needs Gradio, which is not installed: pip install "moe-audio[app]"')
    from ..app.page import build_app, launch_app

    try:
        page = run(build_app, args.checkpoint, corpus=args.corpus, corpus_limit=args.corpus_limit,
                   max_new_tokens=args.max_new_tokens, max_audio_seconds=args.max_audio_seconds)
        run(launch_app, page, host=args.host, port=args.port)
    except KeyboardInterrupt:  # Ctrl+C while the checkpoint loads: stop quietly, as Ctrl+C while serving does
        sys.exit(130)


if __name__ == "__main__":
    main()
