"""`moe-audio init --output_dir DIR`: write a freshly initialised model as a `trust_remote_code` checkpoint.

    moe-audio init --config tiny --output_dir runs/tiny-moe
    moe-audio init --llm Qwen/Qwen3-1.7B --audio_encoder openai/whisper-large-v3 --config paper-moe --output_dir runs/qwen3-moe

Without --llm, every weight is random (the config's shapes); with --llm and --audio_encoder, the language model and
the Whisper encoder are loaded from those checkpoints and only the frontend and the adapter start fresh.
"""

from ..presets import available_presets
from .common import add_no_progress, add_output_dir, add_seed, command_parser, quiet_if_asked, run


def build_parser():
    presets = ", ".join(available_presets())
    parser = command_parser("init", __doc__)
    parser.add_argument("--config", help=f"a config JSON file or a preset name ({presets}); with --llm it sets only "
                        "the adapter (default there: paper-moe)")
    parser.add_argument("--llm", help="a causal LM checkpoint (folder or Hub id), e.g. Qwen/Qwen3-1.7B")
    parser.add_argument("--audio_encoder", help="a Whisper checkpoint (folder or Hub id) whose encoder is used")
    add_output_dir(parser, "the checkpoint")
    parser.add_argument("--tokenizer", help="tokenizer folder for the processor (default: the preset's own, if any)")
    parser.add_argument("--semantic_vocab_size", type=int,
                        help="add the second (semantic) stream: the codebook size of the semantic tokenizer whose ids "
                        "the data carries (e.g. 16384 for GLM-4-Voice's); default: as the config says (0: none)")
    parser.add_argument("--window_seconds", type=int,
                        help="encode audio in Whisper windows this many seconds long instead of 30 s: a clip is padded "
                        "to a full window, so short clips cost far less (e.g. 4 or 6 for clips of a few seconds; "
                        "longer clips span several windows); an input a pretrained Whisper never saw in training: "
                        "see the README's 'Short clips' for what it saves and costs")
    add_seed(parser, "the random initialisation")
    add_no_progress(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    quiet_if_asked(args)
    from ..checkpoints.build import create_checkpoint

    print(run(create_checkpoint, args.output_dir, config=args.config, llm=args.llm, audio_encoder=args.audio_encoder,
              tokenizer=args.tokenizer, overwrite=args.overwrite, seed=args.seed,
              semantic_vocab_size=args.semantic_vocab_size, window_seconds=args.window_seconds))


if __name__ == "__main__":
    main()
