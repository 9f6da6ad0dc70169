"""LoRA where it can go (`--stage lora --lora_targets llm | experts | llm+experts`): the language model's projections,
the MoE adapter's 3D expert weights (PEFT's `target_parameters`), or both, with each experts kernel; gradients reach
exactly the intended parameters; the real `moe-audio train` saves a PEFT adapter that reloads, and merges, to the
same logits."""

import json
import re

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoProcessor

from modeling_moe_audio.data.collator import MoEAudioDataCollator
from modeling_moe_audio.data.manifest import load_rows
from modeling_moe_audio.modeling_moe_audio import RectangularExpertsInterface
from modeling_moe_audio.training.stages import LORA_TARGETS, add_lora, apply_stage

from helpers import make_audio_batch, make_input_ids, tiny_model, tokens_for
from remote_code import run_without_package


KERNELS = ("eager", "grouped_mm", "batched_mm")
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_PARTS_BESIDE_EXPERTS = ("router", "input_norm", "shared_expert", "output_norm")


def what_trains(name: str) -> str:
    """The part of the model a trainable parameter of the PEFT model belongs to, by its name."""
    if "lora_" in name:
        if ".language_model." in name:
            projection = re.search(r"\.(\w+_proj)\.lora_", name).group(1)
            return f"llm lora {projection}"
        if ".adapter.experts." in name:
            # PEFT nests one ParamWrapper per parameter: the outer wraps down_proj, the inner (base_layer) up_proj.
            return "experts lora " + ("up_proj" if ".experts.base_layer.lora_" in name else "down_proj")
    if ".frontend.modules_to_save." in name:
        return "frontend in full"
    if ".adapter.modules_to_save." in name:
        return "adapter in full"
    part = re.search(r"\.adapter\.(\w+)\.modules_to_save\.", name)
    if part:
        return f"adapter {part.group(1)} in full"
    return f"unexpected: {name}"


EXPECTED = {
    "llm": {"frontend in full", "adapter in full", *(f"llm lora {p}" for p in LLM_PROJECTIONS)},
    "experts": {"frontend in full", "experts lora up_proj", "experts lora down_proj",
                *(f"adapter {part} in full" for part in ADAPTER_PARTS_BESIDE_EXPERTS)},
}
EXPECTED["llm+experts"] = EXPECTED["llm"] - {"adapter in full"} | EXPECTED["experts"]


def inputs_for(config):
    mel_lengths = [3000, 1700]
    features, features_mask = make_audio_batch(config, mel_lengths)
    input_ids, attention_mask = make_input_ids(config, tokens_for(mel_lengths, config), [6, 9])
    return dict(input_ids=input_ids, attention_mask=attention_mask, input_features=features,
                input_features_mask=features_mask)


