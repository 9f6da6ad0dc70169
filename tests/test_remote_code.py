"""Checkpoints load with trust_remote_code in a process where the package is not importable."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_audio_batch, make_input_ids, tiny_model, tokens_for, use_positional_shared_expert_names
from remote_code import run_without_package


# Slow (two fresh processes): loading with the Auto classes without the package, and generating, is also in
# test_cli.py::test_init_writes_a_checkpoint_that_loads_without_the_package, bit-exact logits in test_hub.py.
@pytest.mark.slow
def test_remote_code_loads_with_all_auto_classes_and_generates(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    model = tiny_model()
    model.save_pretrained(checkpoint)
    assert sorted(p.name for p in checkpoint.glob("*.py")) == ["configuration_moe_audio.py", "modeling_moe_audio.py"]
    features, mask = make_audio_batch(model.config, [3000, 640])
    input_ids, attention_mask = make_input_ids(model.config, tokens_for([3000, 640], model.config), [5, 8])
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, input_features=features, input_features_mask=mask)
    with torch.no_grad():
        expected = model(**inputs).logits
        expected_hidden = model.model(**inputs).last_hidden_state
        expected_routing = model(**inputs, output_router_logits=True)
    expected_generation = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0)
    torch.save({"inputs": inputs, "logits": expected, "hidden": expected_hidden, "generation": expected_generation,
                "router_logits": expected_routing.router_logits, "selected": expected_routing.selected_experts,
                "aux_loss": expected_routing.aux_loss}, tmp_path / "expected.pt")

    output = run_without_package(
        f"""
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        inputs = expected["inputs"]
        config = AutoConfig.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert type(config).__name__ == "MoEAudioConfig", type(config)
        base = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(base).__name__ == "MoEAudioModel", type(base)
        model = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "MoEAudioForCausalLM", type(model)
        assert model.config._experts_implementation == "grouped_mm"
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, expected["logits"], rtol=0, atol=0)
            torch.testing.assert_close(base(**inputs).last_hidden_state, expected["hidden"], rtol=0, atol=0)
            # The router's outputs come through transformers' output recording in the checkpoint's own classes.
            routing = model(**inputs, output_router_logits=True)
            torch.testing.assert_close(routing.router_logits, expected["router_logits"], rtol=0, atol=0)
            torch.testing.assert_close(routing.selected_experts, expected["selected"], rtol=0, atol=0)
            torch.testing.assert_close(routing.aux_loss, expected["aux_loss"], rtol=0, atol=0)
        generation = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0)
        torch.testing.assert_close(generation, expected["generation"], rtol=0, atol=0)
        # A checkpoint saved from remote code carries the code on.
        model.save_pretrained({str(tmp_path / "resaved")!r})
        print("OK")
        """,
        cwd=tmp_path,
    )
    assert output.strip().endswith("OK")
    resaved = tmp_path / "resaved"
    assert (resaved / "modeling_moe_audio.py").read_text() == (checkpoint / "modeling_moe_audio.py").read_text()
    output = run_without_package(
        f"""
        from transformers import AutoModel
        print(type(AutoModel.from_pretrained({str(resaved)!r}, trust_remote_code=True)).__name__)
        """,
        cwd=tmp_path,
    )
    assert output.strip().endswith("MoEAudioModel")


def test_checkpoint_with_positional_shared_expert_names_loads_and_is_resaved_with_named_ones(tmp_path):
    """Checkpoints up to moe-audio 0.2.0 name the shared expert's weights by position (`shared_expert.0.weight`);
    the checkpoint's own code maps them to the named layers through transformers' `key_mapping`."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "old")
    named = {key for key in load_file(tmp_path / "old" / "model.safetensors") if ".shared_expert." in key}
    assert named == {"model.adapter.shared_expert.norm.weight", "model.adapter.shared_expert.norm.bias",
                     "model.adapter.shared_expert.up_proj.weight", "model.adapter.shared_expert.down_proj.weight"}
    use_positional_shared_expert_names(tmp_path / "old")
    features, mask = make_audio_batch(model.config, [3000, 640])
    input_ids, attention_mask = make_input_ids(model.config, tokens_for([3000, 640], model.config), [5, 8])
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, input_features=features, input_features_mask=mask)
    with torch.no_grad():
        torch.save({"inputs": inputs, "logits": model(**inputs).logits}, tmp_path / "expected.pt")

    output = run_without_package(
        f"""
        import json
        import torch
        from transformers import AutoModelForCausalLM
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model, info = AutoModelForCausalLM.from_pretrained({str(tmp_path / "old")!r}, trust_remote_code=True,
                                                           output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(**expected["inputs"]).logits, expected["logits"], rtol=0, atol=0)
        model.save_pretrained({str(tmp_path / "resaved")!r})
        print(json.dumps("OK"))
        """,
        cwd=tmp_path,
    )
    assert json.loads(output.strip().splitlines()[-1]) == "OK"
    resaved = load_file(tmp_path / "resaved" / "model.safetensors")
    assert {key for key in resaved if ".shared_expert." in key} == named
    original = load_file(tmp_path / "old" / "model.safetensors")
    assert torch.equal(resaved["model.adapter.shared_expert.up_proj.weight"],
                       original["model.adapter.shared_expert.1.weight"])


def test_lora_adapter_with_positional_shared_expert_names_loads(tmp_path):
    """PEFT maps a saved adapter's keys with the model's `_checkpoint_conversion_mapping` too: a LoRA run's trained
    copy of the MoE adapter (`modules_to_save`), saved by 0.2.0 with positional names, loads into the named layers."""
    from peft import PeftModel

    from modeling_moe_audio.training.stages import add_lora

    trained = add_lora(tiny_model(), rank=2)
    adapter = trained.base_model.model.model.adapter.modules_to_save["default"]
    with torch.no_grad():
        adapter.shared_expert.up_proj.weight.add_(1.0)  # differs from the base model's
    trained.save_pretrained(tmp_path / "lora")
    use_positional_shared_expert_names(tmp_path / "lora", weights_file="adapter_model.safetensors")
    assert any(".shared_expert.1." in key for key in load_file(tmp_path / "lora" / "adapter_model.safetensors"))
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "lora")
    loaded_adapter = loaded.base_model.model.model.adapter.modules_to_save["default"]
    for name, parameter in adapter.shared_expert.named_parameters():
        assert torch.equal(loaded_adapter.shared_expert.get_parameter(name), parameter), name
