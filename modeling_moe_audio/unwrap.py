"""The MoEAudio model and its adapter inside PEFT, DDP or compiled wrappers, and in checkpoints loaded with
`trust_remote_code` (which bring their own copy of the classes: they are matched by class name)."""

import torch

from .modeling_moe_audio import MoEAudioPreTrainedModel


def unwrap_moe_model(model: torch.nn.Module) -> MoEAudioPreTrainedModel:
    """The MoEAudio model inside a PEFT, DDP or compiled wrapper."""
    for module in model.modules():
        # By class name: a checkpoint loaded with trust_remote_code brings its own copy of the classes.
        if any(cls.__name__ == MoEAudioPreTrainedModel.__name__ for cls in type(module).__mro__):
            return module
    raise TypeError(f"{type(model).__name__} holds no MoEAudio model.")


def audio_adapter(model: torch.nn.Module) -> torch.nn.Module:
    """The dense or MoE adapter that `model`'s forward runs, also inside PEFT, DDP or compiled wrappers.

    PEFT's `modules_to_save` replaces the adapter by a wrapper that keeps the frozen original beside a trained copy
    per PEFT adapter; the active copy is the one that runs (the original, when PEFT's adapters are disabled).
    """
    moe_model = unwrap_moe_model(model)
    adapter = (moe_model.model if hasattr(moe_model, "model") else moe_model).adapter
    if hasattr(adapter, "modules_to_save"):
        if adapter.disable_adapters:
            return adapter.original_module
        return adapter.modules_to_save[adapter.active_adapters[0]]
    return adapter
