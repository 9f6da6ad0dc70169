"""torch.compile against eager: the adapters at the paper's shapes, and one training step of the `tiny-4s` model.

    python benchmarks/compile_speed.py                          # float32, 1 thread, 7 rounds (about 15 minutes)
    python benchmarks/compile_speed.py --dtypes bfloat16 --parts training_step

Adapters: the dense and the MoE adapter (default kernel) of Table 4, forward+backward on `--tokens` audio tokens,
each eager and compiled (`torch.compile(adapter)`, inductor). Training step: `MoEAudioForCausalLM` built from the
`tiny-4s` preset with random weights, a batch of 4 clips of 4 s with a short prompt each, forward with labels,
backward and an AdamW step; eager against `torch.compile(model)` (the optimizer step stays eager in both). Every
variant of a part runs once per round, round after round, as in `adapter_speed.py`; the ratios (compiled / eager,
MoE / dense) are per round, reported as the median and min-max over the rounds of process CPU time. The first
compiled call (compilation) is timed on its own and left out of the rounds. Graph breaks are counted by dynamo
(`torch._dynamo.utils.counters["graph_break"]`) over the compiled calls of each part.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapter_speed import build, machine  # noqa: E402  (the same adapters and machine record)


def timed(call) -> float:
    start = time.process_time()
    call()
    return time.process_time() - start


def interleave(calls: dict, rounds: int) -> dict:
    """Each call once per round, round after round; {name: [CPU seconds per round]}."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(timed(call))
    return times


def ratio(times: dict, numerator: str, denominator: str) -> dict:
    per_round = [a / b for a, b in zip(times[numerator], times[denominator])]
    return {"ratio": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}


def graph_breaks(reset: bool = False) -> int:
    from torch._dynamo.utils import counters

    if reset:
        counters["graph_break"].clear()
    return sum(counters["graph_break"].values())


def adapter_part(dtype_name: str, tokens: int, rounds: int) -> dict:
    import torch

    dense, moe, features, output_grad = build(dtype_name, tokens)
    moe.experts.config._experts_implementation = "grouped_mm"
    torch._dynamo.reset()
    graph_breaks(reset=True)
    compiled = {"dense": torch.compile(dense), "moe": torch.compile(moe)}

    def step(adapter):
        def call():
            adapter.zero_grad(set_to_none=True)
            adapter(features.detach().requires_grad_(True)).backward(output_grad)
        return call

    calls = {"dense_eager": step(dense), "dense_compiled": step(compiled["dense"]),
             "moe_eager": step(moe), "moe_compiled": step(compiled["moe"])}
    compile_seconds = {name: timed(calls[name]) for name in ("dense_compiled", "moe_compiled")}
    for call in calls.values():  # warm-up
        call()
    times = interleave(calls, rounds)
    return {"part": "adapter", "dtype": dtype_name, "tokens": tokens, "times": times,
            "compile_seconds": compile_seconds, "graph_breaks": graph_breaks(),
            "compiled_over_eager": {"dense": ratio(times, "dense_compiled", "dense_eager"),
                                    "moe": ratio(times, "moe_compiled", "moe_eager")},
            "moe_over_dense": {"eager": ratio(times, "moe_eager", "dense_eager"),
                               "compiled": ratio(times, "moe_compiled", "dense_compiled")}}


def training_step_part(dtype_name: str, rounds: int) -> dict:
    import torch

    from modeling_moe_audio.configuration_moe_audio import num_audio_tokens
    from modeling_moe_audio.modeling_moe_audio import MoEAudioForCausalLM
    from modeling_moe_audio.presets import load_config

    config = load_config("tiny-4s")
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    window = 2 * config.audio_config.max_source_positions  # mel frames of one window (4 s for tiny-4s)
    clips, prompt = 4, 12
    audio_tokens = int(num_audio_tokens(window, config.frame_stacking_factor))
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, config.audio_token_id - 8, (clips, prompt), generator=generator)
    input_ids = torch.cat([text[:, :2], torch.full((clips, audio_tokens), config.audio_token_id), text[:, 2:]], dim=1)
    labels = input_ids.clone()
    labels[:, : 2 + audio_tokens] = -100  # loss on the text after the audio
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
             "input_features": torch.randn(clips, config.audio_config.num_mel_bins, window, generator=generator,
                                           dtype=dtype),
             "input_features_mask": torch.ones(clips, window, dtype=torch.long)}
    models = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = MoEAudioForCausalLM(config).to(dtype).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        models[name] = (torch.compile(model) if name == "compiled" else model, optimizer)
    torch._dynamo.reset()
    graph_breaks(reset=True)

    def step(name):
        model, optimizer = models[name]

        def call():
            optimizer.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            optimizer.step()
        return call

    calls = {"eager": step("eager"), "compiled": step("compiled")}
    compile_seconds = {"compiled": timed(calls["compiled"])}
    for call in calls.values():
        call()
    times = interleave(calls, rounds)
    return {"part": "tiny-4s training step", "dtype": dtype_name, "batch": f"{clips} clips of 4 s, {prompt} text tokens",
            "times": times, "compile_seconds": compile_seconds, "graph_breaks": graph_breaks(),
            "compiled_over_eager": {"step": ratio(times, "compiled", "eager")},
            "eager_ms": 1000 * statistics.median(times["eager"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32"])
    parser.add_argument("--tokens", type=int, default=1024, help="audio tokens per adapter call (12.5 per s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--parts", nargs="+", choices=("adapter", "training_step"), default=["adapter", "training_step"],
                        help="bfloat16 adapters at the paper's shapes are slow on a CPU without native bf16")
    parser.add_argument("--json", type=Path, default=None, help="write every timing and the summary here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = {"command": " ".join(["python", "benchmarks/compile_speed.py", *sys.argv[1:]]),
               "machine": {**machine(), "threads": args.threads}, "rounds": args.rounds, "parts": []}
    for dtype_name in args.dtypes:
        parts = {"adapter": lambda: adapter_part(dtype_name, args.tokens, args.rounds),
                 "training_step": lambda: training_step_part(dtype_name, args.rounds)}
        for part in (parts[name]() for name in args.parts):
            results["parts"].append(part)
            summary = {key: part[key] for key in ("part", "dtype", "compile_seconds", "graph_breaks",
                                                  "compiled_over_eager") if key in part}
            if "moe_over_dense" in part:
                summary["moe_over_dense"] = part["moe_over_dense"]
            print(json.dumps(summary), flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
