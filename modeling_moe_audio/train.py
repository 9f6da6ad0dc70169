"""`moe-audio train`: fine-tune a checkpoint with the Hugging Face `Trainer` on JSONL manifests.

    moe-audio train --model runs/tiny-moe --train_data data/train.jsonl --eval_data data/validation.jsonl \\
        --output_dir runs/tiny-moe-trained --stage adapter --num_train_epochs 3 --per_device_train_batch_size 8

Every `TrainingArguments` flag works (`--gradient_accumulation_steps`, `--resume_from_checkpoint`, `--use_cpu`,
`--fsdp`, `--deepspeed`, `--push_to_hub`, ...). Defaults follow the paper: AdamW with betas (0.9, 0.95), a
warmup-stable-decay schedule (decay over the last 10% of the steps unless `--lr_scheduler_kwargs` says
otherwise), TensorBoard logs under `output_dir/runs`.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor, HfArgumentParser, Trainer, TrainingArguments

from .data import MoEAudioDataCollator, load_manifest
from .model_card import write_model_card
from .training import STAGES, AuxLossSchedule, MoEAuxLossCallback, add_lora, apply_stage, count_trainable, steps_for


PAPER_DEFAULTS = {
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "lr_scheduler_type": "warmup_stable_decay",
    "warmup_steps": 20,
    "report_to": ["tensorboard"],
    "remove_unused_columns": False,
    "logging_steps": 10,
    "save_strategy": "epoch",
}


@dataclass
class MoEAudioTrainArguments:
    model: str = field(metadata={"help": "checkpoint directory (model + processor), e.g. from `moe-audio init`"})
    train_data: str = field(metadata={"help": "JSONL manifest of the training examples"})
    eval_data: str | None = field(default=None, metadata={"help": "JSONL manifest evaluated during training"})
    stage: str = field(default="adapter", metadata={"help": f"what trains: one of {STAGES}"})
    train_encoder: bool = field(default=False, metadata={"help": "also train the Whisper encoder"})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank (stage lora)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (stage lora)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (stage lora)"})
    lora_target_modules: str | None = field(default=None, metadata={"help": "regex of the LLM modules LoRA wraps"})
    aux_loss_coef: float | None = field(default=None, metadata={"help": "lambda (default: the model config's)"})
    aux_loss_warmup_steps: int = field(default=0, metadata={"help": "steps over which lambda rises from 0"})
    aux_loss_decay_to: float | None = field(default=None, metadata={"help": "lambda at the last step (linear decay)"})
    collapse_threshold: float = field(default=0.1, metadata={"help": "warn below this fraction of an even share"})
    collapse_patience: int = field(default=3, metadata={"help": "logging steps below the threshold before a warning"})
    bias_update_rate: float = field(
        default=0.0, metadata={"help": "auxiliary-loss-free balancing step (needs router_selection_bias in the config)"}
    )
    gradient_analysis_data: str | None = field(
        default=None, metadata={"help": "manifest with categories: log their gradient cosines during training"}
    )
    gradient_analysis_every: int = field(default=50, metadata={"help": "steps between gradient analyses"})
    max_audio_seconds: float = field(default=600.0, metadata={"help": "rows with longer audio are bad rows"})
    skip_bad_rows: bool = field(default=False, metadata={"help": "leave bad manifest rows out instead of failing"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a model or checkpoints already saved in --output_dir"}
    )


SAVED_RUN_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def check_no_saved_run(output_dir: str | Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to write over a model or checkpoints saved in `output_dir`, unless resuming that run or asked to."""
    output_dir = Path(output_dir)
    if resuming or overwrite or not output_dir.is_dir():
        return
    saved = sorted(path.name for path in output_dir.iterdir()
                   if path.name in SAVED_RUN_FILES or (path.is_dir() and path.name.startswith("checkpoint-")))
    if saved:
        raise FileExistsError(
            f"{output_dir} already holds a saved run ({', '.join(saved[:4])}{', ...' if len(saved) > 4 else ''}), "
            "which training would overwrite: choose another --output_dir, continue that run with "
            "--resume_from_checkpoint, or pass --overwrite_output_dir to replace it."
        )


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser((MoEAudioTrainArguments, TrainingArguments))
    parser.set_defaults(**PAPER_DEFAULTS)
    return parser


