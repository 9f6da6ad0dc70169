"""Configuration of the MoE-Adapter audio language model (Lei et al., "MoE Adapter for Large Audio Language Models").

This file travels with checkpoints (``trust_remote_code``): it imports only third-party packages.
"""

import dataclasses
import difflib
import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec


ADAPTER_TYPES = ("moe", "dense")

# Qwen3-1.7B and whisper-large-v3, the backbones of the paper.
QWEN3_1_7B = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
}
WHISPER_LARGE_V3 = {
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "decoder_layers": 32,
    "decoder_attention_heads": 20,
    "decoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "vocab_size": 51866,
    "max_source_positions": 1500,
}


def num_audio_tokens(num_mel_frames, frame_stacking_factor: int):
    """Audio embeddings the model produces for one Whisper window (30 s, or shorter) holding `num_mel_frames` real
    mel frames.

    Whisper's second convolution halves the frame rate (kernel 3, stride 2, padding 1), then
    `frame_stacking_factor` consecutive encoder frames become one embedding; a last, partial group
    still counts, so no audio is dropped. Works on ints and on integer tensors; the processor and the model both
    use it, so placeholders and embeddings always agree.
    """
    encoder_frames = (num_mel_frames + 1) // 2
    return (encoder_frames + frame_stacking_factor - 1) // frame_stacking_factor


