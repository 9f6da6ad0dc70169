"""The `moe-audio` command line."""

import argparse
import json
import sys

from .presets import available_presets, load_config, shipped_tokenizer


def _params(args: argparse.Namespace) -> None:
    from .parameters import count_parameters

    print(json.dumps(count_parameters(load_config(args.config)), indent=2))


def _init(args: argparse.Namespace) -> None:
    if args.llm or args.audio_encoder:
        return _init_from_pretrained(args)
    from .build import init_checkpoint

    if not args.config:
        raise ValueError("--config is required without --llm/--audio-encoder (e.g. --config tiny).")
    tokenizer = args.tokenizer or shipped_tokenizer(args.config)
    config = load_config(args.config)
    init_checkpoint(config, args.output, tokenizer=tokenizer, overwrite=args.overwrite, seed=args.seed)
    with_processor = f"and its processor (tokenizer {tokenizer}) " if tokenizer else ""
    print(f"wrote a freshly initialised {config.adapter_type} model {with_processor}to {args.output}")
    if not tokenizer:
        print("no --tokenizer given and none ships with this config: the checkpoint has no processor")


def _update_code(args: argparse.Namespace) -> None:
    from .code_update import update_checkpoint_code

    print(update_checkpoint_code(args.checkpoint))


# Commands with their own argument parser (HfArgumentParser over TrainingArguments): everything after the
# command name goes to them.
DELEGATED = {
    "train": ("modeling_moe_audio.train", "fine-tune a checkpoint with the Trainer (all TrainingArguments flags)"),
    "demo": ("modeling_moe_audio.demo", "train and compare the tiny MoE and dense models on the built-in corpus"),
    "upcycle": ("modeling_moe_audio.upcycle", "turn a dense-adapter checkpoint into an MoE-adapter one"),
    "analyze": ("modeling_moe_audio.analyze", "expert heatmap and gradient conflicts (paper section 5)"),
    "ablate": ("modeling_moe_audio.ablate", "train the Table 2/3 ablations at tiny scale on the built-in corpus"),
    "push": ("modeling_moe_audio.push", "publish a checkpoint to the Hub in one commit, with code and card"),
    "evaluate": ("modeling_moe_audio.qa_eval", "multiple-choice audio QA (MMAU, VoiceBench) with the modality gap"),
}


def _init_from_pretrained(args: argparse.Namespace) -> None:
    from .build import init_from_pretrained

    if not (args.llm and args.audio_encoder):
        raise ValueError("--llm and --audio-encoder go together: pass both (or neither, for a random model).")
    if args.tokenizer:
        raise ValueError("--tokenizer does not apply with --llm: the LLM's own tokenizer is used.")
    config = load_config(args.config or "paper-moe")
    init_from_pretrained(args.llm, args.audio_encoder, args.output, config, overwrite=args.overwrite, seed=args.seed)
    print(f"wrote {args.output}: {args.llm} + the encoder of {args.audio_encoder} + a fresh {config.adapter_type} adapter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-audio", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    presets = ", ".join(available_presets())
    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=f"{help_text}; see `moe-audio {name} --help`", add_help=False)

    params = commands.add_parser("params", help="print the parameter counts of a configuration as JSON")
    params.add_argument("config", help=f"a config JSON file or a preset name ({presets})")
    params.set_defaults(run=_params)

    init = commands.add_parser("init", help="write a freshly initialised model as a trust_remote_code checkpoint")
    init.add_argument(
        "--config", help=f"a config JSON file or a preset name ({presets}); with --llm it sets only the adapter "
        "(default paper-moe)"
    )
    init.add_argument("--llm", help="a causal LM checkpoint (directory or Hub id), e.g. Qwen/Qwen3-1.7B")
    init.add_argument("--audio-encoder", help="a Whisper checkpoint (directory or Hub id) whose encoder is used")
    init.add_argument("--output", required=True, help="directory to write the checkpoint to")
    init.add_argument("--overwrite", action="store_true", help="write into a non-empty --output directory")
    init.add_argument(
        "--tokenizer", help="tokenizer directory for the processor (default: the one shipped with the preset, if any)"
    )
    init.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    init.set_defaults(run=_init)

    update = commands.add_parser(
        "update-code", help="replace an old checkpoint's code files with the installed ones, checking the logits"
    )
    update.add_argument("checkpoint", help="a checkpoint folder, e.g. one written by moe-audio 0.1.0")
    update.set_defaults(run=_update_code)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
