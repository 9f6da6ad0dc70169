"""The MoE adapter against the dense adapter at the paper's shapes: time per call, interleaved rounds, peak memory.

    python benchmarks/adapter_speed.py                       # the full table (tens of minutes on 2 CPU cores)
    python benchmarks/adapter_speed.py --tokens 1024 --dtypes bfloat16 --threads 1 --rounds 7 --no-memory

Both adapters have Table 4's shapes (94.4M parameters); the MoE adapter runs 70.8M of them per token, so 0.75 x
dense is its FLOP floor. Every variant uses the same weights (one MoEAdapter whose expert kernel is switched
between calls) and runs once per round, round after round (dense, kernel 1, kernel 2, ..., dense, ...), so a
slow spell of the machine hits every variant of a round alike. A ratio is computed per round (variant / dense of
the same round) and reported as the median and the min-max over the rounds. Time is the process's CPU time of
the call (all threads; `time.process_time`), which other programs on the machine disturb less than wall time;
wall time is kept in the JSON too. Each thread count runs in a process of its own (torch fixes its thread
pool at start), and each peak-memory figure in a fresh process: the growth of the process's peak resident size
during one call, beyond the weights and inputs already allocated.

Variants: `dense`, each expert kernel of the model (`grouped_mm`, the default, which on the CPU runs one expert at a
time; `eager`), `all_experts_at_once`, the default kernel's schedule for accelerators and torch.compile (grouped
matmuls over all pairs) run here on the CPU, `reference_loop`, a plain per-expert loop with `index_add_` written
here as the yardstick a kernel must beat, and `grouped_mm_0.4.0`, the default kernel of 0.4.0 (before
`SortedExpertsFunction`), for the before/after of the same run.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


TOKENS = (256, 1024, 3000)
DTYPES = ("float32", "bfloat16")
THREADS = (1, 2)
PASSES = ("forward", "forward+backward")
KERNELS = ("grouped_mm", "all_experts_at_once", "eager", "reference_loop", "grouped_mm_0.4.0")


def reference_loop(experts, hidden_states, top_k_index, top_k_weights):
    """One matmul pair per expert on the tokens routed to it, weighted, added into place with `index_add_`."""
    import torch

    output = hidden_states.new_zeros(hidden_states.shape[0], experts.down_proj.shape[1])
    for expert in range(experts.num_experts):
        token_index, slot = torch.where(top_k_index == expert)
        if token_index.numel() == 0:
            continue
        hidden = experts.act_fn(torch.nn.functional.linear(hidden_states[token_index], experts.up_proj[expert]))
        expert_output = torch.nn.functional.linear(hidden, experts.down_proj[expert])
        output.index_add_(0, token_index, expert_output * top_k_weights[token_index, slot, None].to(output.dtype))
    return output


def all_experts_at_once(experts, hidden_states, top_k_index, top_k_weights):
    """The default kernel with the schedule it takes on accelerators and under torch.compile: grouped matmuls over
    all (token, expert) pairs at once."""
    from modeling_moe_audio.modeling_moe_audio import SortedExpertsFunction

    output, _ = SortedExpertsFunction.apply(hidden_states, top_k_index, top_k_weights, experts.up_proj,
                                            experts.down_proj, False)
    return output


def grouped_mm_0_4_0(experts, hidden_states, top_k_index, top_k_weights):
    """The default kernel of moe-audio 0.4.0, kept here to measure what replaced it: repeat each token k times and
    permute the rows by expert, two grouped matmuls, weight the D-wide outputs, permute back and sum, all through
    autograd."""
    import torch

    from modeling_moe_audio.modeling_moe_audio import _grouped_mm

    num_tokens, top_k = top_k_index.shape
    expert_of_pair, order = torch.sort(top_k_index.reshape(-1), stable=True)
    offsets = torch.bincount(expert_of_pair, minlength=experts.num_experts).cumsum(0).to(torch.int32)
    pair_inputs = hidden_states.repeat_interleave(top_k, dim=0)[order]
    hidden = experts.act_fn(_grouped_mm(pair_inputs, experts.up_proj.transpose(1, 2), offsets))
    pair_outputs = _grouped_mm(hidden, experts.down_proj.transpose(1, 2), offsets)
    pair_outputs = pair_outputs * top_k_weights.reshape(-1)[order].unsqueeze(-1).to(pair_outputs.dtype)
    inverse_order = torch.empty_like(order)
    inverse_order[order] = torch.arange(order.numel(), device=order.device)
    pair_outputs = pair_outputs[inverse_order]
    return pair_outputs.view(num_tokens, top_k, -1).sum(dim=1).to(hidden_states.dtype)


def build(dtype_name: str, tokens: int, seed: int = 0):
    """The dense and MoE adapters at the paper's shapes, an input and an output gradient, all in `dtype_name`."""
    import torch

    from modeling_moe_audio.modeling_moe_audio import DenseAdapter, MoEAdapter, RectangularExpertsInterface
    from modeling_moe_audio.presets import load_config

    RectangularExpertsInterface.register("reference_loop", reference_loop)
    RectangularExpertsInterface.register("all_experts_at_once", all_experts_at_once)
    RectangularExpertsInterface.register("grouped_mm_0.4.0", grouped_mm_0_4_0)
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    dense = DenseAdapter(load_config("paper-dense")).to(dtype)
    moe = MoEAdapter(load_config("paper-moe"))
    for parameter in (moe.router.weight, moe.experts.up_proj, moe.experts.down_proj):
        torch.nn.init.normal_(parameter, std=0.02)  # created empty; the model's post_init would do this
    moe = moe.to(dtype)
    features = torch.randn(tokens, dense.input_norm.normalized_shape[0], dtype=dtype)
    output_grad = torch.randn(tokens, dense.output_norm.normalized_shape[0], dtype=dtype)
    return dense, moe, features, output_grad


