"""Throughput of MoEAudioProcessor against WhisperFeatureExtractor's own numpy path, in one process.

    python benchmarks/processor_speed.py [--clips 8] [--seconds 30] [--repeats 5]

Both turn the same batch of clips into log-mel windows. The processor also checks every clip, cuts windows,
counts placeholders and tokenizes the prompts; its features come from the extractor's batched torch STFT. The
numpy path is the extractor's per-waveform `_np_extract_fbank_features` (what it runs without torch).
Prints audio seconds processed per wall-clock second for each, and their ratio.
"""

import argparse
import statistics
import time

import numpy as np
from transformers import AutoTokenizer

from modeling_moe_audio.checkpoints.build import new_processor
from modeling_moe_audio.presets import SHIPPED_TOKENIZERS, load_config


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    processor = new_processor(load_config("tiny"), AutoTokenizer.from_pretrained(SHIPPED_TOKENIZERS["tiny"]))
    extractor = processor.feature_extractor
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal(int(args.seconds * 16000)) * 0.1).astype(np.float32) for _ in range(args.clips)]
    prompts = ["Listen: <|audio_pad|> What is it?"] * args.clips
    padded = np.stack([np.pad(c, (0, max(0, extractor.n_samples - len(c))))[: extractor.n_samples] for c in clips])

    processor_time = median_seconds(lambda: processor(text=prompts, audio=clips, sampling_rate=16000), args.repeats)
    numpy_time = median_seconds(lambda: extractor._np_extract_fbank_features(padded, "cpu"), args.repeats)
    audio_seconds = args.clips * args.seconds
    print(f"{args.clips} clips x {args.seconds:g} s, median of {args.repeats}")
    print(f"MoEAudioProcessor (text + audio):        {audio_seconds / processor_time:8.0f} audio s / s")
    print(f"WhisperFeatureExtractor numpy path:      {audio_seconds / numpy_time:8.0f} audio s / s")
    print(f"ratio processor / numpy path:            {numpy_time / processor_time:8.2f} x")


if __name__ == "__main__":
    main()
