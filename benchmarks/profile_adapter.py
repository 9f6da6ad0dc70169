"""Where the adapters' time goes: torch.profiler over forward+backward of the dense and the MoE adapter (default
kernel), paper shapes, the operators by self CPU time, and the matmuls' share against everything else.

    python benchmarks/profile_adapter.py --tokens 256 --threads 2
    python benchmarks/profile_adapter.py --tokens 1024 --threads 1 --dtype float32 --top 15

Each adapter runs a warm-up call and then `--calls` profiled calls, one after the other (dense, MoE, dense, ...).
"Matmul" operators are mm, addmm, bmm, matmul's and linear's kernels and the grouped matmul; the MoE over dense
ratio of their self time is what the FLOP count predicts (0.75 at the paper's shapes), and the rest is dispatch.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapter_speed import build  # noqa: E402  (the same adapters)

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::_grouped_mm", "aten::grouped_mm", "aten::baddbmm"}


def profile(adapter, features, output_grad, calls: int):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    def call():
        adapter.zero_grad(set_to_none=True)
        adapter(features.detach().requires_grad_(True)).backward(output_grad)

    call()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / calls / 1000  # ms per call
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / calls / 1000
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    return total, matmul, [(e.key, e.self_cpu_time_total / calls / 1000, e.count // calls) for e in top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="operators listed per adapter")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    dense, moe, features, output_grad = build(args.dtype, args.tokens)
    moe.experts.config._experts_implementation = "grouped_mm"
    results = {name: profile(adapter, features, output_grad, args.calls) for name, adapter in
               (("dense", dense), ("moe", moe))}
    print(f"{args.tokens} tokens, {args.dtype}, {args.threads} thread(s), forward+backward, ms per call (self CPU)")
    for name, (total, matmul, top) in results.items():
        print(f"\n{name}: total {total:.1f}, matmuls {matmul:.1f}, everything else {total - matmul:.1f}")
        for key, ms, count in top[: args.top]:
            print(f"  {key:<40} {ms:9.1f} ms  x{count}")
    (dense_total, dense_matmul, _), (moe_total, moe_matmul, _) = results["dense"], results["moe"]
    print(f"\nMoE / dense: total {moe_total / dense_total:.3f}, matmuls {moe_matmul / dense_matmul:.3f}, the rest "
          f"{(moe_total - moe_matmul) / dense_total:.3f} of dense's total (dense's own rest: "
          f"{(dense_total - dense_matmul) / dense_total:.3f})")


if __name__ == "__main__":
    main()
