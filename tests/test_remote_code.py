"""Checkpoints load with trust_remote_code in a process where the package is not importable."""

import torch

from conftest import make_audio_batch, make_input_ids, tiny_model, tokens_for
from remote_code import run_without_package


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
