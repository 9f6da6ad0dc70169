"""`moe-audio params CONFIG`: the parameter counts of a configuration as JSON (total and active per audio token,
of the adapter and of the whole model), computed without allocating a weight."""

import json

from ..presets import available_presets
from .common import command_parser, run


def build_parser():
    parser = command_parser("params", __doc__)
    parser.add_argument("config", help=f"a config JSON file or a preset name ({', '.join(available_presets())})")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from ..checkpoints.parameters import count_parameters
    from ..presets import load_config

    print(json.dumps(count_parameters(run(load_config, args.config)), indent=2))


if __name__ == "__main__":
    main()
