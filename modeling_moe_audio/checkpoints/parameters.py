"""Parameter counts of a configuration, computed on the meta device (no weights are allocated)."""

import torch

from ..configuration_moe_audio import MoEAudioConfig
from ..modeling_moe_audio import MoEAdapter, MoEAudioForCausalLM


def _count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def count_parameters(config: MoEAudioConfig) -> dict[str, int | float | str]:
    """Total and per-token active parameters of the adapter and of the whole model.

    An audio token uses `num_experts_per_tok` of the `num_experts` routed experts, so the other experts' weights are
    the only inactive ones; the router, the shared MLP and the norms are always active.
    """
    with torch.device("meta"):
        model = MoEAudioForCausalLM(config)
    adapter = model.model.adapter
    inactive = 0
    if isinstance(adapter, MoEAdapter):
        unused_experts = config.num_experts - config.num_experts_per_tok
        inactive = _count(adapter.experts) * unused_experts // config.num_experts
    total = _count(model)
    counts = {
        "adapter_type": config.adapter_type,
        "adapter_total_params": _count(adapter),
        "adapter_active_params": _count(adapter) - inactive,
        "frontend_params": _count(model.model.frontend),
        "audio_encoder_params": _count(model.model.audio_tower),
        "language_model_params": total - _count(model.model.audio_tower) - _count(model.model.frontend) - _count(adapter),
        "model_total_params": total,
        "model_active_params": total - inactive,
    }
    counts["adapter_total_params_millions"] = round(counts["adapter_total_params"] / 1e6, 1)
    counts["adapter_active_params_millions"] = round(counts["adapter_active_params"] / 1e6, 1)
    return counts
