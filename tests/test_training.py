"""Training through the real Trainer: the aux-loss callback, accumulation, stages, LoRA, resume, DDP, the demo."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from modeling_moe_audio.checkpoints.build import init_checkpoint
from modeling_moe_audio.data.collator import MoEAudioDataCollator
from modeling_moe_audio.presets import load_config, shipped_tokenizer
from modeling_moe_audio.training.trainer import build_trainer
from modeling_moe_audio.training.callbacks import AuxLossSchedule, MoEAuxLossCallback

from helpers import ROOT, moe_audio_process, parse_train_args as parse, tiny_model
from remote_code import run_without_package


@pytest.fixture(scope="module")
def corpus(make_corpus):
    return make_corpus(seed=3, sizes={"train": 48, "validation": 8, "test": 8})


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def test_callback_logs_routing_metrics_to_tensorboard_and_history(checkpoint, corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    script_args, training_args = parse(
        checkpoint, corpus, tmp_path / "run", "--max_steps", "8", "--logging_steps", "2", "--stage", "full",
        "--report_to", "tensorboard", "--aux_loss_coef", "0.5", "--aux_loss_warmup_steps", "4",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
    )
    trainer = build_trainer(script_args, training_args)
    assert isinstance(trainer.callback_handler.callbacks[0], MoEAuxLossCallback)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "moe/aux_loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4, 6, 8]
    for entry in logged:
        shares = [entry[f"moe/expert_share/e{e}"] for e in range(8)]
        assert sum(shares) == pytest.approx(1.0)
        assert entry["moe/max_mean_load"] == pytest.approx(max(shares) / (1 / 8), rel=1e-6)
        assert 0 < entry["moe/router_entropy"] <= torch.log(torch.tensor(8.0)).item() + 1e-6
        assert entry["moe/aux_loss"] >= 4.0 - 1e-6  # eq. 10 is at least k under top-k routing
    # Warm-up: lambda = 0.5 * step / 4 during the step that starts at `step`, then 0.5.
    assert [entry["moe/aux_loss_coef"] for entry in logged] == [0.125, 0.375, 0.5, 0.5]
    events = list((tmp_path / "run" / "runs").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard wrote no event file"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/moe/aux_loss", "train/moe/router_entropy", "train/moe/max_mean_load",
            "train/moe/expert_share/e0", "train/moe/aux_loss_coef"} <= tags
    assert len(accumulator.Scalars("train/moe/aux_loss")) == 4


def test_aux_loss_schedule_shapes():
    constant = AuxLossSchedule(0.01)
    assert [constant(step, 100) for step in (0, 50, 100)] == [0.01, 0.01, 0.01]
    decay = AuxLossSchedule(0.1, warmup_steps=10, decay_to=0.0)
    assert decay(5, 110) == pytest.approx(0.05)
    assert decay(10, 110) == pytest.approx(0.1)
    assert decay(60, 110) == pytest.approx(0.05)
    assert decay(110, 110) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        AuxLossSchedule(-1.0)


def test_the_schedule_moves_the_model_attribute_and_the_saved_config_keeps_the_configured_lambda(
    checkpoint, corpus, tmp_path, monkeypatch
):
    from transformers import TrainerCallback

    from modeling_moe_audio.training import trainer as train_module

    seen, trainers = [], []

    class Spy(TrainerCallback):  # runs after the aux-loss callback, which is first in line
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append((model.router_aux_loss_coef, model.config.router_aux_loss_coef))

    def build_with_spy(*args):
        trainers.append(build_trainer(*args))
        trainers[-1].add_callback(Spy())
        return trainers[-1]

    monkeypatch.setattr(train_module, "build_trainer", build_with_spy)
    train_module.train(*parse(checkpoint, corpus, tmp_path / "run", "--max_steps", "3", "--logging_steps", "1",
                              "--stage", "adapter", "--aux_loss_coef", "0.05", "--aux_loss_decay_to", "0"))
    schedule = [0.05, 0.05 * 2 / 3, 0.05 / 3]  # lambda during the steps that start at 0, 1, 2 of 3
    assert [coef for coef, _ in seen] == pytest.approx(schedule)
    assert [configured for _, configured in seen] == [0.05] * 3
    logged = [entry["moe/aux_loss_coef"] for entry in trainers[0].state.log_history if "moe/aux_loss" in entry]
    assert logged == pytest.approx(schedule)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["router_aux_loss_coef"] == 0.05
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run", trust_remote_code=True).router_aux_loss_coef == 0.05


def test_collapse_warning(caplog):
    callback = MoEAuxLossCallback(collapse_threshold=0.5, collapse_patience=2)
    callback._hooks = ["test double of a hooked MoE adapter"]
    callback._device = torch.device("cpu")
    callback._low_share_streak = torch.zeros(4, dtype=torch.long)

    model = tiny_model()
    for _ in range(2):
        callback._pair_counts = torch.tensor([50.0, 48.0, 1.0, 45.0])
        callback._totals = torch.tensor([30.0, 36, 4.2, 1])
        with caplog.at_level("WARNING"):
            callback.on_log(None, type("State", (), {"log_history": [], "global_step": 1})(), None, logs={},
                            model=model)
    assert "Expert 2 has received under 12.5% of the routed tokens for 2 logging steps" in caplog.text
    assert "Expert 0" not in caplog.text and caplog.text.count("collapsing") == 1


def one_sgd_step(checkpoint, corpus_dir, output_dir, batch_size, accumulation, aux_coef, ddp_launcher=None):
    """One SGD step (lr 1, no clipping) on two identical rows; returns the updated weights."""
    args = [
        "--model", str(checkpoint), "--train_data", str(corpus_dir / "twins.jsonl"), "--output_dir", str(output_dir),
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--stage", "full",
        "--max_steps", "1", "--optim", "sgd", "--learning_rate", "1.0", "--lr_scheduler_type", "constant",
        "--warmup_steps", "0", "--max_grad_norm", "0", "--weight_decay", "0", "--aux_loss_coef", str(aux_coef),
        "--per_device_train_batch_size", str(batch_size), "--gradient_accumulation_steps", str(accumulation),
        "--dataloader_num_workers", "0",
    ]
    if ddp_launcher:
        result = subprocess.run([*ddp_launcher, *args], capture_output=True, text=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    else:
        from modeling_moe_audio.commands import train

        train.main(args)
    return load_file(output_dir / "model.safetensors")


@pytest.fixture(scope="module")
def twins(corpus, tmp_path_factory):
    """A copy of the corpus (the shared one stays as written) with `twins.jsonl`: its first train row, twice."""
    folder = Path(shutil.copytree(Path(corpus["train"]).parent, tmp_path_factory.mktemp("twins") / "corpus"))
    first = Path(corpus["train"]).read_text().splitlines()[0]
    (folder / "twins.jsonl").write_text(first + "\n" + first + "\n")
    return folder


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=atol, msg=name)


def test_gradient_accumulation_keeps_the_aux_loss_weight(checkpoint, twins, tmp_path):
    full = one_sgd_step(checkpoint, twins, tmp_path / "ga1", batch_size=2, accumulation=1, aux_coef=5.0)
    accumulated = one_sgd_step(checkpoint, twins, tmp_path / "ga2", batch_size=1, accumulation=2, aux_coef=5.0)
    assert_same_weights(full, accumulated)
    # The aux loss really is in the update: without it the router moves differently.
    without_aux = one_sgd_step(checkpoint, twins, tmp_path / "noaux", batch_size=2, accumulation=1, aux_coef=0.0)
    key = "model.adapter.router.weight"
    assert not torch.allclose(full[key], without_aux[key], atol=1e-4)


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(checkpoint, twins, tmp_path):
    single = one_sgd_step(checkpoint, twins, tmp_path / "single", batch_size=2, accumulation=1, aux_coef=5.0)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "modeling_moe_audio.commands.main", "train"]
    ddp = one_sgd_step(checkpoint, twins, tmp_path / "ddp", batch_size=1, accumulation=1, aux_coef=5.0,
                       ddp_launcher=launcher)
    assert_same_weights(single, ddp)


def test_adapter_stage_keeps_frozen_weights_bit_identical(checkpoint, corpus, tmp_path):
    script_args, training_args = parse(checkpoint, corpus, tmp_path / "run", "--max_steps", "3",
                                       "--stage", "adapter", "--learning_rate", "1e-2")
    trainer = build_trainer(script_args, training_args)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        trainable = ".frontend." in name or ".adapter." in name
        assert parameter.requires_grad == trainable, name
        if trainable:
            continue
        assert torch.equal(parameter, before[name]), f"{name} changed"
    assert not torch.equal(trainer.model.model.adapter.router.weight, before["model.adapter.router.weight"])


def test_whisper_positions_stay_fixed_when_the_encoder_trains(checkpoint, corpus, tmp_path):
    script_args, training_args = parse(checkpoint, corpus, tmp_path / "run", "--max_steps", "2", "--stage", "full",
                                       "--train_encoder", "--learning_rate", "1e-2")
    trainer = build_trainer(script_args, training_args)
    tower = trainer.model.model.audio_tower
    positions = tower.embed_positions.weight.detach().clone()
    conv = tower.conv1.weight.detach().clone()
    trainer.train()
    assert not tower.embed_positions.weight.requires_grad and torch.equal(tower.embed_positions.weight, positions)
    assert not torch.equal(tower.conv1.weight, conv)


def test_lora_save_reload_merge_give_identical_logits(checkpoint, corpus, tmp_path):
    from peft import PeftModel

    script_args, training_args = parse(checkpoint, corpus, tmp_path / "run", "--max_steps", "3",
                                       "--stage", "lora", "--learning_rate", "1e-2", "--lora_rank", "4")
    trainer = build_trainer(script_args, training_args)
    trainer.train()
    model = trainer.model.eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("adapter" in n and "lora" not in n for n in trainable)
    assert not any("audio_tower" in n for n in trainable)
    batch = MoEAudioDataCollator(trainer.processing_class)([trainer.train_dataset[i] for i in range(3)])
    batch.pop("labels")
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "lora")
    base = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=0)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-5)
    # A LoRA directory also loads through the Auto class (base from adapter_config.json), without the package.
    torch.save({"batch": batch, "expected": expected}, tmp_path / "expected.pt")
    printed = run_without_package(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        saved = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=False)
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "lora")!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(**saved["batch"]).logits, saved["expected"], rtol=0, atol=0)
        print("OK")
        """,
        cwd=tmp_path,
    )
    assert printed.strip().endswith("OK")


