"""What vLLM's Transformers backend needs of a remote-code model (vLLM docs, "Writing custom models"), checked on CPU.

vLLM loads `auto_map["AutoModel"]` (the base model, which must hold the customisation), plugs its own attention in
through transformers' `AttentionInterface` (the model must allow it: `_supports_attention_backend`), passes its
per-step data as keyword arguments of the model's forward that must reach every attention call, and swaps in its
fused kernels for experts stored as 3-D parameters and called as `experts(hidden_states, top_k_index,
top_k_weights)`. vLLM itself needs CUDA; here a registered attention function that records its calls and delegates to
sdpa stands in for vLLM's.
"""

import inspect
import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AttentionInterface, AutoModel, AutoModelForCausalLM, AutoProcessor
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


RECORDING_ATTENTION = "moe_audio_test_recording_sdpa"
SR = 16000


@pytest.fixture(scope="module")
def attention_calls():
    """Each call of the registered attention function: (the attention module, the keyword arguments it got).

    Registered with sdpa's mask: without a mask function of its own, transformers hands a new attention function no
    padding mask at all (an engine such as vLLM keeps its own batch metadata instead)."""
    calls = []

    def recording_sdpa(module, query, key, value, attention_mask, **kwargs):
        calls.append((module, kwargs))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(RECORDING_ATTENTION, recording_sdpa)
    AttentionMaskInterface.register(RECORDING_ATTENTION, sdpa_mask)
    yield calls
    AttentionInterface._global_mapping.pop(RECORDING_ATTENTION)
    AttentionMaskInterface._global_mapping.pop(RECORDING_ATTENTION)


@pytest.fixture(scope="module")
def served(tiny_checkpoint, attention_calls):
    return AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True, attn_implementation=RECORDING_ATTENTION)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint):
    """Two rows of different lengths (left-padded), each with a clip."""
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal(int(seconds * SR)) * 0.1).astype(np.float32) for seconds in (0.7, 2.3)]
    text = [f"Listen: {processor.audio_token} What is it?", f"{processor.audio_token} Again, and what now?"]
    return processor(text=text, audio=clips, sampling_rate=SR)


def llm_attention_modules(model) -> list[nn.Module]:
    return [layer.self_attn for layer in model.language_model.layers]


def calls_per_llm_layer(model, calls) -> list[list[dict]]:
    """The keyword arguments of each call, grouped by the language model's attention layer that made it."""
    return [[kwargs for module, kwargs in calls if module is attention] for attention in llm_attention_modules(model)]


def test_the_checkpoint_names_its_base_model_which_holds_the_customisation(tiny_checkpoint, served, inputs):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_moe_audio.MoEAudioModel"
    assert type(served).__name__ == "MoEAudioModel"
    assert type(served).is_backend_compatible() and type(served)._supports_attention_backend
    assert served.config._attn_implementation == served.config.text_config._attn_implementation == RECORDING_ATTENTION
    # The head model adds the language-modelling head and nothing else: what the audio does happens in the base model.
    head_model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    assert [name for name, _ in head_model.named_children()] == ["model", "lm_head"]
    with torch.no_grad():
        hidden = served(**inputs).last_hidden_state
        assert torch.allclose(head_model(**inputs).logits, head_model.lm_head(hidden), atol=1e-5)
        text_only = served(inputs_embeds=served.get_input_embeddings()(inputs["input_ids"]),
                           attention_mask=inputs["attention_mask"]).last_hidden_state
    assert not torch.allclose(hidden, text_only), "the base model must put the audio in place of the placeholders"


def test_every_llm_layer_calls_the_plugged_attention_with_the_callers_keyword_arguments(
    served, reference, attention_calls, inputs
):
    engine_state = object()  # what an engine hands its attention layers, e.g. vLLM's `attention_instances`
    attention_calls.clear()
    with torch.no_grad():
        hidden = served(**inputs, attention_instances=engine_state).last_hidden_state
        expected = reference(**inputs).last_hidden_state

    per_layer = calls_per_llm_layer(served, attention_calls)
    assert [len(calls) for calls in per_layer] == [1] * served.config.text_config.num_hidden_layers
    assert all(calls[0]["attention_instances"] is engine_state for calls in per_layer)
    assert all(calls[0]["position_ids"].shape[-1] == inputs["input_ids"].shape[1] for calls in per_layer)
    assert torch.equal(hidden, expected)


