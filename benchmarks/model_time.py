"""Where a training step's time goes (Whisper encoder, frontend, adapter, LLM), MoE against dense, and what shorter
Whisper windows save.

    python benchmarks/model_time.py --json results.json     # about 10 minutes on 2 cores

Part 1, the step: one training step (forward with labels, backward, AdamW step; every part trained, as stage `full`)
of MoEAudioForCausalLM with random weights, for clips of 1, 5 and 30 s, each clip with a 16-token question and a
one-word answer. Models: `tiny-4s` (its 4 s windows, a batch of 16 clips as the demo trains) and a mid-size model of
about 300M parameters (one clip per step): a Whisper-small-shaped encoder (12 layers, width 768), the paper's adapter
widths (`paper-moe` / `paper-dense`), and a Qwen3-shaped LLM (8 layers, width 1024, vocabulary 32768). The mid-size
model runs with Whisper's 30 s windows and with windows cut to the clip (`moe-audio init --window_seconds`: 2 s for
a 1 s clip, 6 s for a 5 s one). Each step is cut into parts by hooks on the four modules: a forward hook stamps when
each starts and ends; a hook on each module's output gradient stamps when its backward starts (autograd runs the
backward from the loss down: head and LLM, adapter, frontend, encoder). The frontend's share includes stacking the
encoder frames; the LLM's includes the text embeddings, the audio merge, the head and the loss, except the backward
of the text-embedding lookup, which autograd runs last and so falls in the encoder's share (timed on its own below:
`embedding_backward_ms`). Every configuration runs once per round, round after round; medians over the rounds.

Part 2, the paper's encoder: the forward of a Whisper-large-v3-shaped encoder (32 layers, width 1280, 128 mels;
random weights) on one window of 30, 6 and 2 s, interleaved round by round, and from it the encoder time per clip of
1, 5 and 30 s with 30 s windows and with the shortest window that holds the clip.

The dtype is float32: on a CPU without native bf16 (AVX2 only), bf16 matmuls run an emulation about 100x slower than
fp32, which would time the emulation rather than the model. `--dtype bfloat16` is there for machines that have it.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapter_speed import machine  # noqa: E402  (the same machine record)

CLIP_SECONDS = (1, 5, 30)
QUESTION_TOKENS, ANSWER_TOKENS = 16, 2
PARTS = ("encoder", "frontend", "adapter", "llm", "optimizer")


def mid_size_config(adapter_type: str):
    from transformers import Qwen3Config, WhisperConfig

    from modeling_moe_audio.presets import load_config

    config = load_config("paper-moe" if adapter_type == "moe" else "paper-dense")
    config.text_config = Qwen3Config(vocab_size=32768, hidden_size=1024, intermediate_size=3072, num_hidden_layers=8,
                                     num_attention_heads=16, num_key_value_heads=8, head_dim=64,
                                     tie_word_embeddings=True)
    config.audio_config = WhisperConfig(d_model=768, encoder_layers=12, encoder_attention_heads=12,
                                        encoder_ffn_dim=3072, decoder_layers=1, num_mel_bins=80,
                                        max_source_positions=1500)
    config.audio_token_id, config.audio_start_token_id, config.audio_end_token_id = 32765, 32766, 32767
    config.tie_word_embeddings = True
    config.validate_architecture()
    return config


def tiny_config(adapter_type: str):
    from modeling_moe_audio.presets import load_config

    return load_config("tiny-4s", adapter_type=adapter_type)


class StepClock:
    """Stamps the start and end of each module's forward and the start of its backward (its output's gradient)."""

    def __init__(self, model):
        self.marks = {}
        inner = model.model
        modules = {"encoder": inner.audio_tower, "frontend": inner.frontend, "adapter": inner.adapter,
                   "llm": inner.language_model}
        for name, module in modules.items():
            module.register_forward_pre_hook(partial(self._forward_start, name))
            module.register_forward_hook(partial(self._forward_end, name))

    def stamp(self, mark: str) -> None:
        self.marks[mark] = time.perf_counter()

    def _forward_start(self, name, module, args):
        self.stamp(f"{name} forward start")

    def _forward_end(self, name, module, args, output):
        self.stamp(f"{name} forward end")
        tensor = output if hasattr(output, "register_hook") else output[0]
        if tensor.requires_grad:
            tensor.register_hook(lambda grad: self.stamp(f"{name} backward start"))

    def parts(self) -> dict:
        m = self.marks
        span = lambda a, b: m[b] - m[a]  # noqa: E731
        return {
            "encoder": span("encoder forward start", "encoder forward end")
                       + span("encoder backward start", "backward end"),
            "frontend": span("encoder forward end", "adapter forward start")
                        + span("frontend backward start", "encoder backward start"),
            "adapter": span("adapter forward start", "adapter forward end")
                       + span("adapter backward start", "frontend backward start"),
            "llm": span("step start", "encoder forward start") + span("adapter forward end", "forward end")
                   + span("forward end", "adapter backward start"),
            "optimizer": span("backward end", "step end"),
            "step": span("step start", "step end"),
        }


def batch_for(config, clip_seconds: int, clips: int, dtype, generator):
    """A batch as the processor builds it: each clip's windows, its placeholders, a question and a short answer."""
    import torch

    from modeling_moe_audio.configuration_moe_audio import num_audio_tokens

    window_frames = 2 * config.audio_config.max_source_positions  # mel frames per window
    clip_frames = clip_seconds * 100
    windows_per_clip = math.ceil(clip_frames / window_frames)
    real = [min(window_frames, clip_frames - w * window_frames) for w in range(windows_per_clip)]
    tokens = sum(int(num_audio_tokens(frames, config.frame_stacking_factor)) for frames in real)
    mask = torch.zeros(clips * windows_per_clip, window_frames, dtype=torch.long)
    for clip in range(clips):
        for w, frames in enumerate(real):
            mask[clip * windows_per_clip + w, :frames] = 1
    vocab = config.audio_token_id - 8
    question = torch.randint(1, vocab, (clips, QUESTION_TOKENS), generator=generator)
    answer = torch.randint(1, vocab, (clips, ANSWER_TOKENS), generator=generator)
    input_ids = torch.cat([question[:, :4], torch.full((clips, tokens), config.audio_token_id), question[:, 4:],
                           answer], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, -ANSWER_TOKENS:] = answer
    features = torch.randn(clips * windows_per_clip, config.audio_config.num_mel_bins, window_frames,
                           generator=generator, dtype=dtype)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "input_features": features, "input_features_mask": mask}, tokens


