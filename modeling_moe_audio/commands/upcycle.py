"""`moe-audio upcycle DENSE_CHECKPOINT --output_dir DIR`: turn a dense-adapter checkpoint into an MoE-adapter one.

`copy` (the default, `--shared 0`): every routed expert starts as a full copy of the dense MLP, so the MoE adapter
computes exactly the dense one's output at initialisation. `--shared N`: the dense MLP's hidden units are split
into a shared MLP of N units and the experts. See `modeling_moe_audio.checkpoints.upcycle`.
"""

from .common import add_output_dir, add_seed, command_parser, run


def build_parser():
    parser = command_parser("upcycle", __doc__)
    parser.add_argument("dense_checkpoint", help="a checkpoint folder whose adapter is dense")
    add_output_dir(parser, "the MoE checkpoint")
    parser.add_argument("--num_experts", type=int, default=8, help="routed experts of the MoE adapter")
    parser.add_argument("--top_k", type=int, default=4, help="experts each audio token is routed to")
    parser.add_argument("--shared", type=int, default=0,
                        help="hidden units of the dense MLP that go to the shared MLP (0: copy the MLP into every expert)")
    add_seed(parser, "the router's random initialisation")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from ..checkpoints.upcycle import upcycle

    run(upcycle, args.dense_checkpoint, args.output_dir, args.num_experts, args.top_k, args.shared, args.seed,
        args.overwrite)
    print(f"wrote the upcycled MoE model to {args.output_dir}")


if __name__ == "__main__":
    main()
