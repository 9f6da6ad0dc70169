"""FSDP on two CPU processes (gloo), through `moe-audio train`'s Trainer flags and `examples/fsdp_config.json`."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from helpers import ROOT
from remote_code import run_without_package


CODE_FILES = {"configuration_moe_audio.py", "modeling_moe_audio.py", "processing_moe_audio.py"}


@pytest.fixture(scope="module")
def corpus(make_corpus):
    return make_corpus(seed=3, sizes={"train": 48, "validation": 8, "test": 8})


def train_args(checkpoint, corpus, output_dir, batch_size):
    # Four steps at a constant, large learning rate, so that checkpoint-2, checkpoint-4 and the start all differ.
    # The balance loss is off: it is computed on each rank's own micro-batch (as under DDP), so with it the loss of a
    # sharded run is not the loss of the whole batch (README, "Distributed"); everything else must match.
    return [
        "--model", str(checkpoint), "--train_data", str(corpus["train"]), "--output_dir", str(output_dir),
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--data_seed", "0",
        "--dataloader_num_workers", "0", "--stage", "full", "--max_steps", "4", "--logging_steps", "1",
        "--save_strategy", "steps", "--save_steps", "2", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
        "--warmup_steps", "0", "--aux_loss_coef", "0", "--per_device_train_batch_size", str(batch_size),
    ]


def logged_losses(output_dir):
    history = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def weight_names(folder):
    with safe_open(folder / "model.safetensors", "pt") as weights:
        return set(weights.keys())


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_matches_one_process_and_its_checkpoints_load(tiny_checkpoint, corpus, tmp_path):
    from modeling_moe_audio.commands import train

    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    train.main(train_args(tiny_checkpoint, corpus, single, batch_size=4))
    in_memory = tmp_path / "in-memory.pt"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "fsdp_worker.py"), *train_args(tiny_checkpoint, corpus, sharded, batch_size=2),
         "--fsdp", "--fsdp_config", str(ROOT / "examples" / "fsdp_config.json")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "IN_MEMORY_LOGITS": str(in_memory)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Really sharded: DDP's reducer is never built (accelerate alone would have fallen back to it on CPU).
    assert "find_unused_parameters" not in result.stderr

    # The same global batch of 4 at every step (2 rows on each of 2 ranks): the same losses, up to float32 summation
    # order (measured: at most 5e-7 apart).
    single_losses, sharded_losses = logged_losses(single), logged_losses(sharded)
    assert len(single_losses) == len(sharded_losses) == 4
    assert sharded_losses == pytest.approx(single_losses, abs=1e-5)

    # Each save is a normal checkpoint: the package's code files (not torch's `_fsdp_*.py`, which FSDP2's swapped
    # class would have brought), `auto_map` pointing at them, and the weights under the names of an unsharded save.
    for folder in (sharded / "checkpoint-2", sharded / "checkpoint-4", sharded):
        names = {path.name for path in folder.iterdir()}
        assert CODE_FILES <= names and not any(name.startswith("_fsdp") for name in names), (folder, names)
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert set(auto_map.values()) == {"configuration_moe_audio.MoEAudioConfig",
                                          "modeling_moe_audio.MoEAudioModel", "modeling_moe_audio.MoEAudioForCausalLM"}
        assert weight_names(folder) == weight_names(tiny_checkpoint), folder

    # Loaded where only the checkpoint's own code can run: checkpoint-4 and the final folder give the logits of the
    # trained model in memory; checkpoint-2 and the final folder give those of the one-process run's.
    folders = {"ckpt2": sharded / "checkpoint-2", "ckpt4": sharded / "checkpoint-4", "final": sharded,
               "single_ckpt2": single / "checkpoint-2", "single_final": single}
    logits_file = tmp_path / "loaded-logits.pt"
    run_without_package(f"""
        import torch
        from transformers import AutoModelForCausalLM

        batch = torch.load({str(in_memory)!r})["batch"]
        logits = {{}}
        for name, folder in {({name: str(folder) for name, folder in folders.items()})!r}.items():
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                logits[name] = model(**batch).logits
        torch.save(logits, {str(logits_file)!r})
    """, cwd=tmp_path)
    loaded, trained = torch.load(logits_file), torch.load(in_memory)["logits"]
    torch.testing.assert_close(loaded["ckpt4"], trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(loaded["final"], trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(loaded["ckpt2"], loaded["single_ckpt2"], rtol=0, atol=1e-3)
    torch.testing.assert_close(loaded["final"], loaded["single_final"], rtol=0, atol=1e-3)
    assert (loaded["ckpt2"] - loaded["final"]).abs().max() > 1e-2  # the steps between the two saves changed them