def use_window(model, seconds: int) -> None:
    """Switch `model`'s encoder to `seconds`-long windows in place, on the same weights: Whisper's position embeddings
    are frozen, so this is the model `set_audio_window` would build (its first positions), with no second copy of
    the other weights and optimizer states."""
    import torch

    encoder = model.model.audio_tower
    if not hasattr(encoder, "all_positions"):
        encoder.all_positions = encoder.embed_positions
    positions = seconds * 50
    encoder.embed_positions = torch.nn.Embedding.from_pretrained(encoder.all_positions.weight[:positions], freeze=True)
    model.config.audio_config.max_source_positions = encoder.config.max_source_positions = positions


def step_part(dtype_name: str, rounds: int) -> dict:
    import torch

    from modeling_moe_audio.checkpoints.parameters import count_parameters
    from modeling_moe_audio.modeling_moe_audio import MoEAudioForCausalLM

    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(0)
    models, runs = {}, {}
    for model_name, clips, windows in (("tiny-4s", 16, {1: [4], 5: [4], 30: [4]}),
                                       ("mid-size", 1, {1: [30, 2], 5: [30, 6], 30: [30]})):
        for adapter in ("moe", "dense"):
            config = (tiny_config if model_name == "tiny-4s" else mid_size_config)(adapter)
            torch.manual_seed(0)
            model = MoEAudioForCausalLM(config).to(dtype).train()
            models[(model_name, adapter)] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5), StepClock(model),
                                             count_parameters(config))
            for clip, clip_windows in windows.items():
                for window in clip_windows:
                    use_window(model, window)
                    runs[(model_name, adapter, window, clip)] = (*batch_for(model.config, clip, clips, dtype, generator),
                                                                 clips)

    def run_step(run_key) -> dict:
        model_name, adapter, window, _ = run_key
        batch = runs[run_key][0]
        model, optimizer, clock, _ = models[(model_name, adapter)]
        use_window(model, window)
        optimizer.zero_grad(set_to_none=True)
        clock.stamp("step start")
        loss = model(**batch).loss
        clock.stamp("forward end")
        loss.backward()
        clock.stamp("backward end")
        optimizer.step()
        clock.stamp("step end")
        return clock.parts()

    for run_key in runs:  # warm-up
        run_step(run_key)
    times = {run_key: [] for run_key in runs}
    for _ in range(rounds):
        for run_key in runs:
            times[run_key].append(run_step(run_key))
    rows = []
    for (model_name, adapter, window, clip), per_round in times.items():
        _, tokens, clips = runs[(model_name, adapter, window, clip)]
        medians = {part: statistics.median(r[part] for r in per_round) for part in (*PARTS, "step")}
        params = models[(model_name, adapter)][3]
        rows.append({"model": model_name, "adapter": adapter, "window_seconds": window, "clip_seconds": clip,
                     "clips_per_step": clips, "audio_tokens_per_clip": tokens,
                     "params_total": params["model_total_params"], "adapter_params_total": params["adapter_total_params"],
                     "adapter_params_active": params["adapter_active_params"],
                     "seconds": medians, "share": {part: medians[part] / medians["step"] for part in PARTS},
                     "step_min_max": [min(r["step"] for r in per_round), max(r["step"] for r in per_round)]})
    # The backward of the text-embedding lookup, which autograd runs last (inside the encoder's share above).
    embedding = models[("mid-size", "moe")][0].get_input_embeddings()
    ids = runs[("mid-size", "moe", 30, 30)][0]["input_ids"]
    output_grad = torch.randn(*ids.shape, embedding.embedding_dim, dtype=dtype)
    embedding_backward = []
    for _ in range(rounds):
        looked_up = embedding(ids)
        start = time.perf_counter()
        looked_up.backward(output_grad)
        embedding_backward.append(time.perf_counter() - start)
    return {"part": "training step", "dtype": dtype_name, "rows": rows,
            "embedding_backward_ms": 1000 * statistics.median(embedding_backward)}


