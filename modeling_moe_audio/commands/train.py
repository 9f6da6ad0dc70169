"""`moe-audio train`: fine-tune a checkpoint with the Hugging Face `Trainer` on JSONL manifests or datasets.

    moe-audio train --model runs/tiny-moe --train_data data/train.jsonl --eval_data data/validation.jsonl \\
        --output_dir runs/tiny-moe-trained --stage adapter --num_train_epochs 3 --per_device_train_batch_size 8
    moe-audio train --model runs/tiny-moe --train_data org/audio-qa --eval_data org/audio-qa --audio_column clip \\
        --prompt_column question --response_column answer --streaming --max_steps 2000 --output_dir runs/qa

--train_data / --eval_data take a JSONL manifest, a dataset saved with `save_to_disk`, a parquet file or folder, or a
Hub dataset id (`--split` / `--eval_split` choose the split).

Every `TrainingArguments` flag works (`--help-all` lists them). Defaults follow the paper: AdamW with betas
(0.9, 0.95), a warmup-stable-decay schedule (decay over the last 10% of the steps unless `--lr_scheduler_kwargs`
says otherwise), TensorBoard logs under `output_dir/runs`. Launch on several processes with
`torchrun --nproc_per_node N --no_python moe-audio train ...` or `accelerate launch -m modeling_moe_audio.commands.train`.
"""

import argparse
import dataclasses
import sys

from transformers import HfArgumentParser, TrainingArguments

from .common import DASHES, HelpFormatter, run, set_debug

from ..training.trainer import PAPER_DEFAULTS, MoEAudioTrainArguments, train


# The TrainingArguments flags `--help` shows; `--help-all` shows all of them (several hundred lines).
COMMON_TRAINING_FLAGS = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_steps", "lr_scheduler_type",
    "lr_scheduler_kwargs", "bf16", "fp16", "use_cpu", "seed", "data_seed", "logging_steps", "eval_strategy",
    "save_strategy", "save_steps", "report_to", "resume_from_checkpoint", "push_to_hub", "hub_model_id",
    "hub_token", "hub_private_repo", "fsdp", "deepspeed", "dataloader_num_workers",
)


def build_parser(all_training_flags: bool = False) -> HfArgumentParser:
    parser = HfArgumentParser(
        (MoEAudioTrainArguments, TrainingArguments),
        prog="moe-audio train",
        usage="moe-audio train --model DIR --train_data DATA --output_dir DIR [options]",
        description=__doc__,
        epilog=f"--help-all lists every TrainingArguments flag; --debug shows the whole traceback of an error. {DASHES}",
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(**PAPER_DEFAULTS)
    if not all_training_flags:
        ours = {field.name for field in dataclasses.fields(MoEAudioTrainArguments)}
        for action in parser._actions:
            if action.dest not in ours and action.dest not in COMMON_TRAINING_FLAGS and action.dest != "help":
                action.help = argparse.SUPPRESS
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--help-all" in argv:
        build_parser(all_training_flags=True).print_help()
        return
    set_debug("--debug" in argv)
    script_args, training_args = build_parser().parse_args_into_dataclasses(
        args=[arg for arg in argv if arg != "--debug"])
    try:
        run(train, script_args, training_args)
    finally:
        import torch

        # A torchrun worker that exits with its process group still open can abort in the communication threads'
        # destructors ("terminate called without an active exception") and fail the whole launch.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
