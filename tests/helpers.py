"""Helpers shared by the tests (conftest.py holds the fixtures): tiny random models built from the `tiny` preset,
inputs with real audio placeholders, `moe-audio train` arguments, and running `moe-audio` commands.

Tests import them as `from helpers import ...`: pytest puts this folder (conftest.py's, no __init__.py) on sys.path.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_moe_audio import MoEAudioForCausalLM, num_audio_tokens
from modeling_moe_audio.presets import load_config


ROOT = Path(__file__).resolve().parent.parent  # the checkout under test
PRESETS = ROOT / "configuration"
WINDOW_FRAMES = 3000  # mel frames in one 30 s Whisper window


# --- tiny models and their inputs -------------------------------------------------------------------------------------


def tiny_config(**overrides):
    return load_config("tiny", **overrides)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MoEAudioForCausalLM(tiny_config(**overrides)).eval()


def make_audio_batch(config, mel_lengths, seed=0):
    """Random log-mel windows, with `mel_lengths[i]` real frames in window i; the rest is padding noise."""
    generator = torch.Generator().manual_seed(seed)
    num_mels = config.audio_config.num_mel_bins
    features = torch.randn(len(mel_lengths), num_mels, WINDOW_FRAMES, generator=generator)
    mask = torch.zeros(len(mel_lengths), WINDOW_FRAMES, dtype=torch.long)
    for row, length in enumerate(mel_lengths):
        mask[row, :length] = 1
    return features, mask


def make_input_ids(config, audio_tokens_per_row, prompt_lengths, seed=0, padding_side="right", pad_id=0):
    """Rows of random text holding `audio_tokens_per_row[i]` placeholders (0: a text-only row), padded to one length."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for num_audio, num_text in zip(audio_tokens_per_row, prompt_lengths):
        text = torch.randint(1, 400, (num_text,), generator=generator)
        audio = torch.full((num_audio,), config.audio_token_id)
        rows.append(torch.cat([text[:2], audio, text[2:]]))
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        input_ids[i, span] = row
        attention_mask[i, span] = 1
    return input_ids, attention_mask


def tokens_for(mel_lengths, config):
    return [int(num_audio_tokens(length, config.frame_stacking_factor)) for length in mel_lengths]


# --- moe-audio train --------------------------------------------------------------------------------------------------


def parse_train_args(checkpoint, corpus, output_dir, *extra):
    """`moe-audio train` arguments, parsed, for a short deterministic CPU run on `corpus["train"]`, saving nothing."""
    from modeling_moe_audio.commands.train import build_parser

    return build_parser().parse_args_into_dataclasses(args=[
        "--model", str(checkpoint), "--train_data", str(corpus["train"]), "--output_dir", str(output_dir),
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--data_seed", "0",
        "--dataloader_num_workers", "0", "--save_strategy", "no", *extra,
    ])


# --- moe-audio commands -----------------------------------------------------------------------------------------------


def moe_audio(*args):
    """`moe-audio ARGS` in this process, through the dispatcher's `main(argv)`; read what it prints with `capsys`."""
    from modeling_moe_audio.commands.main import main

    main([str(arg) for arg in args])


def moe_audio_error(capsys, *args) -> str:
    """`moe-audio ARGS` in this process, which must exit with an error; returns what the process would write to stderr
    (argparse's message, or the `error: ...` of `sys.exit(message)`, whose exit status is 1)."""
    result = moe_audio_result(capsys, *args)
    assert result.returncode != 0, f"moe-audio {' '.join(map(str, args))} succeeded"
    return result.stderr


def moe_audio_result(capsys, *args, in_process=True, **process_options) -> subprocess.CompletedProcess:
    """`moe-audio ARGS` in this process (`in_process`, its output read with `capsys`) or in a process of its own
    (`moe_audio_process`); either way the exit status, stdout and stderr a process would have, as a CompletedProcess.
    Tests parametrized over `in_process` run a command both ways (the process one is `slow`)."""
    if not in_process:
        return moe_audio_process(*args, **process_options)
    capsys.readouterr()
    try:
        moe_audio(*args)
        status = 0
    except SystemExit as exited:
        status = exited.code
    stdout, stderr = capsys.readouterr()
    if isinstance(status, str):  # sys.exit(message): the message on stderr, exit status 1
        stderr, status = stderr + status + "\n", 1
    return subprocess.CompletedProcess(["moe-audio", *map(str, args)], status or 0, stdout, stderr)


# `moe-audio` in this process for the quick suite, and once more in a process of its own (slow: ~5 s of imports).
BOTH_WAYS = pytest.mark.parametrize("in_process", [
    pytest.param(True, id="in-process"), pytest.param(False, marks=pytest.mark.slow, id="process"),
])


def moe_audio_process(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`moe-audio ARGS` in a new process: `python -m modeling_moe_audio.commands.main` with this checkout first on
    the path, so it runs the tree under test, not an installed copy; `env` adds to this process's environment."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "modeling_moe_audio.commands.main", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


# How moe-audio up to 0.2.0 named the shared expert's weights: by position in an `nn.Sequential`.
POSITIONAL_SHARED_EXPERT_NAMES = {
    ".shared_expert.norm.": ".shared_expert.0.",
    ".shared_expert.up_proj.": ".shared_expert.1.",
    ".shared_expert.down_proj.": ".shared_expert.3.",
}


def use_positional_shared_expert_names(folder, weights_file: str = "model.safetensors") -> None:
    """Rewrite `folder`'s weights with the names moe-audio up to 0.2.0 wrote; same tensors."""
    from safetensors.torch import load_file, save_file

    path = Path(folder) / weights_file
    weights = load_file(path)
    renamed = {}
    for key, value in weights.items():
        for new, old in POSITIONAL_SHARED_EXPERT_NAMES.items():
            key = key.replace(new, old)
        renamed[key] = value
    assert renamed.keys() != weights.keys(), "the checkpoint has no shared expert to rename"
    save_file(renamed, path, metadata={"format": "pt"})
