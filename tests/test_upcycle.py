"""`moe-audio upcycle`: an MoE model whose experts start from a dense adapter's MLP."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling_moe_audio.checkpoints.build import init_checkpoint
from modeling_moe_audio.presets import load_config, shipped_tokenizer
from modeling_moe_audio.checkpoints.upcycle import upcycle, upcycle_model

from helpers import make_audio_batch, make_input_ids, moe_audio_process, tokens_for


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dense") / "ckpt"
    model = init_checkpoint(load_config("tiny", adapter_type="dense"), folder, tokenizer=shipped_tokenizer("tiny"))
    with torch.no_grad():  # a "trained" adapter: move its norms away from their ones/zeros initialisation
        for norm in (model.model.adapter.input_norm, model.model.adapter.output_norm):
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    return folder


def inputs_for(config):
    features, mask = make_audio_batch(config, [3000, 700])
    ids, attention = make_input_ids(config, tokens_for([3000, 700], config), [4, 6])
    return dict(input_ids=ids, attention_mask=attention, input_features=features, input_features_mask=mask)


def test_copy_mode_reproduces_the_dense_model_exactly(dense, tmp_path):
    upcycle(dense, tmp_path / "moe", num_experts=4, top_k=2)
    source = AutoModelForCausalLM.from_pretrained(dense, trust_remote_code=True).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", trust_remote_code=True).eval()
    assert reloaded.config.adapter_type == "moe" and reloaded.config.expert_intermediate_size == 384
    assert reloaded.config.shared_expert_intermediate_size == 0
    inputs = inputs_for(source.config)
    with torch.no_grad():
        expected = source(**inputs)
        got = reloaded(**inputs, output_router_logits=True)
    torch.testing.assert_close(got.audio_hidden_states, expected.audio_hidden_states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    assert got.selected_experts.unique().numel() > 1  # the router really routes; the copies make it not matter
    assert (tmp_path / "moe" / "processor_config.json").is_file() and (tmp_path / "moe" / "README.md").is_file()


def test_partition_mode_splits_the_hidden_units(dense):
    source = AutoModelForCausalLM.from_pretrained(dense, trust_remote_code=True)
    moe = upcycle_model(source, num_experts=8, top_k=4, shared=192)  # 192 + 8 x 24 = 384 dense units
    adapter, dense_adapter = moe.model.adapter, source.model.adapter
    assert moe.config.expert_intermediate_size == 24
    torch.testing.assert_close(adapter.shared_expert.up_proj.weight, dense_adapter.up_proj.weight[:192])
    torch.testing.assert_close(adapter.experts.up_proj[3], dense_adapter.up_proj.weight[192 + 72 : 192 + 96])
    torch.testing.assert_close(adapter.experts.down_proj[3], 8 * dense_adapter.down_proj.weight[:, 192 + 72 : 192 + 96])


def test_bad_upcycling_requests(dense, tmp_path):
    source = AutoModelForCausalLM.from_pretrained(dense, trust_remote_code=True)
    with pytest.raises(ValueError, match="do not split into 8 equal experts"):
        upcycle_model(source, num_experts=8, top_k=4, shared=100)
    moe = upcycle_model(source, num_experts=4, top_k=2)
    moe.save_pretrained(tmp_path / "already-moe")
    with pytest.raises(ValueError, match="starts from a dense-adapter model"):
        upcycle(tmp_path / "already-moe", tmp_path / "out")
    result = moe_audio_process("upcycle", dense, "--output_dir", tmp_path / "already-moe", timeout=120)
    assert result.returncode != 0 and "not empty" in result.stderr
