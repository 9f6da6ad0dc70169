"""What trains: the stages of the paper (adapter only, full) and LoRA on the language model."""

import math

import torch

from ..modeling_moe_audio import MoEAudioPreTrainedModel


STAGES = ("adapter", "full", "lora")


def apply_stage(model: MoEAudioPreTrainedModel, stage: str, train_encoder: bool = False) -> None:
    """Freeze what the stage keeps fixed: `adapter` (the paper's stage 1) trains only the frontend and the adapter;
    `full` trains everything but the encoder; `lora` trains the frontend and adapter fully and the LLM through LoRA
    (see `add_lora`). `train_encoder=True` also trains the Whisper encoder."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}: use one of {STAGES}.")
    inner = model.model if hasattr(model, "model") else model
    model.requires_grad_(stage == "full")
    inner.frontend.requires_grad_(True)
    inner.adapter.requires_grad_(True)
    inner.audio_tower.requires_grad_(train_encoder)
    # Whisper's sinusoidal position table is fixed by design; WhisperEncoder freezes it when built, but a model
    # loaded with from_pretrained comes back with the flag on.
    inner.audio_tower.embed_positions.requires_grad_(False)


def add_lora(model, rank: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str | None = None):
    """Wrap the language model's linear layers in LoRA (PEFT); the frontend and the adapter stay fully trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        modules_to_save=["frontend", "adapter"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def count_trainable(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def steps_for(num_examples: int, batch_size: int, accumulation: int, epochs: float, world_size: int = 1) -> int:
    return math.ceil(math.ceil(num_examples / (batch_size * world_size)) / accumulation * epochs)
