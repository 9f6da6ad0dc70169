"""The examples run as documented, and the distributed configs in examples/ read as documented."""

import json
import subprocess
import sys
from pathlib import Path

import pytest



EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "tokens routed to each expert" in result.stdout and "generated ids" in result.stdout


# --- The distributed configs users copy (README, "Distributed") --------------------------------------------------------
# Read here by the code that reads them in a real run; the FSDP ones and ZeRO-2 also train in tests/test_distributed.py
# (2 CPU processes; ZeRO-2 where DeepSpeed is installed).

def test_the_trainer_reads_the_fsdp_config_as_fsdp2_with_full_state_dicts(tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, fsdp=True,
                             fsdp_config=str(EXAMPLES / "fsdp_config.json"))
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)  # every checkpoint-N gets a model.safetensors
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


def test_accelerate_launch_reads_the_fsdp_yaml_as_fsdp2_with_full_state_dicts(monkeypatch):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    # What `accelerate launch --config_file examples/accelerate_fsdp.yaml -m ...` does before it starts the processes.
    args = launch_command_parser().parse_args(
        ["--config_file", str(EXAMPLES / "accelerate_fsdp.yaml"), "-m", "modeling_moe_audio.commands.train"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 8 and args.mixed_precision == "bf16"
    for name, value in prepare_multi_gpu_env(args).items():
        if name.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(name, value)
    plugin = FullyShardedDataParallelPlugin()  # each process builds it from those variables
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True and not plugin.activation_checkpointing
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2.json", 2), ("deepspeed_zero3.json", 3)])
def test_the_deepspeed_configs_leave_the_training_choices_to_the_trainer(name, stage):
    config = json.loads((EXAMPLES / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    # No optimizer or scheduler section: the Trainer's (the paper's AdamW betas, warmup-stable-decay) stay in charge.
    assert "optimizer" not in config and "scheduler" not in config
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto", key  # filled from TrainingArguments, so the flags keep their meaning
    if stage == 3:  # else the Trainer's saves hold no usable weights (only DeepSpeed's own shards)
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2.json", 2), ("deepspeed_zero3.json", 3)])
def test_training_arguments_fill_the_deepspeed_configs(name, stage, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (not a dependency of moe-audio)")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    try:
        args = TrainingArguments(output_dir=str(tmp_path), deepspeed=str(EXAMPLES / name),
                                 per_device_train_batch_size=3, gradient_accumulation_steps=2, max_grad_norm=0.5)
        config = args.hf_deepspeed_config
        assert config.get_value("zero_optimization.stage") == stage == args.deepspeed_plugin.zero_stage
        assert config.is_zero3() == (stage == 3)
        assert config.get_value("train_micro_batch_size_per_gpu") == 3
        assert config.get_value("gradient_accumulation_steps") == 2
        assert config.get_value("train_batch_size") == 6
        assert config.get_value("gradient_clipping") == 0.5
    finally:  # the ZeRO-3 config is process-wide while it is set: later from_pretrained calls would obey it
        unset_hf_deepspeed_config()