def lora_model(targets, kernel, rank=2):
    model = tiny_model()
    model.set_experts_implementation(kernel)
    apply_stage(model, "lora")
    model = add_lora(model, rank=rank, alpha=2 * rank, targets=targets)
    # LoRA starts with B = 0, where A gets no gradient and merging changes nothing: start from a random update.
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    return model


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of the `grouped_mm` and `batched_mm` expert kernels (the eager one is the class's forward)."""
    calls = dict.fromkeys(("grouped_mm", "batched_mm"), 0)
    for kernel in calls:
        function = RectangularExpertsInterface._global_mapping[kernel]

        def counted(*args, _kernel=kernel, _function=function, **kwargs):
            calls[_kernel] += 1
            return _function(*args, **kwargs)

        monkeypatch.setitem(RectangularExpertsInterface._global_mapping, kernel, counted)
    return calls


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("targets", LORA_TARGETS)
def test_gradients_reach_exactly_the_intended_parameters(targets, kernel, kernel_calls):
    model = lora_model(targets, kernel).train()
    inputs = inputs_for(model.config)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert kernel_calls == {k: (1 if k == kernel else 0) for k in kernel_calls}  # the kernel under test ran

    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert {what_trains(name) for name in trainable} == EXPECTED[targets]
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"
        else:
            assert parameter.grad is None, f"the frozen {name} got a gradient"
    if "experts" in targets:
        experts = model.base_model.model.model.adapter.experts
        assert experts.base_layer.base_layer.up_proj.dim() == 3 and not experts.base_layer.base_layer.up_proj.requires_grad
        # One rank-2 factor pair per expert, stacked: A (E * r, in) and B (out, E * r).
        assert experts.lora_A["default"].weight.shape[0] == model.config.num_experts * 2


@pytest.mark.parametrize("targets", ("experts", "llm+experts"))
def test_every_kernel_gives_the_same_expert_lora_gradients(targets):
    gradients = {}
    for kernel in KERNELS:
        model = lora_model(targets, kernel).train()
        inputs = inputs_for(model.config)
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        gradients[kernel] = {name: parameter.grad for name, parameter in model.named_parameters()
                             if parameter.requires_grad and ".experts." in name}
    assert len(gradients["eager"]) == 4
    for kernel in ("grouped_mm", "batched_mm"):
        for name, gradient in gradients["eager"].items():
            torch.testing.assert_close(gradients[kernel][name], gradient, rtol=1e-4, atol=1e-6, msg=f"{kernel}: {name}")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("targets", LORA_TARGETS)
def test_saved_adapter_reloads_and_merges_to_the_same_logits(targets, kernel, tmp_path):
    model = lora_model(targets, kernel).eval()
    inputs = inputs_for(model.config)
    with torch.no_grad():
        expected = model(**inputs).logits
        with model.disable_adapter():
            without_lora = model(**inputs).logits
    assert not torch.allclose(without_lora, expected, atol=1e-4)  # the LoRA update does change the output
    model.save_pretrained(tmp_path / "lora")
    base = tiny_model()
    base.set_experts_implementation(kernel)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=0)
        merged = reloaded.merge_and_unload()
        assert type(merged).__name__ == "MoEAudioForCausalLM" and merged.model.adapter.experts.up_proj.dim() == 3
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("targets", LORA_TARGETS)
def test_train_encoder_also_trains_the_encoder_under_lora(targets):
    model = tiny_model()
    apply_stage(model, "lora", train_encoder=True)
    model = add_lora(model, rank=2, targets=targets)
    encoder = {name: parameter.requires_grad for name, parameter in model.named_parameters() if ".audio_tower." in name}
    trained = {name for name, requires_grad in encoder.items() if requires_grad}
    assert trained and all(".audio_tower.modules_to_save.default." in name for name in trained)
    assert not any(name.endswith("embed_positions.weight") for name in trained)  # Whisper's fixed position table
    assert any("conv1" in name for name in trained)
    frozen_encoder = tiny_model()
    apply_stage(frozen_encoder, "lora")
    frozen_encoder = add_lora(frozen_encoder, rank=2, targets=targets)
    assert not any(parameter.requires_grad for name, parameter in frozen_encoder.named_parameters()
                   if ".audio_tower." in name)


# --- the real `moe-audio train` -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(make_corpus):
    return make_corpus(seed=3, sizes={"train": 48, "validation": 8, "test": 8})


def train_lora(checkpoint, corpus, output, targets):
    """`moe-audio train --stage lora --lora_targets TARGETS` for 2 steps, saving `checkpoint-2` and the final model."""
    from modeling_moe_audio.commands import train

    train.main(["--model", str(checkpoint), "--train_data", str(corpus["train"]), "--output_dir", str(output),
                "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
                "--dataloader_num_workers", "0", "--max_steps", "2", "--warmup_steps", "0", "--learning_rate", "1e-2",
                "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "2",
                "--stage", "lora", "--lora_targets", targets, "--lora_rank", "4"])
    return output / "checkpoint-2"


def validation_batch(checkpoint, corpus):
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    batch = MoEAudioDataCollator(processor)(load_rows(corpus["validation"], limit=3))
    batch.pop("labels")
    return dict(batch)