@strict
class MoEAudioConfig(PreTrainedConfig):
    r"""
    Configuration of [`MoEAudioModel`] / [`MoEAudioForCausalLM`]. The defaults are the paper's model: Qwen3-1.7B,
    the whisper-large-v3 encoder, and the 8-expert top-4 MoE adapter of Table 4.

    Args:
        text_config (`dict` or `PreTrainedConfig`): any decoder-only LLM config known to `AutoConfig` (default Qwen3).
        audio_config (`dict` or `WhisperConfig`): the Whisper config whose encoder is used.
        audio_token_id / audio_start_token_id / audio_end_token_id (`int`): ids of the audio placeholder and of the
            tokens around it; the placeholder is replaced by audio embeddings.
        frame_stacking_factor (`int`): encoder frames stacked into one audio token (4: 50 Hz -> 12.5 Hz).
        audio_hidden_size (`int`): width `d` of the fused audio features (the fusion block's output).
        semantic_vocab_size (`int`): size of the discrete semantic-token vocabulary whose embeddings are summed with
            the fused features (0: no discrete stream).
        semantic_codebook_layer (`int`, *optional*): with a semantic stream, the Whisper encoder layer whose output
            (`hidden_states[layer]`, stacked as the audio tokens are) the model's own codebook quantises into semantic
            ids when none are given: the codebook `moe-audio semantic-fit` fits (k-means, `semantic_vocab_size`
            rows). None (default): no codebook; the ids come from an external tokenizer with the inputs.
        adapter_type (`str`): `"moe"` (eqs. 2-5) or `"dense"` (eq. 1).
        dense_intermediate_size (`int`): hidden width of the dense adapter's MLP.
        num_experts / num_experts_per_tok (`int`): routed experts `N` and the `k` each audio token uses.
        expert_intermediate_size (`int`): hidden width of each routed expert.
        shared_expert_intermediate_size (`int`): hidden width of the shared aggregation MLP (0: none).
        adapter_output_projection (`bool`): `False` (default): the experts and the shared MLP write straight into the
            LLM's hidden size, i.e. eq. 5's `W_P` is folded into their output matrices, which is the reading that gives
            Table 4's parameter counts. `True`: they write back to `audio_hidden_size` and a separate `W_P` projects
            to the LLM's hidden size.
        router_aux_loss_coef (`float`): lambda of eq. 6 for the load-balancing loss of eq. 10.
        router_z_loss_coef (`float`): coefficient of the optional router z-loss (0: off).
        router_jitter_noise (`float`): multiplicative jitter on the router input during training (0: off).
        router_selection_bias (`bool`): keep a per-expert bias that is added to the router logits for choosing the
            experts only (not for their weights), nudged toward equal load during training: auxiliary-loss-free
            balancing (DeepSeek-V3), beyond the paper.
        output_router_logits (`bool`): return the router logits and the chosen experts of each audio token.
        adapter_layer_norm_eps (`float`): epsilon of the frontend's and the adapter's LayerNorms.
        initializer_range (`float`): std of the normal initialisation of the frontend and the adapter.
        tie_word_embeddings (`bool`): tie the LM head to the input embeddings (default: as the text config says).
    """

    model_type = "moe_audio"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3", init_kwargs=QWEN3_1_7B),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", init_kwargs=WHISPER_LARGE_V3),
    }

    text_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    audio_token_id: int | None = None
    audio_start_token_id: int | None = None
    audio_end_token_id: int | None = None
    frame_stacking_factor: int = 4
    audio_hidden_size: int = 2560
    semantic_vocab_size: int = 0
    semantic_codebook_layer: int | None = None
    adapter_type: str = "moe"
    dense_intermediate_size: int = 20480
    num_experts: int = 8
    num_experts_per_tok: int = 4
    expert_intermediate_size: int = 1280
    shared_expert_intermediate_size: int = 10240
    adapter_output_projection: bool = False
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.0
    router_jitter_noise: float = 0.0
    router_selection_bias: bool = False
    output_router_logits: bool = False
    adapter_layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs):
        # Keys this class does not know are kept (configs carry the library's own keys, which change with its
        # versions), but one that is a near miss of a field is a typo that would silently leave the default in place.
        fields = [field.name for field in dataclasses.fields(self)]
        for key in kwargs:
            near = difflib.get_close_matches(key, fields, n=1, cutoff=0.85)
            if near and key not in fields:
                raise ValueError(f"{key!r} is not a MoEAudioConfig field; did you mean {near[0]!r}? Fix the key.")
        for key in ("text_config", "audio_config"):
            value = getattr(self, key)
            if isinstance(value, dict) and "model_type" not in value:
                spec = self.sub_configs_defaults[key]
                setattr(self, key, {"model_type": spec.model_type, **spec.init_kwargs, **value})
        super().__post_init__(**kwargs)
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    @property
    def _experts_implementation(self) -> str | None:
        return self._experts_implementation_internal

    @_experts_implementation.setter
    def _experts_implementation(self, value: str | dict | None):
        # `from_pretrained(..., experts_implementation="grouped_mm")` hands the request to every sub-config, and Whisper
        # (or a dense LLM), having no experts, refuses it. The adapter's experts are the ones a plain string means; a
        # dict still reaches a sub-config, e.g. {"": "grouped_mm", "text_config": "grouped_mm"} for an MoE LLM.
        if isinstance(value, dict):
            PreTrainedConfig._experts_implementation.fset(self, value)
        else:
            self._experts_implementation_internal = value

    @property
    def stacked_audio_size(self) -> int:
        """Width of one stacked audio frame: the Whisper width times the stacking factor (5120 in the paper)."""
        return self.audio_config.d_model * self.frame_stacking_factor

    @property
    def audio_tokens_per_window(self) -> int:
        """Audio embeddings of one full Whisper window (375 at 12.5 Hz for a 30 s one)."""
        return self.audio_config.max_source_positions // self.frame_stacking_factor

    def validate_architecture(self):
        """Part of `@strict` validation: every mistake names the field and how to fix it."""
        super().validate_architecture()
        if self.adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"adapter_type={self.adapter_type!r} is unknown: use one of {ADAPTER_TYPES}.")
        widths = {
            "frame_stacking_factor": self.frame_stacking_factor,
            "audio_hidden_size": self.audio_hidden_size,
            "dense_intermediate_size": self.dense_intermediate_size,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "expert_intermediate_size": self.expert_intermediate_size,
        }
        for name, value in widths.items():
            if value <= 0:
                raise ValueError(f"{name}={value} must be a positive integer.")
        for name in ("shared_expert_intermediate_size", "semantic_vocab_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 switches it off).")
        if self.semantic_codebook_layer is not None:
            layers = self.audio_config.encoder_layers
            if not self.semantic_vocab_size:
                raise ValueError(f"semantic_codebook_layer={self.semantic_codebook_layer} needs a semantic stream: set "
                                 "semantic_vocab_size to the codebook's size (moe-audio semantic-fit sets both).")
            if not 0 <= self.semantic_codebook_layer <= layers:
                raise ValueError(f"semantic_codebook_layer={self.semantic_codebook_layer} is not an encoder layer: the "
                                 f"Whisper encoder has {layers} layers, so use 0 (its input) to {layers} (its output).")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} is larger than num_experts={self.num_experts}: "
                "a token cannot use more experts than exist; lower num_experts_per_tok or raise num_experts."
            )
        for name in ("router_aux_loss_coef", "router_z_loss_coef", "router_jitter_noise"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 and finite.")
        if not (math.isfinite(self.adapter_layer_norm_eps) and self.adapter_layer_norm_eps > 0):
            raise ValueError(f"adapter_layer_norm_eps={self.adapter_layer_norm_eps} must be a small positive number "
                             "(the paper's LayerNorms use 1e-5).")
        if not (math.isfinite(self.initializer_range) and self.initializer_range >= 0):
            raise ValueError(f"initializer_range={self.initializer_range} must be a finite number >= 0.")
        if self.router_jitter_noise >= 1:
            raise ValueError(f"router_jitter_noise={self.router_jitter_noise} must be below 1 (it scales by 1 +- noise).")
        if getattr(self.audio_config, "model_type", None) != "whisper":
            raise ValueError(
                f"audio_config must be a Whisper config (model_type 'whisper'), got {self.audio_config.model_type!r}."
            )
        encoder_frames = self.audio_config.max_source_positions
        if encoder_frames % self.frame_stacking_factor:
            raise ValueError(
                f"frame_stacking_factor={self.frame_stacking_factor} does not divide the encoder's "
                f"{encoder_frames} frames per window, so stacked frames would straddle windows; "
                "use a divisor of it (4 gives the paper's 12.5 Hz)."
            )
        vocab_size = self.text_config.vocab_size
        audio_ids = {}
        for name in ("audio_token_id", "audio_start_token_id", "audio_end_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"{name}={token_id} is outside the language model's vocabulary (size {vocab_size}); add the audio "
                    "tokens to the tokenizer, resize the embeddings, and set the id the tokenizer gives."
                )
            if token_id is not None:
                audio_ids.setdefault(token_id, []).append(name)
        text_ids = {name: getattr(self.text_config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        for token_id, names in audio_ids.items():
            clashes = names[1:] + [name for name, value in text_ids.items()
                                   if token_id == value or (isinstance(value, list) and token_id in value)]
            if clashes:
                raise ValueError(
                    f"{names[0]}={token_id} is also the {' and the '.join(clashes)}: each audio token needs an id of its "
                    "own, or audio would replace (or be taken for) that token; add the audio tokens to the tokenizer "
                    "and set the ids it gives."
                )


# JSON has one number type and many writers turn 0.0 into 0: a whole number where a float field goes is that float
# (`@strict` alone would refuse `"router_aux_loss_coef": 0`).
_FLOAT_FIELDS = {field.name for field in dataclasses.fields(MoEAudioConfig) if field.type is float}
_strict_setattr = MoEAudioConfig.__setattr__


def _setattr_taking_whole_numbers_as_floats(self, name, value):
    if name in _FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    _strict_setattr(self, name, value)


MoEAudioConfig.__setattr__ = _setattr_taking_whole_numbers_as_floats


__all__ = ["MoEAudioConfig", "num_audio_tokens"]
