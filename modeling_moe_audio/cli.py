"""The `moe-audio` command line."""

import argparse
import json
import sys
from pathlib import Path

from .presets import available_presets, load_config


def _params(args: argparse.Namespace) -> None:
    from .parameters import count_parameters

    print(json.dumps(count_parameters(load_config(args.config)), indent=2))


def _init(args: argparse.Namespace) -> None:
    import torch

    from .modeling_moe_audio import MoEAudioForCausalLM

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise SystemExit(f"error: --output {output} is a file, not a directory; choose another path.")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise SystemExit(
            f"error: {output} is not empty and nothing in it is overwritten unless you ask: "
            "choose an empty directory or pass --overwrite."
        )
    config = load_config(args.config)
    torch.manual_seed(args.seed)
    model = MoEAudioForCausalLM(config)
    model.save_pretrained(output)
    print(f"wrote a freshly initialised {config.adapter_type} model to {output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-audio", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    presets = ", ".join(available_presets())

    params = commands.add_parser("params", help="print the parameter counts of a configuration as JSON")
    params.add_argument("config", help=f"a config JSON file or a preset name ({presets})")
    params.set_defaults(run=_params)

    init = commands.add_parser("init", help="write a freshly initialised model as a trust_remote_code checkpoint")
    init.add_argument("--config", required=True, help=f"a config JSON file or a preset name ({presets})")
    init.add_argument("--output", required=True, help="directory to write the checkpoint to")
    init.add_argument("--overwrite", action="store_true", help="write into a non-empty --output directory")
    init.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    init.set_defaults(run=_init)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