@pytest.mark.parametrize("targets", LORA_TARGETS)
def test_train_command_saves_a_lora_checkpoint_that_reloads_and_merges(targets, tiny_checkpoint, corpus, tmp_path):
    output = tmp_path / "run"
    checkpoint = train_lora(tiny_checkpoint, corpus, output, targets)
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
    on_experts = "experts" in targets
    assert bool(adapter_config["target_parameters"]) == on_experts
    assert (adapter_config["target_modules"] is not None) == (targets != "experts")
    saved = load_file(checkpoint / "adapter_model.safetensors")
    trained_experts = [key for key in saved if ".adapter.experts." in key]
    if on_experts:  # LoRA factors of the experts, not their full weights; the router etc. in full
        assert trained_experts and all("lora_" in key for key in trained_experts)
        assert any(".adapter.router." in key for key in saved)
        assert all(torch.count_nonzero(saved[key]) > 0 for key in trained_experts if "lora_B" in key)
    else:
        assert trained_experts and not any("lora_" in key for key in trained_experts)  # the adapter in full

    batch = validation_batch(checkpoint, corpus)
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()
    with torch.no_grad():
        base_logits = base(**batch).logits
        # As the README says: the Auto class loads the base named in adapter_config.json and applies the adapter.
        from_checkpoint = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
        expected = from_checkpoint(**batch).logits
        assert not torch.allclose(expected, base_logits, atol=1e-4)  # training changed the output
        reloaded = PeftModel.from_pretrained(base, checkpoint).eval()
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=0)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-5, atol=1e-5)
        # The run's final output_dir holds the merged model, a plain checkpoint.
        final = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True).eval()
        torch.testing.assert_close(final(**batch).logits, expected, rtol=1e-5, atol=1e-5)

    assert f"stage `lora` (LoRA on `{targets}`)" in (output / "README.md").read_text()  # the model card says so
    original = dict(AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True).named_parameters())
    changed = {name for name, parameter in final.named_parameters() if not torch.equal(parameter, original[name])}
    assert any(".adapter.experts." in name for name in changed)  # through LoRA, or trained in full
    assert any(".adapter.router." in name for name in changed) and any(".frontend." in name for name in changed)
    assert any(".language_model." in name for name in changed) == (targets != "experts")
    assert not any(".audio_tower." in name for name in changed)


@pytest.mark.slow
def test_expert_lora_checkpoint_loads_without_the_package(tiny_checkpoint, corpus, tmp_path):
    """The PEFT checkpoint of a run with LoRA on the experts loads on its `trust_remote_code` base where only the
    checkpoint's own code is (a fresh process that cannot import this package)."""
    checkpoint = train_lora(tiny_checkpoint, corpus, tmp_path / "run", "llm+experts")
    batch = validation_batch(checkpoint, corpus)
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, checkpoint).eval()(**batch).logits
    torch.save({"batch": batch, "expected": expected}, tmp_path / "expected.pt")
    printed = run_without_package(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        saved = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=False)
        model = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model.model.adapter.experts).__name__ == "ParamWrapper", type(model.model.adapter.experts)
        with torch.no_grad():
            torch.testing.assert_close(model(**saved["batch"]).logits, saved["expected"], rtol=0, atol=0)
        print("OK")
        """,
        cwd=tmp_path,
    )
    assert printed.strip().endswith("OK")


def test_expert_lora_logs_routing_and_balances_the_router_that_runs(corpus, tmp_path):
    """With the experts LoRA-wrapped, PEFT saves the router whole (a trained copy beside the frozen original): the
    callback's counts and the auxiliary-loss-free bias follow the copy, which the merged model keeps."""
    from modeling_moe_audio.checkpoints.build import init_checkpoint
    from modeling_moe_audio.presets import load_config, shipped_tokenizer
    from modeling_moe_audio.training.trainer import build_trainer

    from helpers import parse_train_args

    checkpoint = tmp_path / "init"
    init_checkpoint(load_config("tiny-4s", router_selection_bias=True), checkpoint,
                    tokenizer=shipped_tokenizer("tiny-4s"))
    trainer = build_trainer(*parse_train_args(checkpoint, corpus, tmp_path / "run", "--max_steps", "4", "--stage",
                                              "lora", "--lora_targets", "experts", "--lora_rank", "4",
                                              "--logging_steps", "2", "--bias_update_rate", "0.01"))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "moe/expert_share/e0" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all(entry["moe/aux_loss"] >= 4.0 - 1e-6 for entry in logged)
    router = trainer.model.base_model.model.model.adapter.router
    trained, frozen = router.modules_to_save["default"], router.original_module
    assert torch.count_nonzero(trained.selection_bias) > 0 and torch.count_nonzero(frozen.selection_bias) == 0
    merged = trainer.model.merge_and_unload()
    torch.testing.assert_close(merged.model.adapter.router.selection_bias, trained.selection_bias)
