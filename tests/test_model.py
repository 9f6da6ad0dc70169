"""MoEAudioModel / MoEAudioForCausalLM: placeholders, batches, losses, generation, saving and loading."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from modeling_moe_audio import MoEAudioConfig, MoEAudioForCausalLM, MoEAudioModel

from helpers import make_audio_batch, make_input_ids, tiny_config, tiny_model, tokens_for


def audio_inputs(config, mel_lengths, prompt_lengths, seed=0, padding_side="right", rows_with_audio=None):
    """A batch whose row i holds window i's audio; rows listed as False in `rows_with_audio` are text only."""
    rows_with_audio = rows_with_audio or [True] * len(prompt_lengths)
    features, mask = make_audio_batch(config, mel_lengths, seed=seed)
    counts = iter(tokens_for(mel_lengths, config))
    per_row = [next(counts) if has_audio else 0 for has_audio in rows_with_audio]
    input_ids, attention_mask = make_input_ids(config, per_row, prompt_lengths, seed=seed, padding_side=padding_side)
    return dict(input_ids=input_ids, attention_mask=attention_mask, input_features=features, input_features_mask=mask)


@pytest.mark.parametrize("adapter_type", ["moe", "dense"])
def test_both_adapters_behind_the_same_model(adapter_type):
    model = tiny_model(adapter_type=adapter_type)
    inputs = audio_inputs(model.config, [3000, 800], [4, 7])
    out = model(**inputs, labels=inputs["input_ids"], output_router_logits=True)
    assert out.logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert out.audio_hidden_states.shape == (sum(tokens_for([3000, 800], model.config)), 64)
    if adapter_type == "moe":
        assert out.aux_loss is not None and out.router_logits is not None
        assert out.selected_experts.shape == (out.audio_hidden_states.shape[0], model.config.num_experts_per_tok)
    else:
        assert out.aux_loss is None and out.router_logits is None and out.selected_experts is None
    out.loss.backward()
    assert model.model.adapter.output_norm.weight.grad is not None


def test_audio_embeddings_replace_exactly_the_placeholders():
    model = tiny_model()
    inputs = audio_inputs(model.config, [500, 120], [6, 3])
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        out = model(**inputs)
    hook.remove()
    placeholders = inputs["input_ids"] == model.config.audio_token_id
    torch.testing.assert_close(captured["embeds"][placeholders], out.audio_hidden_states)
    text_embeds = model.get_input_embeddings()(inputs["input_ids"])
    torch.testing.assert_close(captured["embeds"][~placeholders], text_embeds[~placeholders])


def test_mixed_batch_rows_without_audio_and_text_only_input():
    model = tiny_model()
    # Row 1 has no audio; the two windows belong to rows 0 and 2.
    features, mask = make_audio_batch(model.config, [3000, 200])
    counts = tokens_for([3000, 200], model.config)
    input_ids, attention_mask = make_input_ids(model.config, [counts[0], 0, counts[1]], [4, 9, 5])
    with torch.no_grad():
        batched = model(input_ids=input_ids, attention_mask=attention_mask, input_features=features,
                        input_features_mask=mask)
        text_row = input_ids[1:2, : int(attention_mask[1].sum())]
        text_only = model(input_ids=text_row)
    torch.testing.assert_close(batched.logits[1, : text_row.shape[1]], text_only.logits[0], rtol=1e-4, atol=1e-5)
    assert text_only.aux_loss is None


def test_clip_longer_than_30_s_spans_consecutive_windows():
    model = tiny_model()
    # 42 s of audio: one full window and one holding 12 s (1200 mel frames), both for the same placeholder run.
    features, mask = make_audio_batch(model.config, [3000, 1200])
    count = sum(tokens_for([3000, 1200], model.config))
    assert count == 375 + 150
    input_ids, attention_mask = make_input_ids(model.config, [count], [5])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, input_features=features,
                    input_features_mask=mask)
        first = model.get_audio_features(features[:1], mask[:1]).pooler_output
    torch.testing.assert_close(out.audio_hidden_states[:375], first)


def test_output_router_logits_from_config_and_from_argument():
    inputs = audio_inputs(tiny_config(), [600], [4])
    model = tiny_model()
    assert model(**inputs).router_logits is None
    assert model(**inputs, output_router_logits=True).router_logits is not None
    model = tiny_model(output_router_logits=True)
    assert model(**inputs).router_logits.shape == (tokens_for([600], model.config)[0], 8)
    assert model(**inputs, output_router_logits=False).router_logits is None
    # The balance loss is always part of the training loss, whether or not the logits are returned.
    out = model(**inputs, labels=inputs["input_ids"], output_router_logits=False)
    assert out.aux_loss is not None


def test_semantic_token_stream_is_summed_with_the_fused_features():
    model = tiny_model(semantic_vocab_size=32)
    inputs = audio_inputs(model.config, [400], [4])
    ids = torch.randint(0, 32, (1, model.config.audio_tokens_per_window))
    with torch.no_grad():
        a = model(**inputs, semantic_audio_ids=ids).audio_hidden_states
        b = model(**inputs, semantic_audio_ids=(ids + 1) % 32).audio_hidden_states
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="semantic_audio_ids"):
        model(**inputs)
    with pytest.raises(ValueError, match=r"shape \(1, 10\)"):
        model(**inputs, semantic_audio_ids=ids[:, :10])