def make_call(dense, moe, features, output_grad, variant: str, backward: bool):
    """A function running one forward (and backward) pass of `variant`."""
    import torch

    adapter = dense if variant == "dense" else moe

    def call():
        if variant != "dense":
            moe.experts.config._experts_implementation = variant
        adapter.zero_grad(set_to_none=True)
        inputs = features.detach().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            output = adapter(inputs)
            if backward:
                output.backward(output_grad)

    return call


def timed(call) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    return time.process_time() - cpu, time.perf_counter() - wall


def run_timing_worker(args) -> None:
    """One thread count: every (dtype, tokens, pass) cell, its variants interleaved over the rounds; JSON lines out."""
    import torch

    torch.set_num_threads(args.threads[0])
    variants = ("dense", *args.kernels)
    for dtype_name in args.dtypes:
        for tokens in args.tokens:
            dense, moe, features, output_grad = build(dtype_name, tokens)
            for pass_name in args.passes:
                calls = {v: make_call(dense, moe, features, output_grad, v, pass_name != "forward") for v in variants}
                for call in calls.values():  # warm-up: first-touch of buffers, lazy initialisation
                    call()
                times = {v: [] for v in variants}
                for _ in range(args.rounds):
                    for variant, call in calls.items():
                        times[variant].append(timed(call))
                cell = {"threads": args.threads[0], "dtype": dtype_name, "tokens": tokens, "pass": pass_name}
                print(json.dumps({**cell, "times": times}), flush=True)


def run_memory_worker(args) -> None:
    """Peak resident growth of one call of one variant, in this fresh process; one JSON line out."""
    import torch

    torch.set_num_threads(args.threads[0])
    dense, moe, features, output_grad = build(args.dtypes[0], args.tokens[0])
    call = make_call(dense, moe, features, output_grad, args.kernels[0], args.passes[0] != "forward")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    call()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"peak_growth_mib": grown_kib / 1024}), flush=True)


def worker(*options: str) -> list[dict]:
    command = [sys.executable, __file__, *options]
    environment = {**os.environ, "OMP_NUM_THREADS": options[options.index("--threads") + 1]}
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        sys.exit(f"worker {' '.join(options)} failed:\n{result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def machine() -> dict:
    import torch
    import transformers

    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "load_average_at_start": os.getloadavg()[0]}


