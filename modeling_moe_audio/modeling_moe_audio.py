"""The MoE-Adapter audio language model (Lei et al., "MoE Adapter for Large Audio Language Models").

Audio -> Whisper encoder -> frame stacking (12.5 Hz) -> fusion (+ discrete semantic tokens) -> dense or MoE
adapter -> embeddings that replace the audio placeholder tokens of a decoder-only LLM.

This file travels with checkpoints (``trust_remote_code``): it imports only third-party packages and
`configuration_moe_audio`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.integrations import moe as transformers_moe
from transformers.integrations.moe import ExpertsInterface, use_experts_implementation
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, MoeCausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.processing_utils import Unpack
from transformers.utils import (
    ModelOutput,
    TransformersKwargs,
    can_return_tuple,
    is_torchdynamo_compiling,
    torch_compilable_check,
)
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_moe_audio import MoEAudioConfig, num_audio_tokens


# ---------------------------------------------------------------------------------------------------------------
# Frontend and adapters
# ---------------------------------------------------------------------------------------------------------------


class MoEAudioFrontend(nn.Module):
    """Stacks Whisper frames (50 Hz -> 12.5 Hz) and fuses them: LN -> Linear -> SiLU -> LN (Table 4, part I).

    With `semantic_vocab_size > 0` the embeddings of the discrete semantic tokens are added (the second stream). With
    `semantic_codebook_layer` set, the frontend also holds the codebook (a buffer, saved with the weights) that turns
    the stacked output of that encoder layer into those ids when the inputs carry none.
    """

    def __init__(self, config: MoEAudioConfig):
        super().__init__()
        eps = config.adapter_layer_norm_eps
        self.input_norm = nn.LayerNorm(config.stacked_audio_size, eps=eps)
        self.linear = nn.Linear(config.stacked_audio_size, config.audio_hidden_size)
        self.act = ACT2FN["silu"]
        self.output_norm = nn.LayerNorm(config.audio_hidden_size, eps=eps)
        self.semantic_embeddings = (
            nn.Embedding(config.semantic_vocab_size, config.audio_hidden_size) if config.semantic_vocab_size else None
        )
        if config.semantic_codebook_layer is not None:
            self.register_buffer("semantic_codebook", torch.zeros(config.semantic_vocab_size, config.stacked_audio_size))
        else:
            self.semantic_codebook = None

    def nearest_codebook_entries(self, stacked_features: torch.Tensor) -> torch.Tensor:
        """The semantic id of each stacked frame `(tokens, stacked_audio_size)`: its nearest codebook row by squared
        Euclidean distance, as k-means assigns points (`KMeans.predict`), in float32 at least. Returns `(tokens,)`."""
        dtype = torch.promote_types(stacked_features.dtype, torch.float32)
        features, codebook = stacked_features.to(dtype), self.semantic_codebook.to(dtype)
        distances = (  # (tokens, vocab): |x|^2 - 2 x.c + |c|^2
            features.square().sum(-1, keepdim=True) - 2 * features @ codebook.T + codebook.square().sum(-1)
        )
        return distances.argmin(dim=-1)

    def forward(self, stacked_features: torch.Tensor, semantic_audio_ids: torch.Tensor | None = None) -> torch.Tensor:
        fused = self.output_norm(self.act(self.linear(self.input_norm(stacked_features))))
        if self.semantic_embeddings is not None:
            fused = fused + self.semantic_embeddings(semantic_audio_ids)
        return fused


class DenseAdapter(nn.Module):
    """Eq. 1: y = LN(W_d2 SiLU(W_d1 LN(x))), from the audio width d to the LLM width D."""

    def __init__(self, config: MoEAudioConfig):
        super().__init__()
        eps = config.adapter_layer_norm_eps
        self.input_norm = nn.LayerNorm(config.audio_hidden_size, eps=eps)
        self.up_proj = nn.Linear(config.audio_hidden_size, config.dense_intermediate_size, bias=False)
        self.act_fn = ACT2FN["silu"]
        self.down_proj = nn.Linear(config.dense_intermediate_size, config.text_config.hidden_size, bias=False)
        self.output_norm = nn.LayerNorm(config.text_config.hidden_size, eps=eps)

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        hidden = self.down_proj(self.act_fn(self.up_proj(self.input_norm(audio_features))))
        return self.output_norm(hidden)


class MoEAudioRouter(nn.Module):
    """Eq. 3: logits s = x W_g in float32, the top-k kept, softmax over the kept logits.

    With `router_selection_bias`, a per-expert bias shifts which experts are chosen but not their weights. Returns
    `(router_logits, routing_weights, selected_experts)`: the model records the first and the last through
    `_can_record_outputs`, and training callbacks read them with a forward hook on this class.
    """

    def __init__(self, config: MoEAudioConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.jitter_noise = config.router_jitter_noise
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.audio_hidden_size))
        if config.router_selection_bias:
            self.register_buffer("selection_bias", torch.zeros(config.num_experts))
        else:
            self.selection_bias = None

    @torch.no_grad()
    def update_selection_bias(self, expert_load: torch.Tensor, rate: float) -> None:
        """Raise the bias of experts under the mean load and lower it above, by `rate` (auxiliary-loss-free)."""
        if self.selection_bias is None:
            raise ValueError("This model has no selection bias: set router_selection_bias=True in its config.")
        expert_load = expert_load.to(self.selection_bias.device, torch.float32)
        self.selection_bias += rate * torch.sign(expert_load.mean() - expert_load)

    def forward(self, audio_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Routing decisions are made in at least float32, also when the model runs in bf16.
        router_inputs = audio_features.to(torch.promote_types(audio_features.dtype, torch.float32))
        if self.training and self.jitter_noise > 0:
            router_inputs = router_inputs * torch.empty_like(router_inputs).uniform_(
                1.0 - self.jitter_noise, 1.0 + self.jitter_noise
            )
        router_logits = nn.functional.linear(router_inputs, self.weight.to(router_inputs.dtype))
        if self.selection_bias is None:
            top_k_logits, selected_experts = torch.topk(router_logits, self.top_k, dim=-1)
        else:
            selected_experts = torch.topk(router_logits + self.selection_bias, self.top_k, dim=-1).indices
            top_k_logits = router_logits.gather(-1, selected_experts)
        routing_weights = torch.softmax(top_k_logits, dim=-1)
        return router_logits, routing_weights, selected_experts


class RectangularExpertsInterface(ExpertsInterface):
    """transformers' experts interface, for experts whose output width differs from their input width.

    The paper's experts read the audio width d and write the LLM width D (2560 -> 1280 -> 2048 in Table 4), while
    transformers' own `grouped_mm` / `batched_mm` kernels assume an expert writes the width it reads. This interface
    offers the same two algorithms for rectangular experts, defined and registered at the end of this file ("Expert
    kernels"); `use_experts_implementation` looks the kernel up at every call, so the mapping may be filled later.
    """

    _global_mapping = {}


@use_experts_implementation(experts_interface=RectangularExpertsInterface(), has_gate=False)
class MoEAudioExperts(nn.Module):
    """Eq. 2: N experts E_i(x) = W_e2 SiLU(W_e1 x), stored as 3D tensors; eq. 4: their routing-weighted sum.

    `forward` is the eager kernel; `config._experts_implementation` picks `grouped_mm` (the default) or `batched_mm`.
    """

    def __init__(self, config: MoEAudioConfig):
        super().__init__()
        output_size = config.audio_hidden_size if config.adapter_output_projection else config.text_config.hidden_size
        self.num_experts = config.num_experts
        self.up_proj = nn.Parameter(
            torch.empty(config.num_experts, config.expert_intermediate_size, config.audio_hidden_size)
        )
        self.down_proj = nn.Parameter(torch.empty(config.num_experts, output_size, config.expert_intermediate_size))
        self.act_fn = ACT2FN["silu"]

    def forward(self, hidden_states, top_k_index, top_k_weights):
        """Eager kernel: each expert that received tokens runs once on them, writing each (token, slot) pair's output
        in its own place; each token's k outputs are then summed in slot order. No `index_add_` (whose accumulation
        order is not fixed on CUDA): results and gradients are bit-identical from run to run on every device."""
        num_tokens, top_k = top_k_index.shape
        pair_outputs = hidden_states.new_zeros(num_tokens, top_k, self.down_proj.shape[1])  # (tokens, k, D)
        for expert in top_k_index.unique().tolist():
            token_index, slot = torch.where(top_k_index == expert)  # (n,), (n,): the n pairs routed to `expert`
            hidden = self.act_fn(nn.functional.linear(hidden_states[token_index], self.up_proj[expert]))  # (n, h)
            pair_outputs[token_index, slot] = nn.functional.linear(hidden, self.down_proj[expert])  # (n, D)
        weighted = pair_outputs * top_k_weights.unsqueeze(-1).to(pair_outputs.dtype)  # (tokens, k, D)
        return weighted.sum(dim=1)  # (tokens, D)


class MoEAudioSharedExpert(nn.Module):
    """The shared aggregation MLP S of eq. 4 that every token uses: S(x) = W_s2 SiLU(W_s1 LN_s(x))."""

    def __init__(self, config: MoEAudioConfig):
        super().__init__()
        output_size = config.audio_hidden_size if config.adapter_output_projection else config.text_config.hidden_size
        self.norm = nn.LayerNorm(config.audio_hidden_size, eps=config.adapter_layer_norm_eps)
        self.up_proj = nn.Linear(config.audio_hidden_size, config.shared_expert_intermediate_size, bias=False)
        self.act_fn = ACT2FN["silu"]
        self.down_proj = nn.Linear(config.shared_expert_intermediate_size, output_size, bias=False)

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(self.norm(audio_features))))


class MoEAdapter(nn.Module):
    """Eqs. 2-5: y = LN(W_P (sum_{i in top-k} G(x)_i E_i(LN(x)) + S(LN_s(x)))).

    S is the shared aggregation MLP that every token uses (Table 4's "Aggregation Block"). With
    `adapter_output_projection=False`, W_P is folded into the experts' and S's output matrices.
    """

    def __init__(self, config: MoEAudioConfig):
        super().__init__()
        eps = config.adapter_layer_norm_eps
        text_hidden_size = config.text_config.hidden_size
        self.router = MoEAudioRouter(config)
        self.input_norm = nn.LayerNorm(config.audio_hidden_size, eps=eps)
        self.experts = MoEAudioExperts(config)
        self.shared_expert = MoEAudioSharedExpert(config) if config.shared_expert_intermediate_size else None
        self.output_projection = (
            nn.Linear(config.audio_hidden_size, text_hidden_size, bias=False)
            if config.adapter_output_projection
            else None
        )
        self.output_norm = nn.LayerNorm(text_hidden_size, eps=eps)

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        _, routing_weights, selected_experts = self.router(audio_features)
        hidden = self.experts(self.input_norm(audio_features), selected_experts, routing_weights)
        if self.shared_expert is not None:
            hidden = hidden + self.shared_expert(audio_features)
        if self.output_projection is not None:
            hidden = self.output_projection(hidden)
        return self.output_norm(hidden)


def load_balancing_loss_func(
    router_logits: torch.Tensor, top_k: int, selected_experts: torch.Tensor | None = None
) -> torch.Tensor:
    """Eqs. 8-10 over the given tokens: L_aux = N * sum_e mean_b(G(x_b)_e) * mean_b(r_{b,e}).

    As in eq. 8, p_{b,e} = G(x_b)_e is the softmax over the k kept logits (zero for experts not chosen), not the
    softmax over all N logits that Switch/Mixtral use. `selected_experts`: the experts the router chose, which a
    selection bias makes differ from the top-k of the logits; by default, that top-k.
    """
    num_experts = router_logits.shape[-1]
    if selected_experts is None:
        selected_experts = torch.topk(router_logits, top_k, dim=-1).indices
    top_k_logits = router_logits.gather(-1, selected_experts)
    routing_probs = torch.zeros_like(router_logits).scatter(-1, selected_experts, torch.softmax(top_k_logits, dim=-1))
    routed = torch.zeros_like(routing_probs).scatter(-1, selected_experts, 1.0)
    expert_importance = routing_probs.mean(dim=0)
    expert_load = routed.mean(dim=0)
    return num_experts * torch.sum(expert_importance * expert_load)


def router_z_loss_func(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's z-loss: mean over tokens of logsumexp(router logits)^2; keeps the logits small."""
    return torch.logsumexp(router_logits, dim=-1).square().mean()


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------

# transformers 5.24 renamed the cache `past_key_values` to `cache`, as an argument and as an output field. This file
# travels with checkpoints and must run on both sides of the rename: the cache reaches the language model through
# `**kwargs` under the installed version's name, whichever of the two the caller used, and comes back under that name.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
OTHER_CACHE_NAME = "past_key_values" if CACHE_FIELD == "cache" else "cache"


def _cache_under_installed_name(kwargs: dict) -> dict:
    if OTHER_CACHE_NAME in kwargs:
        if kwargs.get(CACHE_FIELD) is not None:
            raise ValueError(f"Both `{CACHE_FIELD}` and `{OTHER_CACHE_NAME}` were given: pass the cache once.")
        kwargs[CACHE_FIELD] = kwargs.pop(OTHER_CACHE_NAME)
    return kwargs


@dataclass
class MoEAudioFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(num_windows, encoder_frames, d_model)`): the Whisper encoder's
        output, padding included.
    pooler_output (`torch.FloatTensor` of shape `(num_audio_tokens, hidden_size)`): the adapter's output, one row
        per real audio token, in the order they fill the placeholders.
    router_logits (`torch.FloatTensor` of shape `(num_audio_tokens, num_experts)`): MoE adapter only.
    selected_experts (`torch.LongTensor` of shape `(num_audio_tokens, num_experts_per_tok)`): MoE adapter only.
    """

    router_logits: torch.FloatTensor | None = None
    selected_experts: torch.LongTensor | None = None


@dataclass
class MoEAudioAdapterOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(num_audio_tokens, hidden_size)`): the adapter's output.
    router_logits (`tuple(torch.FloatTensor)`): each router's logits, `(num_audio_tokens, num_experts)`.
    selected_experts (`tuple(torch.LongTensor)`): each router's chosen experts, `(num_audio_tokens, top_k)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    selected_experts: tuple[torch.LongTensor, ...] | None = None