def test_packed_sequence_arguments_reach_every_llm_layer(served, reference, attention_calls, inputs):
    """As an engine calls it: embeddings it merged itself, positions, varlen (cu_seqlens) arguments, no cache, tuples."""
    input_ids = inputs["input_ids"][1:]  # the unpadded row
    length = input_ids.shape[1]
    embeds = served.get_input_embeddings()(input_ids)
    packed = {
        "position_ids": torch.arange(length)[None],
        "cu_seq_lens_q": torch.tensor([0, length], dtype=torch.int32),
        "cu_seq_lens_k": torch.tensor([0, length], dtype=torch.int32),
        "max_length_q": length,
        "max_length_k": length,
    }
    attention_calls.clear()
    with torch.no_grad():
        outputs = served(inputs_embeds=embeds, use_cache=False, return_dict=False, **packed)
        expected = reference(inputs_embeds=embeds, use_cache=False, position_ids=packed["position_ids"])

    for calls in calls_per_llm_layer(served, attention_calls):
        (kwargs,) = calls
        for name, value in packed.items():
            assert kwargs[name] is value, name
    assert isinstance(outputs, tuple) and torch.equal(outputs[0], expected.last_hidden_state)


def test_the_experts_are_3d_parameters_called_with_the_routing(served, inputs):
    adapter = served.adapter
    experts = adapter.experts  # vLLM looks for the `experts` attribute of the sparse block
    parameters = dict(experts.named_parameters(recurse=False))
    assert parameters and len(parameters) == len(list(experts.parameters())), "no weights in sub-modules"
    for name, parameter in parameters.items():
        assert isinstance(parameter, nn.Parameter) and parameter.dim() == 3, name
        assert parameter.shape[0] == served.config.num_experts, name
    assert list(inspect.signature(experts.forward).parameters) == ["hidden_states", "top_k_index", "top_k_weights"]

    received = []
    handle = experts.register_forward_pre_hook(lambda module, args, kwargs: received.append((args, kwargs)),
                                               with_kwargs=True)
    try:
        with torch.no_grad():
            outputs = served(**inputs, output_router_logits=True)
    finally:
        handle.remove()
    ((args, kwargs),) = received
    assert kwargs == {} and len(args) == 3
    hidden_states, top_k_index, top_k_weights = args
    num_tokens = outputs.selected_experts.shape[0]
    assert hidden_states.shape == (num_tokens, served.config.audio_hidden_size)
    assert torch.equal(top_k_index, outputs.selected_experts)
    assert top_k_weights.shape == top_k_index.shape and top_k_weights.is_floating_point()
    assert torch.allclose(top_k_weights.sum(-1), torch.ones(num_tokens))


def test_audio_features_come_per_clip_as_a_serving_engine_asks_for_them(tiny_checkpoint, served):
    """vLLM processes each clip on its own (asking for the replacement offsets), counts the placeholder tokens of each
    replacement, and calls `get_audio_features(input_features, return_dict=True, **other_fields)` per clip."""
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    rng = np.random.default_rng(2)
    clips = [(rng.standard_normal(int(seconds * SR)) * 0.1).astype(np.float32) for seconds in (0.5, 3.1)]
    pieces = []
    for clip in clips:
        alone = processor(text=[processor.audio_token], audio=[clip], sampling_rate=SR,
                          return_text_replacement_offsets=True)
        (offset,) = alone["text_replacement_offsets"][0]
        replacement_ids = processor.tokenizer(offset["replacement"], add_special_tokens=False)["input_ids"]
        num_tokens = replacement_ids.count(processor.audio_token_id)
        fields = {name: alone[name] for name in ("input_features_mask",)}
        with torch.no_grad():
            features = served.get_audio_features(alone["input_features"], return_dict=True, **fields)
            as_tuple = served.get_audio_features(alone["input_features"], return_dict=False, **fields)
        assert offset["type"] == "audio" and features.pooler_output.shape[0] == num_tokens > 0
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], features.pooler_output)
        pieces.append(features.pooler_output)

    together = processor(text=[f"{processor.audio_token} {processor.audio_token}"], audio=clips, sampling_rate=SR)
    with torch.no_grad():
        audio_embeds = served(**together).audio_hidden_states
    assert torch.allclose(torch.cat(pieces), audio_embeds, atol=1e-4)  # batched matmuls round differently
