"""Shared helpers: tiny random models built from the `tiny` preset and inputs with real audio placeholders."""

from pathlib import Path

import pytest
import torch

from modeling_moe_audio import MoEAudioForCausalLM, num_audio_tokens
from modeling_moe_audio.presets import load_config


WINDOW_FRAMES = 3000  # mel frames in one 30 s Whisper window


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


@pytest.fixture
def model():
    return tiny_model()
