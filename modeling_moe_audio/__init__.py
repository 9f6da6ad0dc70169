"""moe-audio: the MoE-Adapter audio language model for Hugging Face Transformers.

The first time one of the names below is taken from this package (`from modeling_moe_audio import
MoEAudioForCausalLM`, `modeling_moe_audio.MoEAudioConfig`, ...), the classes are registered with the Auto classes,
and for `save_pretrained` to copy the three flat code files (`configuration_moe_audio.py`, `modeling_moe_audio.py`,
`processing_moe_audio.py`) into every checkpoint, so that it loads with `trust_remote_code=True` where this package
is not installed.

`import modeling_moe_audio` itself imports neither torch nor transformers (several seconds, most of `moe-audio
--help`'s start-up before): the names are loaded on first use (PEP 562). Code that wants the Auto classes to know
`moe_audio` without naming a class calls `modeling_moe_audio.register()`. Importing the flat files directly
(`modeling_moe_audio.modeling_moe_audio`) skips the registration.
"""

_EXPORTS = {
    "MoEAudioConfig": "configuration_moe_audio",
    "num_audio_tokens": "configuration_moe_audio",
    "DenseAdapter": "modeling_moe_audio",
    "MoEAdapter": "modeling_moe_audio",
    "MoEAudioForCausalLM": "modeling_moe_audio",
    "MoEAudioModel": "modeling_moe_audio",
    "MoEAudioPreTrainedModel": "modeling_moe_audio",
    "MoEAudioProcessor": "processing_moe_audio",
    "load_audio": "processing_moe_audio",
}

__all__ = sorted(_EXPORTS) + ["register"]


def register() -> None:
    """Load the classes and register them with the Auto classes and for `save_pretrained`; idempotent."""
    import importlib

    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

    for name, module in _EXPORTS.items():
        globals()[name] = getattr(importlib.import_module(f".{module}", __name__), name)
    config, model, causal_lm, processor = (
        globals()[name] for name in ("MoEAudioConfig", "MoEAudioModel", "MoEAudioForCausalLM", "MoEAudioProcessor")
    )
    AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(config, model, exist_ok=True)
    AutoModelForCausalLM.register(config, causal_lm, exist_ok=True)
    AutoProcessor.register(config, processor, exist_ok=True)
    config.register_for_auto_class()
    model.register_for_auto_class("AutoModel")
    causal_lm.register_for_auto_class("AutoModelForCausalLM")
    processor.register_for_auto_class("AutoProcessor")


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register()  # sets the module globals, so this runs once
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