def test_placeholder_count_mismatch_is_a_clear_error():
    model = tiny_model()
    inputs = audio_inputs(model.config, [900], [4])
    count = tokens_for([900], model.config)[0]
    inputs["input_ids"][0, 2] = 7  # one placeholder fewer
    with pytest.raises(ValueError, match=rf"holds {count - 1} audio placeholder tokens but the audio gives {count}"):
        model(**inputs)


def test_missing_audio_token_id_is_a_clear_error():
    config = tiny_config()
    inputs = audio_inputs(config, [900], [4])
    config.audio_token_id = None
    model = MoEAudioForCausalLM(config)
    with pytest.raises(ValueError, match="audio_token_id is not set"):
        model(**inputs)


def test_inputs_embeds_path_matches_input_ids_path():
    model = tiny_model()
    inputs = audio_inputs(model.config, [700], [5])
    with torch.no_grad():
        by_ids = model(**inputs).logits
        embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
        by_embeds = model(**inputs, inputs_embeds=embeds).logits
    torch.testing.assert_close(by_ids, by_embeds)


def test_config_round_trip(tmp_path):
    config = tiny_config(adapter_type="dense", semantic_vocab_size=16)
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, MoEAudioConfig)
    without_path = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}
    assert without_path(reloaded) == without_path(config)
    assert MoEAudioConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize("adapter_type", ["moe", "dense"])
def test_save_then_load_gives_identical_logits(tmp_path, adapter_type):
    model = tiny_model(adapter_type=adapter_type)
    inputs = audio_inputs(model.config, [3000, 333], [4, 6])
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")), "only safetensors are written"
    for loader in (MoEAudioForCausalLM, AutoModelForCausalLM):
        reloaded = loader.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=0)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, MoEAudioModel)
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state
    torch.testing.assert_close(model.lm_head(hidden), expected)


def test_untied_embeddings_are_saved_and_loaded(tmp_path):
    config = tiny_config()
    config.text_config.tie_word_embeddings = False
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = MoEAudioForCausalLM(config)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(tmp_path)
    reloaded = MoEAudioForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight)
    tied = tiny_model()
    assert tied.lm_head.weight.data_ptr() == tied.get_input_embeddings().weight.data_ptr()


def generate(model, inputs, **kwargs):
    return model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=0, **kwargs)


def test_greedy_generation_with_cache_equals_without_cache():
    model = tiny_model()
    inputs = audio_inputs(model.config, [1000], [6])
    calls = []
    hook = model.model.audio_tower.register_forward_hook(lambda *args: calls.append(1))
    with_cache = generate(model, inputs)
    assert len(calls) == 1, "the audio is encoded once, at prefill"
    hook.remove()
    without_cache = generate(model, inputs, use_cache=False)
    assert with_cache.shape[1] == inputs["input_ids"].shape[1] + 8
    torch.testing.assert_close(with_cache, without_cache, rtol=0, atol=0)


def test_batched_generation_with_left_padding_equals_one_by_one():
    model = tiny_model()
    mel_lengths, prompt_lengths = [2500, 300, 900], [3, 11, 6]
    batch = audio_inputs(model.config, mel_lengths, prompt_lengths, padding_side="left")
    batched = generate(model, batch)[:, batch["input_ids"].shape[1]:]
    for i in range(3):
        width = int(batch["attention_mask"][i].sum())
        single = {
            "input_ids": batch["input_ids"][i : i + 1, -width:],
            "attention_mask": batch["attention_mask"][i : i + 1, -width:],
            "input_features": batch["input_features"][i : i + 1],
            "input_features_mask": batch["input_features_mask"][i : i + 1],
        }
        alone = generate(model, single)[:, width:]
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=0)


def test_activation_checkpointing_gives_the_same_gradients():
    inputs = audio_inputs(tiny_config(), [1500], [5])
    grads = []
    for checkpointing in (False, True):
        model = tiny_model()
        model.train()
        model.config.text_config.dropout = 0.0
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.model.language_model.gradient_checkpointing
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_sdpa_is_the_default_and_agrees_with_eager():
    inputs = audio_inputs(tiny_config(), [1500, 600], [5, 2])
    sdpa = tiny_model()
    assert sdpa.config._attn_implementation == "sdpa"
    assert sdpa.config.text_config._attn_implementation == "sdpa"
    eager = tiny_model()
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**inputs).logits, eager(**inputs).logits, rtol=1e-4, atol=1e-5)


def test_no_split_modules_cover_the_submodels():
    no_split = set(tiny_model()._no_split_modules)
    assert {"MoEAdapter", "MoEAudioFrontend", "WhisperEncoderLayer", "Qwen3DecoderLayer"} <= no_split