@dataclass
class MoEAudioModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    audio_hidden_states (`torch.FloatTensor` of shape `(num_audio_tokens, hidden_size)`):
        The adapter's output, one row per real audio token, in the order they fill the placeholders.
    aux_loss (`torch.FloatTensor`): load-balancing loss of eq. 10 over the real audio tokens (MoE adapter only).
    router_z_loss (`torch.FloatTensor`): router z-loss over the real audio tokens (MoE adapter only).
    router_logits (`torch.FloatTensor` of shape `(num_audio_tokens, num_experts)`): returned with
        `output_router_logits`.
    selected_experts (`torch.LongTensor` of shape `(num_audio_tokens, num_experts_per_tok)`): the experts each real
        audio token was routed to, returned with `output_router_logits`.
    """

    audio_hidden_states: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    router_z_loss: torch.FloatTensor | None = None
    router_logits: torch.FloatTensor | None = None
    selected_experts: torch.LongTensor | None = None


@dataclass
class MoEAudioCausalLMOutputWithPast(MoeCausalLMOutputWithPast):
    r"""
    loss (`torch.FloatTensor`): next-token loss + router_aux_loss_coef * aux_loss (+ router_z_loss_coef * z-loss).
    aux_loss, router_logits: as in [`MoEAudioModelOutputWithPast`] (one tensor for the adapter's single router).
    router_z_loss, audio_hidden_states, selected_experts: as in [`MoEAudioModelOutputWithPast`].
    """

    router_z_loss: torch.FloatTensor | None = None
    audio_hidden_states: torch.FloatTensor | None = None
    selected_experts: torch.LongTensor | None = None


class MoEAudioPreTrainedModel(PreTrainedModel):
    config_class = MoEAudioConfig
    config: MoEAudioConfig
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MoEAudioFrontend", "DenseAdapter", "MoEAdapter"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # What the router decides, recorded by transformers' output capturing (see `MoEAudioModel.adapt_audio_features`).
    _can_record_outputs = {
        "router_logits": OutputRecorder(MoEAudioRouter, index=0),
        "selected_experts": OutputRecorder(MoEAudioRouter, index=2),
    }
    # Checkpoints of moe-audio up to 0.2.0 hold the shared expert as an `nn.Sequential`, its weights named by position.
    # `from_pretrained` passes this to transformers as `key_mapping` (transformers 5 no longer reads the attribute
    # itself; PEFT still does, so LoRA adapters saved with the adapter in `modules_to_save` load too).
    _checkpoint_conversion_mapping = {
        r"shared_expert\.0\.": "shared_expert.norm.",
        r"shared_expert\.1\.": "shared_expert.up_proj.",
        r"shared_expert\.3\.": "shared_expert.down_proj.",
    }

    @classmethod
    def from_pretrained(cls, *args, key_mapping: dict[str, str] | None = None, **kwargs):
        key_mapping = {**cls._checkpoint_conversion_mapping, **(key_mapping or {})}
        return super().from_pretrained(*args, key_mapping=key_mapping, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Always in the current layout: transformers would otherwise rename back what `key_mapping` renamed at load
        # (`save_original_format`), so a re-saved old checkpoint would keep the positional names forever.
        kwargs.setdefault("save_original_format", False)
        # transformers writes the `auto_map` entry of the saved class only; a checkpoint carrying this code should
        # also load as the base model and through the any-to-any pipeline.
        if self.is_remote_code():
            module = type(self).__module__.split(".")[-1]
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{module}.MoEAudioModel",
                "AutoModelForCausalLM": f"{module}.MoEAudioForCausalLM",
                "AutoModelForMultimodalLM": f"{module}.MoEAudioForCausalLM",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, MoEAudioExperts):
            init.normal_(module.up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, MoEAudioRouter):
            init.normal_(module.weight, mean=0.0, std=std)


class MoEAudioModel(MoEAudioPreTrainedModel):
    """Whisper encoder + frontend + adapter + language model, without a language-modelling head."""

    def __init__(self, config: MoEAudioConfig):
        super().__init__(config)
        self.audio_tower = WhisperEncoder(config.audio_config)
        self.frontend = MoEAudioFrontend(config)
        self.adapter = MoEAdapter(config) if config.adapter_type == "moe" else DenseAdapter(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_audio_features(
        self,
        input_features: torch.FloatTensor,
        input_features_mask: torch.Tensor | None = None,
        semantic_audio_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> "MoEAudioFeaturesOutput":
        """Encode Whisper windows of log-mel features (30 s, or the model's shorter window) into audio embeddings, one
        row per real audio token.

        Called as transformers' audio models are (serving engines such as vLLM pass `return_dict` and other
        keyword arguments): `return_dict=False` gives a tuple, other keyword arguments are not used.

        Args:
            input_features: `(num_windows, num_mel_bins, 2 * audio_config.max_source_positions)` log-mel windows
                (3000 frames for 30 s; a clip longer than a window spans several consecutive windows).
            input_features_mask: `(num_windows, frames)`, 1 on real mel frames; padded frames produce no token.
            semantic_audio_ids: `(num_windows, audio_tokens_per_window)` discrete semantic tokens aligned with the
                12.5 Hz audio tokens, for a model with `semantic_vocab_size > 0`; left out, a model with a codebook
                (`semantic_codebook_layer`) computes them from the same encoder pass.

        Returns:
            [`MoEAudioFeaturesOutput`]: `pooler_output` holds the audio embeddings, one row per real audio token;
            `router_logits` and `selected_experts` are `None` for the dense adapter.
        """
        self._check_audio_inputs(input_features, input_features_mask)
        vocab_size, codebook_layer = self.config.semantic_vocab_size, self.config.semantic_codebook_layer
        if semantic_audio_ids is not None and not vocab_size:
            raise ValueError(
                "semantic_audio_ids were given but this model has no semantic stream (semantic_vocab_size=0), so they "
                "would be ignored: leave them out, or use a model made with a semantic_vocab_size (moe-audio init "
                "--semantic_vocab_size N, or moe-audio semantic-fit)."
            )
        if vocab_size and semantic_audio_ids is None and codebook_layer is None:
            raise ValueError(
                "This model sums discrete semantic tokens with the audio features (semantic_vocab_size="
                f"{vocab_size}) but no `semantic_audio_ids` were given and it has no codebook to compute them: pass "
                "the semantic tokenizer's ids for each window, shape (num_windows, audio_tokens_per_window)."
            )
        # Only the codebook's layer is needed, from the same encoder pass, and only when the ids are not given.
        hidden_layer = codebook_layer if vocab_size and semantic_audio_ids is None else None
        encoded, stacked, token_mask, stacked_layer = self.encode_audio(input_features, input_features_mask,
                                                                        hidden_layer)

        semantic_ids = None
        if stacked_layer is not None:
            semantic_ids = self.frontend.nearest_codebook_entries(stacked_layer[token_mask])  # (tokens,)
        elif vocab_size:
            if tuple(semantic_audio_ids.shape) != tuple(token_mask.shape):
                raise ValueError(
                    f"semantic_audio_ids has shape {tuple(semantic_audio_ids.shape)} but the audio windows give "
                    f"{tuple(token_mask.shape)} (windows, tokens per window); align one id with each 12.5 Hz token."
                )
            semantic_ids = semantic_audio_ids.to(stacked.device)[token_mask]  # (tokens,)
            outside = (semantic_ids < 0) | (semantic_ids >= vocab_size)
            if not torch.compiler.is_compiling() and bool(outside.any()):
                raise ValueError(
                    f"semantic_audio_ids holds the id {int(semantic_ids[outside][0])}, outside this model's semantic "
                    f"vocabulary (0 to {vocab_size - 1}): use the semantic tokenizer the model was made for, or a "
                    "model whose semantic_vocab_size is that tokenizer's codebook size."
                )

        # Only real audio tokens go through the frontend and the adapter, so padding never reaches the router.
        audio_features = self.frontend(stacked[token_mask], semantic_ids)
        adapted = self.adapt_audio_features(
            audio_features, output_router_logits=True, output_selected_experts=True, return_dict=True
        )
        # One entry per router that ran: none for the dense adapter, one for the MoE adapter.
        if len(adapted.router_logits) > 1:
            raise RuntimeError(f"{len(adapted.router_logits)} routers ran for one adapter call; expected at most 1.")
        return MoEAudioFeaturesOutput(
            last_hidden_state=encoded,
            pooler_output=adapted.last_hidden_state,
            router_logits=adapted.router_logits[0] if adapted.router_logits else None,
            selected_experts=adapted.selected_experts[0] if adapted.selected_experts else None,
        )

    def encode_audio(self, input_features: torch.FloatTensor, input_features_mask: torch.Tensor | None = None,
                     hidden_layer: int | None = None):
        """One pass of the Whisper encoder over `(windows, mels, frames)` log-mel windows, its frames stacked.

        Returns `(encoded, stacked, token_mask, stacked_layer)`: the encoder's output `(windows, encoder_frames,
        d_model)`; the same with `frame_stacking_factor` frames stacked, `(windows, tokens, stacked_audio_size)`; the
        real audio tokens `(windows, tokens)`; with `hidden_layer`, the output of that encoder layer
        (`hidden_states[hidden_layer]`: 0 is the encoder's input, the last its output) stacked the same way, else None.
        """
        stack = self.config.frame_stacking_factor
        # The processor gives float32 features; a model loaded in bf16 or fp16 takes them in its own dtype.
        input_features = input_features.to(self.audio_tower.device, self.audio_tower.dtype)
        outputs = self.audio_tower(input_features, output_hidden_states=hidden_layer is not None)
        encoded = outputs.last_hidden_state  # (windows, encoder_frames, d_model)
        num_windows, num_frames, width = encoded.shape
        stacked = encoded.reshape(num_windows, num_frames // stack, width * stack)
        stacked_layer = None
        if hidden_layer is not None:
            stacked_layer = outputs.hidden_states[hidden_layer].reshape(stacked.shape)

        if input_features_mask is None:
            token_mask = torch.ones(stacked.shape[:2], dtype=torch.bool, device=stacked.device)
        else:
            lengths = num_audio_tokens(input_features_mask.sum(-1).to(stacked.device), stack)
            token_mask = torch.arange(stacked.shape[1], device=stacked.device)[None, :] < lengths[:, None]
        return encoded, stacked, token_mask, stacked_layer

    @capture_outputs
    def adapt_audio_features(self, audio_features: torch.Tensor, **kwargs) -> "MoEAudioAdapterOutput":
        """The adapter on the fused audio features, `(num_audio_tokens, audio_hidden_size)`.

        With `output_router_logits=True` / `output_selected_experts=True`, transformers' output capturing adds what
        each router returned (`_can_record_outputs`), one tuple entry per router that ran.
        """
        return MoEAudioAdapterOutput(last_hidden_state=self.adapter(audio_features))

    def _check_audio_inputs(self, input_features, input_features_mask) -> None:
        """What the processor makes, checked here, so that hand-built inputs fail with a message, not deep inside."""
        expected = (self.config.audio_config.num_mel_bins, 2 * self.config.audio_config.max_source_positions)
        if not isinstance(input_features, torch.Tensor) or not input_features.is_floating_point():
            kind = input_features.dtype if isinstance(input_features, torch.Tensor) else type(input_features).__name__
            raise TypeError(f"input_features must be a float tensor (got {kind}); build the inputs with the "
                            "MoEAudioProcessor.")
        if input_features.dim() != 3 or tuple(input_features.shape[1:]) != expected:
            raise ValueError(
                f"input_features has shape {tuple(input_features.shape)}; the audio encoder takes (windows, "
                f"{expected[0]}, {expected[1]}): log-mel windows as the MoEAudioProcessor makes them."
            )
        if input_features_mask is not None and (
            not isinstance(input_features_mask, torch.Tensor)
            or tuple(input_features_mask.shape) != (input_features.shape[0], expected[1])
        ):
            shape = tuple(input_features_mask.shape) if isinstance(input_features_mask, torch.Tensor) else None
            # transformers' pipelines batch rows by keeping the first window of each row's input_features.
            window_seconds = expected[1] // 100  # 100 mel frames per second
            batched_by_a_pipeline = shape is not None and shape[0] > input_features.shape[0]
            hint = (f" With a pipeline, batch_size > 1 takes clips of one window at most ({window_seconds} s for this "
                    "model): pass longer clips with batch_size=1." if batched_by_a_pipeline else "")
            raise ValueError(f"input_features_mask has shape {shape}; it must be (windows, {expected[1]}), one row "
                             f"per window of input_features ({input_features.shape[0]}).{hint}")

    def _check_text_inputs(self, input_ids, input_features, cache) -> None:
        """On the first pass only: later generation steps feed back tokens the model itself produced."""
        if input_ids is None or torch.compiler.is_compiling() or (cache is not None and cache.get_seq_length() > 0):
            return
        vocab_size = self.config.text_config.vocab_size
        outside = (input_ids < 0) | (input_ids >= vocab_size)
        if bool(outside.any()):
            raise ValueError(f"input_ids holds the id {int(input_ids[outside][0])}, outside the vocabulary (0 to "
                             f"{vocab_size - 1}); encode the text with this model's tokenizer.")
        if input_features is None and self.config.audio_token_id is not None and bool(
            (input_ids == self.config.audio_token_id).any()
        ):
            raise ValueError(
                "input_ids holds audio placeholder tokens but no input_features were given, so the placeholders would "
                "be read as text; pass the input_features (and input_features_mask) the processor made with them."
            )

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, num_audio_embeds):
        """Where the audio embeddings go; checks that there is exactly one placeholder per audio embedding."""
        if self.config.audio_token_id is None:
            raise ValueError(
                "config.audio_token_id is not set, so the model cannot tell where audio goes: set it to the id of the "
                "audio placeholder token of your tokenizer."
            )
        if input_ids is None:
            audio_token_embed = self.get_input_embeddings()(
                torch.tensor(self.config.audio_token_id, device=inputs_embeds.device)
            )
            placeholder_mask = (inputs_embeds == audio_token_embed).all(-1)
        else:
            placeholder_mask = input_ids == self.config.audio_token_id
        # transformers' own check, as its audio models use it: traced or compiled, it stays a torch._check.
        torch_compilable_check(
            placeholder_mask.sum() == num_audio_embeds,
            lambda: f"The text holds {int(placeholder_mask.sum())} audio placeholder tokens but the audio gives "
            f"{num_audio_embeds} embeddings; build the inputs with this model's MoEAudioProcessor, which expands each "
            "audio placeholder to the right count (a processor with another frame_stacking_factor gives other counts).",
        )
        return placeholder_mask.unsqueeze(-1).expand_as(inputs_embeds)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        semantic_audio_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MoEAudioModelOutputWithPast:
        """Audio embeddings replace the placeholders, then the language model runs; `kwargs` go to the language model,
        the cache among them (`cache`, or `past_key_values`, its name before transformers 5.24)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        self._check_text_inputs(input_ids, input_features, kwargs.get(CACHE_FIELD, kwargs.get(OTHER_CACHE_NAME)))
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        audio_embeds = router_logits = selected_experts = aux_loss = router_z_loss = None
        if input_features is not None:
            audio_outputs = self.get_audio_features(input_features, input_features_mask, semantic_audio_ids)
            audio_embeds = audio_outputs.pooler_output
            router_logits, selected_experts = audio_outputs.router_logits, audio_outputs.selected_experts
            placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds, audio_embeds.shape[0])
            inputs_embeds = inputs_embeds.masked_scatter(
                placeholder_mask, audio_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            )
            if router_logits is not None and router_logits.shape[0] > 0:
                aux_loss = load_balancing_loss_func(router_logits, self.config.num_experts_per_tok, selected_experts)
                router_z_loss = router_z_loss_func(router_logits)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **_cache_under_installed_name(kwargs),
        )
        return MoEAudioModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_hidden_states=audio_embeds,
            aux_loss=aux_loss,
            router_z_loss=router_z_loss,
            router_logits=router_logits if output_router_logits else None,
            selected_experts=selected_experts if output_router_logits else None,
            **{CACHE_FIELD: outputs.get(CACHE_FIELD)},
        )


class MoEAudioForCausalLM(MoEAudioPreTrainedModel, GenerationMixin):
    """[`MoEAudioModel`] with a language-modelling head; the loss adds the weighted router losses (eq. 6)."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: MoEAudioConfig):
        super().__init__(config)
        self.model = MoEAudioModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        # lambda of eq. 6 (and the z-loss weight) as the loss uses them now: a training schedule changes these
        # attributes, never the config, which keeps the configured values that `save_pretrained` writes.
        self.router_aux_loss_coef = config.router_aux_loss_coef
        self.router_z_loss_coef = config.router_z_loss_coef
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_audio_features(self, input_features, input_features_mask=None, semantic_audio_ids=None, **kwargs):
        return self.model.get_audio_features(input_features, input_features_mask, semantic_audio_ids, **kwargs)

    @staticmethod
    def _router_loss_share(labels: torch.Tensor, num_items_in_batch) -> torch.Tensor | float:
        """This batch's share of the router losses when the loss is normalised over several batches.

        Given `num_items_in_batch`, the Trainer sums the losses of the gradient-accumulation micro-batches (and of
        the DDP ranks) instead of averaging them; the next-token loss is divided by that count, so the router losses
        are weighted by this batch's share of it. They then add up to one weighted mean, whatever the accumulation
        steps or the number of processes.
        """
        if num_items_in_batch is None:
            return 1.0
        local_items = (labels[..., 1:] != -100).sum()
        return local_items.to(torch.float32) / torch.as_tensor(num_items_in_batch, device=labels.device)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        semantic_audio_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MoEAudioCausalLMOutputWithPast:
        """[`MoEAudioModel.forward`], then the logits and, with `labels`, the loss of eq. 6."""
        outputs = self.model(
            input_ids=input_ids,
            input_features=input_features,
            input_features_mask=input_features_mask,
            semantic_audio_ids=semantic_audio_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=output_router_logits,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))

        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.text_config.vocab_size, **kwargs)
            router_loss = torch.zeros((), device=loss.device)
            if outputs.aux_loss is not None:
                router_loss = router_loss + self.router_aux_loss_coef * outputs.aux_loss.to(loss.device)
            if outputs.router_z_loss is not None and self.router_z_loss_coef:
                router_loss = router_loss + self.router_z_loss_coef * outputs.router_z_loss.to(loss.device)
            loss = loss + self._router_loss_share(labels, kwargs.get("num_items_in_batch")) * router_loss

        return MoEAudioCausalLMOutputWithPast(
            loss=loss,
            aux_loss=outputs.aux_loss,
            router_z_loss=outputs.router_z_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_hidden_states=outputs.audio_hidden_states,
            router_logits=outputs.router_logits,
            selected_experts=outputs.selected_experts,
            **{CACHE_FIELD: outputs.get(CACHE_FIELD)},
        )


# ---------------------------------------------------------------------------------------------------------------
# Expert kernels: transformers' `grouped_mm` and `batched_mm` algorithms (transformers/integrations/moe.py) for
# rectangular experts, registered into `RectangularExpertsInterface`. They can go once transformers' own kernels
# take an output width that differs from the input width (moe-audio's docs/upstream-rectangular-experts.md).
# Shapes: S = tokens * k (token, expert) pairs, d = input width, h = expert width, D = output width, E = experts.
# ---------------------------------------------------------------------------------------------------------------


def _grouped_mm(inputs: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """transformers' grouped matmul: torch's kernel where it runs, else the library's fallback operator (torch.compile
    takes torch's kernel in bf16 only, and torch has no float64 kernel)."""
    if weights.dtype == torch.float64:
        return torch.ops.transformers.grouped_mm_fallback(inputs.to(weights.dtype), weights, offs=offsets)
    return transformers_moe._grouped_mm(inputs, weights, offs=offsets)


def _grouped_mm_per_expert(left: torch.Tensor, right: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(E, m, n): for each expert e, left[:, pairs of e] @ right[pairs of e], the weight gradients' grouped matmul
    (grouped along the pairs, which both operands share), written straight in the experts' parameter layout."""
    if left.dtype == torch.float64 or (is_torchdynamo_compiling() and left.dtype != torch.bfloat16):
        starts = [0, *offsets.tolist()[:-1]]  # no grouped kernel here (float64, or compiled outside bf16)
        return torch.stack([left[:, a:b] @ right[a:b] for a, b in zip(starts, offsets.tolist())])
    grouped_mm = getattr(nn.functional, "grouped_mm", None) or torch._grouped_mm
    return grouped_mm(left, right, offs=offsets)


def _expert_slices(offsets: torch.Tensor):
    """(expert, slice of the sorted pairs) for every expert, in expert order; an expert without pairs gets an empty
    slice, on which the matmuls below give empty outputs and zero weight gradients."""
    ends = offsets.tolist()
    return [(expert, slice(start, end)) for expert, (start, end) in enumerate(zip([0, *ends[:-1]], ends))]


def _weighted_silu_backward(grad_weighted, pre_activation, pair_weights):
    """Backward of `silu(pre_activation) * pair_weights` (rows are pairs): the gradients of the pre-activation and
    of the pair weights, and the activation itself, recomputed rather than kept from the forward."""
    activation = nn.functional.silu(pre_activation)  # (n, h)
    sigmoid = torch.sigmoid(pre_activation)  # (n, h)
    grad_pre = grad_weighted * pair_weights.unsqueeze(-1) * sigmoid * (1 + pre_activation * (1 - sigmoid))  # (n, h)
    return grad_pre, activation, (grad_weighted * activation).sum(dim=-1)  # (n, h), (n, h), (n,)


class SortedExpertsFunction(torch.autograd.Function):
    """The routed experts over (token, expert) pairs sorted by expert, with a backward that materialises only what it
    needs: the routing weights applied to the h-wide hidden (not the D-wide output), the token rows gathered again
    in the backward rather than kept k times over, and the weight gradients written straight in the parameters'
    layout. Two schedules of the same arithmetic, both with a fixed order of every sum (no atomic scatter-add), so
    results and gradients are bit-identical from run to run:

    - all experts at once (accelerators, torch.compile): grouped matmuls over all pairs, each token's k outputs
      summed in slot order by a fixed reshape-and-sum;
    - one expert at a time (`one_expert_at_a_time`, eager on the CPU): each expert's matmuls on its slice of the
      pairs, added into the token rows with `index_add_`, which runs serially over the pairs on the CPU. Every
      buffer is then one expert's slice: on the CPU a fresh buffer of tokens x k rows is what costs (over 32 MB the
      allocator maps new pages on every call, and touching them took as long as the gathers themselves).
    """

    @staticmethod
    def forward(hidden_states, top_k_index, top_k_weights, up_proj, down_proj, one_expert_at_a_time):
        num_tokens, top_k = top_k_index.shape
        expert_of_pair, order = torch.sort(top_k_index.reshape(-1), stable=True)  # (S,), (S,)
        # End of each expert's slice: a search in the sorted ids keeps the shape static (bincount would break graphs).
        experts = torch.arange(up_proj.shape[0], device=expert_of_pair.device)
        offsets = torch.searchsorted(expert_of_pair, experts, right=True).to(torch.int32)  # (E,)
        token_of_pair = order // top_k  # (S,): pair (token t, slot j) is t * k + j before sorting
        pair_weights = top_k_weights.reshape(-1)[order].to(up_proj.dtype)  # (S,)
        inverse_order = torch.empty_like(order)  # (S,)
        inverse_order[order] = torch.arange(order.numel(), device=order.device)
        if one_expert_at_a_time:
            # Summed in float32 at least: index_add_ rounds after every addition, a reshape-and-sum once per token.
            sum_dtype = torch.promote_types(up_proj.dtype, torch.float32)
            output = hidden_states.new_zeros(num_tokens, down_proj.shape[1], dtype=sum_dtype)  # (tokens, D)
            pre_activation = hidden_states.new_empty(order.numel(), up_proj.shape[1], dtype=up_proj.dtype)  # (S, h)
            for expert, pairs in _expert_slices(offsets):
                tokens = token_of_pair[pairs]  # (n,)
                torch.mm(hidden_states[tokens].to(up_proj.dtype), up_proj[expert].t(), out=pre_activation[pairs])
                weighted_hidden = nn.functional.silu(pre_activation[pairs]) * pair_weights[pairs, None]  # (n, h)
                output.index_add_(0, tokens, (weighted_hidden @ down_proj[expert].t()).to(sum_dtype))  # (n, D)
        else:
            pair_inputs = hidden_states[token_of_pair].to(up_proj.dtype)  # (S, d)
            pre_activation = _grouped_mm(pair_inputs, up_proj.transpose(1, 2), offsets)  # (S, h)
            weighted_hidden = nn.functional.silu(pre_activation) * pair_weights.unsqueeze(-1)  # (S, h)
            pair_outputs = _grouped_mm(weighted_hidden, down_proj.transpose(1, 2), offsets)  # (S, D)
            output = pair_outputs[inverse_order].view(num_tokens, top_k, -1).sum(dim=1)  # (tokens, D)
        return output.to(hidden_states.dtype), (offsets, token_of_pair, inverse_order, pre_activation, pair_weights)

    @staticmethod
    def setup_context(ctx, inputs, output):
        hidden_states, top_k_index, top_k_weights, up_proj, down_proj, one_expert_at_a_time = inputs
        ctx.save_for_backward(hidden_states, *output[1], up_proj, down_proj)
        ctx.shape, ctx.weights_dtype = top_k_index.shape, top_k_weights.dtype
        ctx.one_expert_at_a_time = one_expert_at_a_time
        ctx.mark_non_differentiable(*output[1])

    @staticmethod
    def backward(ctx, grad_output, _):
        hidden_states, offsets, token_of_pair, inverse_order, pre_activation, pair_weights, up_proj, down_proj = (
            ctx.saved_tensors)
        num_tokens, top_k = ctx.shape
        grad_output = grad_output.to(down_proj.dtype)  # (tokens, D)
        if ctx.one_expert_at_a_time:
            sum_dtype = torch.promote_types(up_proj.dtype, torch.float32)  # as in the forward
            grad_hidden = grad_output.new_zeros(num_tokens, up_proj.shape[2], dtype=sum_dtype)  # (tokens, d)
            grad_pair_weights = grad_output.new_empty(token_of_pair.numel())  # (S,)
            grad_up, grad_down = torch.empty_like(up_proj), torch.empty_like(down_proj)  # (E, h, d), (E, D, h)
            for expert, pairs in _expert_slices(offsets):
                tokens = token_of_pair[pairs]  # (n,)
                grad_pairs = grad_output[tokens]  # (n, D)
                grad_pre, activation, grad_pair_weights[pairs] = _weighted_silu_backward(
                    grad_pairs @ down_proj[expert], pre_activation[pairs], pair_weights[pairs])
                grad_hidden.index_add_(0, tokens, (grad_pre @ up_proj[expert]).to(sum_dtype))  # (n, d)
                torch.mm(grad_pre.t(), hidden_states[tokens].to(up_proj.dtype), out=grad_up[expert])  # (h, d)
                torch.mm(grad_pairs.t(), activation * pair_weights[pairs, None], out=grad_down[expert])  # (D, h)
        else:
            grad_pairs = grad_output[token_of_pair]  # (S, D), sorted by expert
            grad_pre, activation, grad_pair_weights = _weighted_silu_backward(
                _grouped_mm(grad_pairs, down_proj, offsets), pre_activation, pair_weights)  # (S, h), (S, h), (S,)
            grad_pair_inputs = _grouped_mm(grad_pre, up_proj, offsets)  # (S, d)
            grad_hidden = grad_pair_inputs[inverse_order].view(num_tokens, top_k, -1).sum(dim=1)  # (tokens, d)
            pair_inputs = hidden_states[token_of_pair].to(up_proj.dtype)  # (S, d)
            grad_up = _grouped_mm_per_expert(grad_pre.t(), pair_inputs, offsets)  # (E, h, d)
            grad_down = _grouped_mm_per_expert(grad_pairs.t(), activation * pair_weights[:, None], offsets)  # (E, D, h)
        grad_weights = grad_pair_weights[inverse_order].view(num_tokens, top_k)  # (tokens, k)
        return (grad_hidden.to(hidden_states.dtype), None, grad_weights.to(ctx.weights_dtype), grad_up, grad_down,
                None)


def grouped_mm_experts_forward(experts, hidden_states, top_k_index, top_k_weights):
    """Sort the (token, expert) pairs by expert and run each expert once on its contiguous slice
    (`SortedExpertsFunction`): all experts at once with grouped matmuls on accelerators and under torch.compile, one
    expert at a time in eager mode on the CPU."""
    one_expert_at_a_time = hidden_states.device.type == "cpu" and not is_torchdynamo_compiling()
    output, _ = SortedExpertsFunction.apply(hidden_states, top_k_index, top_k_weights, experts.up_proj,
                                            experts.down_proj, one_expert_at_a_time)
    return output  # (tokens, D)


def batched_mm_experts_forward(experts, hidden_states, top_k_index, top_k_weights):
    """Gather each (token, expert) pair's weights and run one batched matmul: fast for few tokens, memory-hungry.

    The gradients of the expert weights, summed over a gather with repeated indices, vary in their last bits with
    the thread count and scheduling: train with `grouped_mm` or eager where runs must repeat bit for bit."""
    num_tokens, top_k = top_k_index.shape
    expert_of_pair = top_k_index.reshape(-1)  # (S,)
    pair_inputs = hidden_states.repeat_interleave(top_k, dim=0).to(experts.up_proj.dtype)  # (S, d)
    up = experts.up_proj[expert_of_pair]  # (S, h, d)
    hidden = experts.act_fn(torch.bmm(up, pair_inputs.unsqueeze(-1)).squeeze(-1))  # (S, h)
    down = experts.down_proj[expert_of_pair]  # (S, D, h)
    pair_outputs = torch.bmm(down, hidden.unsqueeze(-1)).squeeze(-1)  # (S, D)
    pair_outputs = pair_outputs * top_k_weights.reshape(-1, 1).to(pair_outputs.dtype)  # (S, D)
    return pair_outputs.view(num_tokens, top_k, -1).sum(dim=1).to(hidden_states.dtype)  # (tokens, D)


RectangularExpertsInterface.register("grouped_mm", grouped_mm_experts_forward)
RectangularExpertsInterface.register("batched_mm", batched_mm_experts_forward)


__all__ = [
    "DenseAdapter",
    "MoEAdapter",
    "MoEAudioExperts",
    "MoEAudioForCausalLM",
    "MoEAudioFrontend",
    "MoEAudioModel",
    "MoEAudioPreTrainedModel",
    "MoEAudioRouter",
    "MoEAudioSharedExpert",
    "load_balancing_loss_func",
]