def test_train_refuses_to_overwrite_a_saved_run(checkpoint, corpus, tmp_path):
    from modeling_moe_audio.commands import train

    def train_into(output, *extra):
        train.main(["--model", str(checkpoint), "--train_data", str(corpus["train"]), "--output_dir", str(output),
                    "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--max_steps", "1",
                    "--warmup_steps", "0", "--learning_rate", "1e-2", "--save_strategy", "steps", "--save_steps", "1",
                    "--dataloader_num_workers", "0", *extra])

    output = tmp_path / "run"
    train_into(output)
    saved = (output / "model.safetensors").read_bytes()
    card = (output / "README.md").read_text()
    assert "(warmup_stable_decay)" in card and "SchedulerType" not in card  # the scheduler's name, not its enum
    with pytest.raises(SystemExit, match="is not empty .*--overwrite"):
        train_into(output)
    assert (output / "model.safetensors").read_bytes() == saved
    train_into(output, "--resume_from_checkpoint", str(output / "checkpoint-1"))  # continuing the run is allowed
    train_into(output, "--overwrite", "--max_steps", "2")
    assert (output / "model.safetensors").read_bytes() != saved

    # Resuming another folder's run does not lift the guard, and a folder of the user's own files is refused too.
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("my notes")
    with pytest.raises(SystemExit, match="is not empty"):
        train_into(other, "--resume_from_checkpoint", str(output / "checkpoint-1"))
    assert sorted(path.name for path in other.iterdir()) == ["README.md"]
    assert (other / "README.md").read_text() == "my notes"