def encoder_part(dtype_name: str, rounds: int, windows=(30, 6, 2)) -> dict:
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    dtype = getattr(torch, dtype_name)
    encoders = {}
    torch.manual_seed(0)
    for seconds in windows:
        # Whisper large-v3's encoder shapes; the shorter windows keep the first positions, as `set_audio_window` does.
        config = WhisperConfig(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                               decoder_layers=1, num_mel_bins=128, max_source_positions=50 * seconds)
        encoders[seconds] = WhisperEncoder(config).to(dtype).eval()
    features = {s: torch.randn(1, 128, 100 * s, dtype=dtype) for s in windows}

    def forward(seconds):
        with torch.no_grad():
            start = time.perf_counter()
            encoders[seconds](features[seconds])
            return time.perf_counter() - start

    for seconds in windows:
        forward(seconds)
    times = {s: [] for s in windows}
    for _ in range(rounds):
        for seconds in windows:
            times[seconds].append(forward(seconds))
    per_window = {s: statistics.median(t) for s, t in times.items()}
    clips = {}
    for clip in CLIP_SECONDS:
        fitting = min(s for s in windows if s >= clip)
        clips[clip] = {"30 s windows": math.ceil(clip / 30) * per_window[30],
                       f"{fitting} s windows": math.ceil(clip / fitting) * per_window[fitting]}
    return {"part": "paper encoder forward", "dtype": dtype_name, "seconds_per_window": per_window,
            "min_max": {s: [min(t), max(t)] for s, t in times.items()}, "seconds_per_clip": clips,
            "params": sum(p.numel() for p in encoders[30].parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=("step", "encoder"), default=["step", "encoder"])
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = {"command": " ".join(["python", "benchmarks/model_time.py", *sys.argv[1:]]),
               "machine": {**machine(), "threads": args.threads}, "rounds": args.rounds, "parts": []}
    if "step" in args.parts:
        part = step_part(args.dtype, args.rounds)
        results["parts"].append(part)
        for row in part["rows"]:
            print(json.dumps({k: row[k] for k in ("model", "adapter", "window_seconds", "clip_seconds")}
                             | {"step_s": round(row["seconds"]["step"], 3)}
                             | {f"{p} share": round(row["share"][p], 3) for p in PARTS}), flush=True)
        print(json.dumps({"embedding_backward_ms": part["embedding_backward_ms"]}), flush=True)
    if "encoder" in args.parts:
        part = encoder_part(args.dtype, args.rounds)
        results["parts"].append(part)
        print(json.dumps({k: part[k] for k in ("seconds_per_window", "seconds_per_clip")}), flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