def build_trainer(script_args: MoEAudioTrainArguments, training_args: TrainingArguments) -> Trainer:
    """The model set up for its stage, the data, and a `Trainer` with the aux-loss callback first in line."""
    processor = AutoProcessor.from_pretrained(script_args.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(script_args.model, trust_remote_code=True)
    if script_args.aux_loss_coef is not None:  # the configured lambda, which the saved config records
        model.config.router_aux_loss_coef = model.router_aux_loss_coef = script_args.aux_loss_coef
    if script_args.bias_update_rate and not model.config.router_selection_bias:
        raise ValueError(
            "--bias_update_rate needs a model with router_selection_bias=True in its config (a selection bias to nudge)."
        )
    apply_stage(model, script_args.stage, script_args.train_encoder)
    if script_args.stage == "lora":
        model = add_lora(
            model, script_args.lora_rank, script_args.lora_alpha, script_args.lora_dropout,
            script_args.lora_target_modules,
        )

    train_dataset, train_report = load_manifest(script_args.train_data, script_args.max_audio_seconds,
                                                script_args.skip_bad_rows)
    eval_dataset = None
    if script_args.eval_data:
        eval_dataset, _ = load_manifest(script_args.eval_data, script_args.max_audio_seconds, script_args.skip_bad_rows)
    if train_report.skipped:
        print(f"left out {len(train_report.skipped)} bad training rows:", *train_report.skipped, sep="\n  ")

    if training_args.lr_scheduler_type == "warmup_stable_decay" and "num_decay_steps" not in (
        training_args.lr_scheduler_kwargs or {}
    ):
        total = training_args.max_steps if training_args.max_steps > 0 else steps_for(
            len(train_dataset), training_args.per_device_train_batch_size,
            training_args.gradient_accumulation_steps, training_args.num_train_epochs, training_args.world_size,
        )
        training_args.lr_scheduler_kwargs = {
            **(training_args.lr_scheduler_kwargs or {}),
            "num_decay_steps": max(1, total // 10),
        }

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=MoEAudioDataCollator(processor),
        processing_class=processor,
    )
    coef = script_args.aux_loss_coef if script_args.aux_loss_coef is not None else model.config.router_aux_loss_coef
    MoEAuxLossCallback.install(
        trainer,
        schedule=AuxLossSchedule(coef, script_args.aux_loss_warmup_steps, script_args.aux_loss_decay_to),
        collapse_threshold=script_args.collapse_threshold,
        collapse_patience=script_args.collapse_patience,
        bias_update_rate=script_args.bias_update_rate,
    )
    if script_args.gradient_analysis_data:
        from .analyze import GradientConflictCallback, load_rows

        GradientConflictCallback.install(
            trainer, processor=processor, rows=load_rows(script_args.gradient_analysis_data),
            every_steps=script_args.gradient_analysis_every,
        )
    trainable, total = count_trainable(model)
    if trainer.is_world_process_zero():
        print(f"stage {script_args.stage}: training {trainable:,} of {total:,} parameters")
    return trainer


def save_final(trainer: Trainer, output_dir: str | Path, summary: str = "") -> Path:
    """Save a checkpoint that loads with `AutoModelForCausalLM` (LoRA merged into the LLM), its processor and card."""
    output_dir = Path(output_dir)
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.is_world_process_zero():
        model.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
        write_model_card(output_dir, training_summary=summary or None)
    return output_dir


def training_summary(script_args: MoEAudioTrainArguments, trainer: Trainer, metrics: dict) -> str:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    final_loss = f", last logged training loss {losses[-1]:.4f}" if losses else ""
    return (
        f"Trained with `moe-audio train` from `{script_args.model}`: stage `{script_args.stage}`"
        f"{' with the encoder' if script_args.train_encoder else ''}, {trainer.state.global_step} optimizer steps "
        f"on {len(trainer.train_dataset)} examples of `{Path(script_args.train_data).name}`, learning rate "
        f"{trainer.args.learning_rate} ({trainer.args.lr_scheduler_type}), AdamW betas ({trainer.args.adam_beta1}, "
        f"{trainer.args.adam_beta2}){final_loss}."
        + (f" Validation loss {metrics['eval_loss']:.4f}." if "eval_loss" in metrics else "")
    )


def train(script_args: MoEAudioTrainArguments, training_args: TrainingArguments) -> dict:
    check_no_saved_run(training_args.output_dir, bool(training_args.resume_from_checkpoint),
                       script_args.overwrite_output_dir)
    # The Trainer's own pushes leave out the model code (and race with checkpoint writes): publish once, at the end.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    trainer = build_trainer(script_args, training_args)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    metrics["summary"] = training_summary(script_args, trainer, metrics)
    save_final(trainer, training_args.output_dir, metrics["summary"])
    if trainer.is_world_process_zero():
        (Path(training_args.output_dir) / "train_results.json").write_text(json.dumps(metrics, indent=2))
        if push_to_hub:
            from .push import publish

            repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
            metrics["hub_commit"] = str(publish(training_args.output_dir, repo_id, token=training_args.hub_token,
                                                private=bool(training_args.hub_private_repo)))
    trainer.accelerator.wait_for_everyone()  # no rank leaves while rank 0 still writes or pushes
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    try:
        train(script_args, training_args)
    except FileExistsError as error:
        sys.exit(f"error: {error}")
    # A torchrun worker that exits with its process group still open can abort in the communication threads'
    # destructors ("terminate called without an active exception") and fail the whole launch.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