def test_resume_reproduces_the_uninterrupted_run(checkpoint, corpus, tmp_path):
    common = ["--max_steps", "6", "--logging_steps", "1", "--stage", "full", "--learning_rate", "1e-3",
              "--per_device_train_batch_size", "4"]
    script_args, training_args = parse(checkpoint, corpus, tmp_path / "straight", *common)
    straight = build_trainer(script_args, training_args)
    straight.train()
    script_args, training_args = parse(checkpoint, corpus, tmp_path / "interrupted", *common,
                                       "--save_strategy", "steps", "--save_steps", "3")
    first = build_trainer(script_args, training_args)
    first.train()
    checkpoint_3 = tmp_path / "interrupted" / "checkpoint-3"
    assert (checkpoint_3 / "modeling_moe_audio.py").is_file() and (checkpoint_3 / "processor_config.json").is_file()
    resumed = build_trainer(script_args, training_args)
    resumed.train(resume_from_checkpoint=str(checkpoint_3))
    losses = lambda trainer: {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    straight_losses, resumed_losses = losses(straight), losses(resumed)
    assert set(resumed_losses) >= {4, 5, 6}
    for step in (4, 5, 6):
        assert resumed_losses[step] == pytest.approx(straight_losses[step], rel=1e-5), step
    # Every checkpoint directory loads on its own, with its code and processor.
    printed = run_without_package(
        f"""
        from transformers import AutoModelForCausalLM, AutoProcessor
        print(type(AutoModelForCausalLM.from_pretrained({str(checkpoint_3)!r}, trust_remote_code=True)).__name__,
              type(AutoProcessor.from_pretrained({str(checkpoint_3)!r}, trust_remote_code=True)).__name__)
        """,
        cwd=tmp_path,
    )
    assert printed.split() == ["MoEAudioForCausalLM", "MoEAudioProcessor"]


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    output = tmp_path / "demo"
    result = moe_audio_process("demo", "--quick", "--output_dir", output)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| moe |" in result.stdout and "| dense |" in result.stdout
    summary = json.loads((output / "results.json").read_text())
    for name in ("moe", "dense"):
        model = summary["models"][name]
        assert set(model["accuracy"]) == {"overall", "speech", "music", "sound"}
        assert model["params_total"] > 0 and model["train_seconds"] > 0
        assert (output / name / "model.safetensors").is_file() and (output / name / "processor_config.json").is_file()
        assert list((output / name / "runs").rglob("events.out.tfevents.*"))
        assert (output / name / "runs" / "loss_curves.png").read_bytes().startswith(b"\x89PNG")
        assert f"{name}: answering the test questions: 100%" in result.stderr
    assert summary["models"]["moe"]["params_active"] < summary["models"]["moe"]["params_total"]
    assert summary["models"]["dense"]["params_active"] == summary["models"]["dense"]["params_total"]
    # One seed never names a winner (a smoke test at near-chance accuracy once printed "beats").
    assert "beats" not in result.stdout and "One seed names no winner" in result.stdout
    assert summary["moe_minus_dense"]["n"] == len((output / "corpus" / "test.jsonl").read_text().splitlines())


def test_selection_bias_moves_toward_equal_load():
    model = tiny_model(router_selection_bias=True)
    router = model.model.adapter.router
    assert torch.count_nonzero(router.selection_bias) == 0
    router.update_selection_bias(torch.tensor([10.0, 0, 0, 0, 0, 0, 0, 30]), rate=0.5)
    assert router.selection_bias.tolist() == [-0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -0.5]
    # The bias changes which experts are chosen, never their weights: those still come from the plain logits.
    x = torch.randn(64, model.config.audio_hidden_size)
    logits, weights, selected = router(x)
    torch.testing.assert_close(weights, torch.softmax(logits.gather(-1, selected), -1))
    with pytest.raises(ValueError, match="router_selection_bias=True"):
        tiny_model().model.adapter.router.update_selection_bias(torch.ones(8), 0.1)


def test_bias_balancing_through_the_trainer(corpus, checkpoint, tmp_path):
    plain_checkpoint = checkpoint
    checkpoint = tmp_path / "init"
    init_checkpoint(load_config("tiny-4s", router_selection_bias=True), checkpoint,
                    tokenizer=shipped_tokenizer("tiny-4s"))
    script_args, training_args = parse(checkpoint, corpus, tmp_path / "run", "--max_steps", "4", "--stage", "adapter",
                                       "--bias_update_rate", "0.01", "--aux_loss_coef", "0")
    trainer = build_trainer(script_args, training_args)
    trainer.train()
    bias = trainer.model.model.adapter.router.selection_bias
    assert torch.count_nonzero(bias) > 0 and bias.abs().max() <= 4 * 0.01 + 1e-6
    trainer.model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    torch.testing.assert_close(reloaded.model.adapter.router.selection_bias, bias)
    with pytest.raises(ValueError, match="needs a model with router_selection_bias=True"):
        build_trainer(*parse(plain_checkpoint, corpus, tmp_path / "run2", "--max_steps", "1",
                             "--bias_update_rate", "0.01"))


def test_lora_stage_logs_routing_and_balances_the_adapter_that_runs(corpus, tmp_path):
    """PEFT keeps a frozen copy of the adapter beside the trained one; the callback follows the one that routes."""
    checkpoint = tmp_path / "init"
    init_checkpoint(load_config("tiny-4s", router_selection_bias=True), checkpoint,
                    tokenizer=shipped_tokenizer("tiny-4s"))
    script_args, training_args = parse(checkpoint, corpus, tmp_path / "run", "--max_steps", "4", "--stage", "lora",
                                       "--lora_rank", "4", "--logging_steps", "2", "--bias_update_rate", "0.01")
    trainer = build_trainer(script_args, training_args)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "moe/expert_share/e0" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all(entry["moe/aux_loss"] >= 4.0 - 1e-6 for entry in logged)
    trained, frozen = (trainer.model.base_model.model.model.adapter.modules_to_save["default"],
                       trainer.model.base_model.model.model.adapter.original_module)
    assert torch.count_nonzero(trained.router.selection_bias) > 0
    assert torch.count_nonzero(frozen.router.selection_bias) == 0
    merged = trainer.model.merge_and_unload()
    torch.testing.assert_close(merged.model.adapter.router.selection_bias, trained.router.selection_bias)


def test_same_seed_same_weights(checkpoint, corpus, tmp_path):
    """Two MoE runs with the same seed end bit-identical (the expert dispatch sums its gradients in a fixed order)."""
    weights = []
    for run in range(2):
        script_args, training_args = parse(checkpoint, corpus, tmp_path / f"run{run}", "--max_steps", "4",
                                           "--stage", "full", "--train_encoder", "--learning_rate", "1e-2",
                                           "--per_device_train_batch_size", "8")
        trainer = build_trainer(script_args, training_args)
        trainer.train()
        weights.append({name: p.detach().clone() for name, p in trainer.model.named_parameters()})
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
