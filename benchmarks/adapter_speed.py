"""Forward+backward time of the paper's MoE adapter (each expert kernel) against the dense adapter, one process.

    python benchmarks/adapter_speed.py [--tokens 1024] [--repeats 3]

Both adapters have Table 4's shapes (94.4M parameters); the MoE adapter runs 70.8M of them per token, so
0.75 is its FLOP floor relative to dense. Prints the median time of each and its ratio to dense.
"""

import argparse
import statistics
import time

import torch

from modeling_moe_audio.modeling_moe_audio import DenseAdapter, MoEAdapter
from modeling_moe_audio.presets import load_config


def time_fwd_bwd(adapter: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    weights = torch.randn(x.shape[0], 2048)
    times = []
    for _ in range(repeats + 1):  # the first run warms up the allocator and is dropped
        adapter.zero_grad(set_to_none=True)
        start = time.perf_counter()
        output = adapter(x)
        (output * weights).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="audio tokens per step (1024 = 82 s at 12.5 Hz)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.tokens, 2560)
    dense = DenseAdapter(load_config("paper-dense"))
    dense_time = time_fwd_bwd(dense, x, args.repeats)
    print(f"threads {torch.get_num_threads()}, {args.tokens} tokens, fwd+bwd, median of {args.repeats}")
    print(f"{'dense':<16} {dense_time * 1000:8.0f} ms   1.00 x dense")
    config = load_config("paper-moe")
    for implementation in ("grouped_mm", "batched_mm", "eager"):
        if implementation == "batched_mm" and args.tokens > 32:
            print(f"{'moe ' + implementation:<16} skipped: gathers a weight matrix per (token, expert) pair")
            continue
        config._experts_implementation = implementation
        torch.manual_seed(0)
        moe = MoEAdapter(config)
        for parameter in (moe.router.weight, moe.experts.up_proj, moe.experts.down_proj):
            torch.nn.init.normal_(parameter, std=0.02)  # created empty; the model's post_init would do this
        moe_time = time_fwd_bwd(moe, x, args.repeats)
        print(f"{'moe ' + implementation:<16} {moe_time * 1000:8.0f} ms   {moe_time / dense_time:.2f} x dense")


if __name__ == "__main__":
    main()
