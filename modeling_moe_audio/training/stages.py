"""What trains: the stages of the paper (adapter only, full) and LoRA on the language model, the adapter's experts
or both."""

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..modeling_moe_audio import MoEAudioPreTrainedModel


STAGES = ("adapter", "full", "lora")


def apply_stage(model: MoEAudioPreTrainedModel, stage: str, train_encoder: bool = False) -> None:
    """Freeze what the stage keeps fixed: `adapter` (the paper's stage 1) trains only the frontend and the adapter;
    `full` trains everything but the encoder; `lora` trains the frontend and adapter with the LLM frozen, and
    `add_lora` then adds LoRA (`plan_lora` says what trains in full and what through LoRA). `train_encoder=True`
    also trains the Whisper encoder."""
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


LORA_TARGETS = ("llm", "experts", "llm+experts")
# PEFT matches a string `target_modules` against each module's full name with re.fullmatch.
LLM_LORA_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# PEFT matches each `target_parameters` entry against a parameter's full name or its dotted end.
EXPERT_WEIGHTS = ("adapter.experts.up_proj", "adapter.experts.down_proj")


@dataclass(frozen=True)
class LoraPlan:
    """Where LoRA goes and what trains in full: the arguments of PEFT's `LoraConfig` for `add_lora`."""

    target_modules: str | None
    target_parameters: tuple[str, ...]
    modules_to_save: tuple[str, ...]
    dropout: float


def plan_lora(
    model,
    targets: str = "llm",
    target_modules: str | None = None,
    target_parameters: Sequence[str] | None = None,
    dropout: float | None = None,
) -> LoraPlan:
    """Check the LoRA choice against `model` and say where LoRA goes (`LoraPlan`); a bad choice raises a ValueError.

    `targets`: `llm` (the language model's attention and MLP projections, or the `target_modules` regex),
    `experts` (the MoE adapter's expert weights, or the `target_parameters` named), or `llm+experts`.
    The frontend always trains in full. With `llm` the whole adapter does too (PEFT's `modules_to_save`); with the
    experts targeted, every part of the adapter but the experts (router, norms, shared aggregation MLP, output
    projection) trains in full and the experts train through LoRA only: a module PEFT saves whole cannot also be
    LoRA-wrapped. Expert weights not named in `target_parameters` stay frozen. PEFT's LoRA on parameters has no
    dropout, so `dropout` defaults to 0.05 with `llm` and to 0 (the only value allowed) with the experts targeted.
    """
    if targets not in LORA_TARGETS:
        raise ValueError(
            f"Unknown --lora_targets {targets!r}: use one of {', '.join(LORA_TARGETS)} (LoRA on the language model's "
            "attention and MLP projections, on the MoE adapter's experts, or on both)."
        )
    on_llm, on_experts = targets in ("llm", "llm+experts"), targets in ("experts", "llm+experts")
    if target_modules is not None and not on_llm:
        raise ValueError(
            f"--lora_target_modules chooses the language-model modules LoRA wraps, but --lora_targets {targets} puts "
            "no LoRA on the language model: use --lora_targets llm+experts, or leave --lora_target_modules out."
        )
    if target_parameters is not None and not on_experts:
        raise ValueError(
            f"--lora_target_parameters chooses the expert weights LoRA wraps, but --lora_targets {targets} puts no "
            "LoRA on the experts: use --lora_targets experts or llm+experts, or leave --lora_target_parameters out."
        )
    inner = model.model if hasattr(model, "model") else model
    modules_to_save = ("frontend", "adapter")
    if on_experts:
        if not hasattr(inner.adapter, "experts"):
            raise ValueError(
                f"--lora_targets {targets} needs a MoE adapter, but this checkpoint's adapter is "
                f"{model.config.adapter_type!r} (adapter_type in config.json), without experts: use --lora_targets llm."
            )
        expert_weights = {name for name, _ in model.named_parameters() if ".adapter.experts." in f".{name}"}
        target_parameters = tuple(target_parameters) if target_parameters else EXPERT_WEIGHTS
        for name in target_parameters:
            matched = {full for full, _ in model.named_parameters() if full == name or full.endswith(f".{name}")}
            if not matched <= expert_weights or not matched:
                problem = f"names {sorted(matched - expert_weights)[0]}, not" if matched else "matches no parameter of"
                raise ValueError(
                    f"--lora_target_parameters {name!r} {problem} the adapter's experts: name their weights, "
                    f"{' and/or '.join(EXPERT_WEIGHTS)} (a full parameter name or its dotted end)."
                )
        # Every part of the adapter but the experts trains in full, by its own name.
        adapter_parts = [name for name, _ in inner.adapter.named_children() if name != "experts"]
        modules_to_save = ("frontend", *(f"adapter.{name}" for name in adapter_parts))
    else:
        target_parameters = ()
    if on_llm:
        target_modules = target_modules or LLM_LORA_MODULES
        try:
            pattern = re.compile(target_modules)
        except re.error as error:
            raise ValueError(f"--lora_target_modules {target_modules!r} is not a regular expression: {error}") from None
        wrapped = [name for name, _ in model.named_modules() if pattern.fullmatch(name)
                   and not any(re.match(rf"(^|.*\.){re.escape(kept)}($|\..*)", name) for kept in modules_to_save)]
        if not wrapped:
            raise ValueError(
                f"--lora_target_modules {target_modules!r} matches no module outside the frontend and adapter (which "
                "train in full): it must match whole module names, e.g. '.*language_model.*\\.(q_proj|v_proj)'."
            )
    else:
        target_modules = None
    if dropout is None:
        dropout = 0.0 if on_experts else 0.05
    elif dropout and on_experts:
        raise ValueError(
            f"--lora_dropout {dropout}: PEFT's LoRA on the experts' weights (a parameter, not a layer) has no dropout. "
            "Pass --lora_dropout 0 or leave it out with the experts targeted."
        )
    return LoraPlan(target_modules, target_parameters, modules_to_save, dropout)


def add_lora(model, rank: int = 16, alpha: int = 32, dropout: float | None = None, target_modules: str | None = None,
             targets: str = "llm", target_parameters: Sequence[str] | None = None):
    """Wrap `model` in PEFT's LoRA where `targets` says (see `plan_lora`): the language model's projections, the MoE
    adapter's expert weights (PEFT's `target_parameters` on their 3D tensors), or both. An encoder that `apply_stage`
    left trainable (`train_encoder=True`) trains in full too, its position table fixed."""
    from peft import LoraConfig, get_peft_model

    plan = plan_lora(model, targets, target_modules, target_parameters, dropout)
    inner = model.model if hasattr(model, "model") else model
    # PEFT freezes all it does not wrap or save: an encoder meant to train must be saved in full to stay trainable.
    train_encoder = any(parameter.requires_grad for parameter in inner.audio_tower.parameters())
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=plan.dropout,
        target_modules=plan.target_modules,
        target_parameters=list(plan.target_parameters) or None,
        modules_to_save=[*plan.modules_to_save, *(["audio_tower"] if train_encoder else [])],
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():
        if ".audio_tower." in name and name.endswith(".embed_positions.weight"):  # fixed by design, see apply_stage
            parameter.requires_grad_(False)
    return peft_model


def count_trainable(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def steps_for(num_examples: int, batch_size: int, accumulation: int, epochs: float, world_size: int = 1) -> int:
    return math.ceil(math.ceil(num_examples / (batch_size * world_size)) / accumulation * epochs)
