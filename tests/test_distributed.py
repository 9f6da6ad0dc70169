"""Sharded training on two CPU processes (gloo): `moe-audio train` with FSDP, launched by torchrun with the Trainer's
flags and `examples/fsdp_config.json` and by `accelerate launch` with `examples/accelerate_fsdp.yaml`, and with
DeepSpeed ZeRO-2 (`examples/deepspeed_zero2.json`) where DeepSpeed is installed."""

import importlib.util
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


EXAMPLES = ROOT / "examples"
LAUNCHERS = {
    "torchrun-trainer-flags": (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        ["--fsdp", "--fsdp_config", str(EXAMPLES / "fsdp_config.json")],
    ),
    # The GPU config as users copy it, with the command-line overrides a 2-process CPU run needs.
    "accelerate-launch-yaml": (
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / "accelerate_fsdp.yaml"),
         "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0"],
        [],
    ),
    # DeepSpeed's CPU accelerator (gloo and its shared-memory op): a run of the config, not of DeepSpeed's GPU kernels.
    # ZeRO-3 does not run so on CPU: the weights are partitioned as they load (`deepspeed.zero.Init`), before anything
    # has set up DeepSpeed's communication (accelerate does it on GPUs only), so DeepSpeed counts one process
    # ("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size 4 != 2 * 1 * 1").
    "torchrun-deepspeed-zero2": (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        ["--deepspeed", str(EXAMPLES / "deepspeed_zero2.json")],
    ),
}


@pytest.fixture(scope="module")
def single_process_run(tiny_checkpoint, corpus, tmp_path_factory):
    from modeling_moe_audio.commands import train

    output_dir = tmp_path_factory.mktemp("single") / "run"
    train.main(train_args(tiny_checkpoint, corpus, output_dir, batch_size=4))
    return output_dir


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed (not a dependency of moe-audio)")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [
    pytest.param(name, marks=needs_deepspeed if "deepspeed" in name else ()) for name in LAUNCHERS
])
def test_sharded_training_on_two_cpu_processes_matches_one_process_and_its_checkpoints_load(
    launcher, tiny_checkpoint, corpus, single_process_run, tmp_path
):
    single, sharded = single_process_run, tmp_path / "sharded"
    launch, sharding_flags = LAUNCHERS[launcher]
    in_memory = tmp_path / "in-memory.pt"
    result = subprocess.run(
        [*launch, str(ROOT / "tests" / "fsdp_worker.py"), *train_args(tiny_checkpoint, corpus, sharded, batch_size=2),
         *sharding_flags],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "IN_MEMORY_LOGITS": str(in_memory)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Really sharded (accelerate alone would have fallen back to DDP for FSDP on CPU): FSDP's or DeepSpeed's own
    # resumable copy of the weights is saved, and DDP's reducer is never built.
    own_format = "global_step2" if "deepspeed" in launcher else "pytorch_model_fsdp.bin"
    assert (sharded / "checkpoint-2" / own_format).exists()
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
