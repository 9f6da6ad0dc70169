"""`moe-audio analyze` and the gradient-conflict callback during training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_moe_audio.checkpoints.build import init_checkpoint
from modeling_moe_audio.data.corpus import write_corpus
from modeling_moe_audio.presets import load_config, shipped_tokenizer
from modeling_moe_audio.commands.train import build_parser
from modeling_moe_audio.training.trainer import build_trainer


MOE_AUDIO = str(Path(sys.executable).parent / "moe-audio")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), seed=5, sizes={"train": 24, "validation": 12, "test": 12})


@pytest.mark.parametrize("adapter_type", ["moe", "dense"])
def test_analyze_writes_figures_and_numbers(corpus, tmp_path, adapter_type):
    checkpoint = tmp_path / "ckpt"
    init_checkpoint(load_config("tiny-4s", adapter_type=adapter_type), checkpoint,
                    tokenizer=shipped_tokenizer("tiny-4s"))
    out = tmp_path / "analysis"
    result = subprocess.run([MOE_AUDIO, "analyze", str(checkpoint), str(corpus["train"]), "--output_dir", str(out),
                             "--eval_data", str(corpus["validation"])], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    analysis = json.loads((out / "analysis.json").read_text())
    assert (out / "gradient_cosine.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "gradient_influence.png").is_file()
    assert (out / "expert_heatmap.png").is_file() == (adapter_type == "moe")
    if adapter_type == "dense":
        assert "no experts to map" in json.dumps(analysis)
    from modeling_moe_audio.commands.analyze import main as analyze

    saved = (out / "analysis.json").read_bytes()
    with pytest.raises(SystemExit, match="is not empty .*--overwrite"):
        analyze([str(checkpoint), str(corpus["train"]), "--output_dir", str(out)])
    assert (out / "analysis.json").read_bytes() == saved


def test_gradient_cosines_are_logged_during_training(corpus, tmp_path):
    checkpoint = tmp_path / "ckpt"
    init_checkpoint(load_config("tiny-4s"), checkpoint, tokenizer=shipped_tokenizer("tiny-4s"))
    script_args, training_args = build_parser().parse_args_into_dataclasses(args=[
        "--model", str(checkpoint), "--train_data", str(corpus["train"]), "--output_dir", str(tmp_path / "run"),
        "--use_cpu", "--report_to", "tensorboard", "--disable_tqdm", "true", "--save_strategy", "no",
        "--max_steps", "4", "--logging_steps", "2", "--per_device_train_batch_size", "4",
        "--gradient_analysis_data", str(corpus["validation"]), "--gradient_analysis_every", "2",
    ])
    trainer = build_trainer(script_args, training_args)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "grad_cos/speech-music" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all(-1.0 <= entry["grad_cos/music-sound"] <= 1.0 for entry in logged)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next((tmp_path / "run" / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    assert "train/grad_cos/speech-sound" in accumulator.Tags()["scalars"]


def test_gradient_analysis_follows_the_trained_adapter_under_lora(corpus, tmp_path):
    """PEFT keeps a frozen original of the adapter beside the trained copy; the analyses measure the copy."""
    from modeling_moe_audio.analysis.gradients import category_gradients
    from modeling_moe_audio.analysis.routing import expert_activation
    from modeling_moe_audio.data.manifest import load_rows
    from modeling_moe_audio.unwrap import audio_adapter

    checkpoint = tmp_path / "ckpt"
    init_checkpoint(load_config("tiny-4s"), checkpoint, tokenizer=shipped_tokenizer("tiny-4s"))
    script_args, training_args = build_parser().parse_args_into_dataclasses(args=[
        "--model", str(checkpoint), "--train_data", str(corpus["train"]), "--output_dir", str(tmp_path / "run"),
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--stage", "lora",
        "--lora_rank", "4", "--max_steps", "2", "--logging_steps", "2", "--per_device_train_batch_size", "4",
        "--gradient_analysis_data", str(corpus["validation"]), "--gradient_analysis_every", "2",
    ])
    trainer = build_trainer(script_args, training_args)
    trainer.train()
    assert any("grad_cos/speech-music" in entry for entry in trainer.state.log_history)
    wrapper = trainer.model.base_model.model.model.adapter
    assert audio_adapter(trainer.model) is wrapper.modules_to_save["default"]
    with trainer.model.disable_adapter():
        assert audio_adapter(trainer.model) is wrapper.original_module
    rows = load_rows(corpus["validation"])
    gradients = category_gradients(trainer.model, trainer.processing_class, rows)
    assert all(g.numel() == sum(p.numel() for p in wrapper.modules_to_save["default"].parameters())
               for g in gradients.values())
    activation = expert_activation(trainer.model, trainer.processing_class, rows)
    assert sum(map(sum, activation["counts"].values())) == 4 * sum(activation["tokens"].values())