def summarise(cell: dict) -> dict:
    """Per-round ratios of each variant to the dense adapter of the same round: median and min-max."""
    dense_cpu = [cpu for cpu, _ in cell["times"]["dense"]]
    dense_wall = [wall for _, wall in cell["times"]["dense"]]
    summary = {"dense_ms": 1000 * statistics.median(dense_cpu)}
    for variant, times in cell["times"].items():
        if variant == "dense":
            continue
        cpu_ratios = [cpu / base for (cpu, _), base in zip(times, dense_cpu)]
        wall_ratios = [wall / base for (_, wall), base in zip(times, dense_wall)]
        summary[variant] = {
            "ms": 1000 * statistics.median(cpu for cpu, _ in times),
            "ratio": statistics.median(cpu_ratios),
            "ratio_min": min(cpu_ratios),
            "ratio_max": max(cpu_ratios),
            "wall_ratio": statistics.median(wall_ratios),
        }
    return summary


def markdown(results: dict) -> str:
    kernels = results["kernels"]
    lines = [
        "| threads | dtype | tokens | pass | dense ms | " + " | ".join(f"{k} (x dense, min-max)" for k in kernels) + " |",
        "| --- " * (5 + len(kernels)) + "|",
    ]
    for cell in results["cells"]:
        summary = cell["summary"]
        entries = [f"{summary[k]['ratio']:.3f} ({summary[k]['ratio_min']:.2f}-{summary[k]['ratio_max']:.2f})"
                   for k in kernels]
        lines.append(f"| {cell['threads']} | {cell['dtype']} | {cell['tokens']} | {cell['pass']} | "
                     f"{summary['dense_ms']:.0f} | " + " | ".join(entries) + " |")
    if results.get("memory"):
        lines += ["", "| dtype | tokens | pass | " + " | ".join(("dense", *kernels)) + " (peak growth, MiB) |",
                  "| --- " * (4 + len(kernels)) + "|"]
        for row in results["memory"]:
            lines.append(f"| {row['dtype']} | {row['tokens']} | {row['pass']} | "
                         + " | ".join(f"{row[v]:.0f}" for v in ("dense", *kernels)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=TOKENS, help="audio tokens per call (12.5 per s)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES)
    parser.add_argument("--threads", type=int, nargs="+", default=THREADS, help="torch intra-op threads")
    parser.add_argument("--passes", nargs="+", choices=PASSES, default=PASSES)
    parser.add_argument("--kernels", nargs="+", choices=(*KERNELS, "dense"), default=KERNELS)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per cell (at least 7 for RESULTS)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    parser.add_argument("--json", type=Path, default=None, help="write every timing and the summary here")
    parser.add_argument("--timing-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timing_worker:
        return run_timing_worker(args)
    if args.memory_worker:
        return run_memory_worker(args)

    results = {"command": " ".join(["python", "benchmarks/adapter_speed.py", *sys.argv[1:]]), "machine": machine(),
               "rounds": args.rounds, "kernels": list(args.kernels), "cells": [], "memory": []}
    print(json.dumps(results["machine"]), file=sys.stderr)
    common = ["--dtypes", *args.dtypes, "--tokens", *map(str, args.tokens), "--passes", *args.passes,
              "--kernels", *args.kernels, "--rounds", str(args.rounds)]
    for threads in args.threads:
        for cell in worker("--timing-worker", "--threads", str(threads), *common):
            cell["summary"] = summarise(cell)
            results["cells"].append(cell)
            print(f"threads {threads} {cell['dtype']} {cell['tokens']} {cell['pass']}: " + ", ".join(
                f"{k} {cell['summary'][k]['ratio']:.3f}" for k in args.kernels), file=sys.stderr, flush=True)
    if args.memory:
        for dtype_name in args.dtypes:
            for tokens in args.tokens:
                for pass_name in args.passes:
                    row = {"dtype": dtype_name, "tokens": tokens, "pass": pass_name}
                    for variant in ("dense", *args.kernels):
                        (measured,) = worker("--memory-worker", "--threads", "1", "--dtypes", dtype_name,
                                             "--tokens", str(tokens), "--passes", pass_name, "--kernels", variant)
                        row[variant] = measured["peak_growth_mib"]
                    results["memory"].append(row)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
