"""moe-audio: the MoE-Adapter audio language model for Hugging Face Transformers.

Importing the package registers the classes with the Auto classes, and for `save_pretrained` to copy the three
flat code files (`configuration_moe_audio.py`, `modeling_moe_audio.py`, `processing_moe_audio.py`) into every
checkpoint, so that it loads with `trust_remote_code=True` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

from .configuration_moe_audio import MoEAudioConfig, num_audio_tokens
from .modeling_moe_audio import (
    DenseAdapter,
    MoEAdapter,
    MoEAudioForCausalLM,
    MoEAudioModel,
    MoEAudioPreTrainedModel,
)
from .processing_moe_audio import MoEAudioProcessor, load_audio


AutoConfig.register(MoEAudioConfig.model_type, MoEAudioConfig, exist_ok=True)
AutoModel.register(MoEAudioConfig, MoEAudioModel, exist_ok=True)
AutoModelForCausalLM.register(MoEAudioConfig, MoEAudioForCausalLM, exist_ok=True)
AutoProcessor.register(MoEAudioConfig, MoEAudioProcessor, exist_ok=True)
MoEAudioConfig.register_for_auto_class()
MoEAudioModel.register_for_auto_class("AutoModel")
MoEAudioForCausalLM.register_for_auto_class("AutoModelForCausalLM")
MoEAudioProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "DenseAdapter",
    "MoEAdapter",
    "MoEAudioConfig",
    "MoEAudioForCausalLM",
    "MoEAudioModel",
    "MoEAudioPreTrainedModel",
    "MoEAudioProcessor",
    "load_audio",
    "num_audio_tokens",
]
