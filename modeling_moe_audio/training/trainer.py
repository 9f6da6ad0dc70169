"""Fine-tuning with the Hugging Face `Trainer` on manifests or datasets (`data.sources`): `train(script_args,
training_args)`.

`MoEAudioTrainArguments` holds what is ours (the data, the stage, LoRA, the aux-loss schedule); every
`TrainingArguments` field works beside it. `paper_training_arguments(output_dir, ...)` gives the paper's defaults:
AdamW with betas (0.9, 0.95), a warmup-stable-decay schedule (decay over the last 10% of the steps unless
`lr_scheduler_kwargs` says otherwise), TensorBoard logs under `output_dir/runs`.
"""

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import is_accelerate_available

from ..checkpoints.loading import load_checkpoint

from ..data.collator import MoEAudioDataCollator
from ..data.manifest import load_rows
from ..data.semantic_ids import SemanticIdsRule
from ..data.sources import DataColumns, load_training_data
from ..checkpoints.model_card import write_model_card
from ..output_dirs import check_output_dir, resumes_run_in
from .callbacks import AuxLossSchedule, GradientConflictCallback, LossCurveCallback, MoEAuxLossCallback
from .stages import LORA_TARGETS, STAGES, add_lora, apply_stage, count_trainable, steps_for


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
    train_data: str = field(metadata={
        "help": "the training examples: a JSONL manifest, a dataset saved with save_to_disk, a parquet file or a folder "
                "of them, or a Hub dataset id"})
    eval_data: str | None = field(default=None, metadata={"help": "examples evaluated during training (as --train_data)"})
    split: str | None = field(default=None, metadata={
        "help": "split of --train_data (dataset dicts, folders, Hub ids); none given: the only one, else 'train'"})
    eval_split: str | None = field(default=None, metadata={
        "help": "split of --eval_data; none given: the only one, else 'validation'"})
    audio_column: str = field(default="audio", metadata={
        "help": "dataset column of each row's clip or list of clips (datasets.Audio or paths)"})
    prompt_column: str = field(default="prompt", metadata={"help": "dataset column of the prompt text"})
    response_column: str = field(default="response", metadata={"help": "dataset column of the answer text"})
    conversation_column: str = field(default="conversation", metadata={
        "help": "dataset column of whole conversations (a manifest's 'conversation'), used instead where not null"})
    streaming: bool = field(default=False, metadata={
        "help": "stream the data (never loaded whole; rows checked as they are read); needs --max_steps"})
    stage: str = field(default="adapter", metadata={"help": f"what trains: one of {STAGES}"})
    train_encoder: bool = field(default=False, metadata={"help": "also train the Whisper encoder"})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank (stage lora)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (stage lora)"})
    lora_dropout: float | None = field(
        default=None, metadata={"help": "LoRA dropout (stage lora); default 0.05, and 0 (the only choice) with experts"}
    )
    lora_targets: str = field(
        default="llm", metadata={"help": f"where LoRA goes (stage lora): one of {', '.join(LORA_TARGETS)}: the LLM's "
                                         "attention and MLP projections, the MoE adapter's expert weights, or both"}
    )
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "regex (full match) of the LLM modules LoRA wraps, instead of the attention "
                                        "and MLP projections (--lora_targets llm or llm+experts)"}
    )
    lora_target_parameters: list[str] | None = field(
        default=None, metadata={"help": "expert weights LoRA wraps (--lora_targets experts or llm+experts); default: "
                                        "adapter.experts.up_proj adapter.experts.down_proj"}
    )
    aux_loss_coef: float | None = field(default=None, metadata={"help": "lambda of eq. 6; None: the model config's"})
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
    skip_bad_rows: bool = field(default=False, metadata={"help": "leave bad data rows out instead of failing"})
    overwrite: bool = field(
        default=False, metadata={"help": "write into a non-empty --output_dir (replacing what a run saved there)"}
    )


def _checked_data(role: str, script_args: MoEAudioTrainArguments, semantic: SemanticIdsRule = SemanticIdsRule()):
    """The training or evaluation rows, checked (as they stream, with --streaming), their semantic ids against what
    the model takes (`semantic`); the bad rows left out listed."""
    training = role == "training"
    columns = DataColumns(script_args.audio_column, script_args.prompt_column, script_args.response_column,
                          script_args.conversation_column)
    dataset, report = load_training_data(
        script_args.train_data if training else script_args.eval_data, columns,
        split=script_args.split if training else script_args.eval_split,
        default_split="train" if training else "validation", split_flag="--split" if training else "--eval_split",
        streaming=script_args.streaming, max_audio_seconds=script_args.max_audio_seconds,
        skip_bad_rows=script_args.skip_bad_rows, semantic=semantic,
    )
    if report.skipped and not script_args.streaming:  # a stream logs each as it reaches it
        print(f"left out {len(report.skipped)} bad {role} rows (--skip_bad_rows):", *report.skipped, sep="\n  ")
    return dataset, report


STAGING_PREFIX = ".saving-"  # saves are written under this name, then renamed into place
FSDP_MIN_ACCELERATE = "1.7.0"  # FSDP2 saves full state dicts from 1.7 (1.6: "FSDP2 only supports SHARDED_STATE_DICT")


@contextlib.contextmanager
def original_class(model):
    """`model` with its own class while it saves, if FSDP2 gave it another.

    `fully_shard` swaps a module's class for a subclass made on the fly (`FSDPMoEAudioForCausalLM`, defined in a
    torch module): `save_pretrained` would copy torch's `_fsdp_*.py` files in place of the model code and point
    `auto_map` at them. Saving with a full state dict needs none of FSDP's methods, so the class can go back.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded_class = type(model)
    if not issubclass(sharded_class, FSDPModule):
        yield model
        return
    model.__class__ = next(cls for cls in sharded_class.__mro__ if not issubclass(cls, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded_class


def share_tied_weights(state_dict: dict | None, model) -> dict | None:
    """`state_dict` with each tied weight's copy sharing its source tensor again.

    FSDP's full state dict holds a tied weight (`lm_head.weight`, tied to the embeddings) as two equal tensors;
    `save_pretrained` leaves out only copies that share storage, so it would write both.
    """
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if state_dict and target in state_dict and source in state_dict and torch.equal(state_dict[target],
                                                                                         state_dict[source]):
            state_dict[target] = state_dict[source]
    return state_dict


def wrap_only_layers_the_model_has(fsdp_plugin, model) -> None:
    """Shard each layer named in `_no_split_modules` that `model` has, as its own FSDP unit.

    `_no_split_modules` names the classes of every configuration (`DenseAdapter` and `MoEAdapter`, Whisper's decoder
    layers); accelerate before 1.16 stops at the first one a model lacks ("Could not find the transformer layer class
    DenseAdapter"). A class list given in the FSDP config (`transformer_layer_cls_to_wrap`) is left as it is.
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = fsdp_plugin.auto_wrap_policy
    if getattr(policy, "func", policy) is not transformer_auto_wrap_policy or fsdp_plugin.transformer_cls_names_to_wrap:
        return
    present = {type(module).__name__ for module in model.modules()}
    fsdp_plugin.transformer_cls_names_to_wrap = sorted(set(getattr(model, "_no_split_modules", None) or ()) & present)


class MoEAudioTrainer(Trainer):
    """The `Trainer`, with each checkpoint written under a temporary name and renamed once complete: a run killed
    during a save leaves no half-written `checkpoint-N` (a 0-byte config.json) for a later resume to trip over.
    `--fsdp` also shards on CPU processes (gloo), where accelerate alone would quietly fall back to DDP."""

    def create_accelerator_and_postprocess(self) -> None:
        fsdp_asked = self.args.fsdp_plugin_args is not None or os.environ.get("ACCELERATE_USE_FSDP") == "true"
        if fsdp_asked and not is_accelerate_available(FSDP_MIN_ACCELERATE):
            raise ValueError(
                f"FSDP needs accelerate>={FSDP_MIN_ACCELERATE} (FSDP2 with full state dicts); this is accelerate "
                f"{importlib.metadata.version('accelerate')}. Run: pip install 'accelerate>={FSDP_MIN_ACCELERATE}'"
            )
        super().create_accelerator_and_postprocess()
        if not self.is_fsdp_enabled:
            self._shard_on_cpu_if_asked()
        if self.is_fsdp_enabled:
            wrap_only_layers_the_model_has(self.accelerator.state.fsdp_plugin, self.model)

    def _shard_on_cpu_if_asked(self) -> None:
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        from_flags = self.args.fsdp_plugin_args is not None  # --fsdp, --fsdp_config
        # `accelerate launch --config_file` with `distributed_type: FSDP` asks for it through FSDP_* variables.
        from_launcher = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if not (from_flags or from_launcher and state.distributed_type == DistributedType.MULTI_CPU):
            return
        plugin = FullyShardedDataParallelPlugin(**(self.args.fsdp_plugin_args if from_flags else {}))
        # accelerate turns FSDP on only for accelerator devices (its MULTI_GPU/XPU/... branch); on CPU it drops the
        # plugin and wraps the model in DDP. torch's FSDP2 (`fully_shard`) runs on CPU with gloo, so turn it on here.
        if state.distributed_type != DistributedType.MULTI_CPU or plugin.fsdp_version != 2:
            raise ValueError(
                f"FSDP was asked for, but accelerate set up {state.distributed_type.value} without it. On CPU, "
                "moe-audio shards with FSDP2 only (fsdp_config version 2, the default); on GPUs launch with "
                "`torchrun` or `accelerate launch` and without --use_cpu."
            )
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        # Where accelerate does turn FSDP on, it records it in both states (`AcceleratorState.__init__`): do the same.
        state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        state.fsdp_plugin = plugin
        # Once more, on the state now set up for FSDP: the Trainer sees FSDP and runs its own FSDP checks.
        super().create_accelerator_and_postprocess()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # With fsdp_config state_dict_type SHARDED_STATE_DICT the Trainer writes the weights only in FSDP's sharded
        # format (kept, for resuming): gather them as well, so that every checkpoint loads with from_pretrained.
        if self.is_fsdp_enabled and "SHARDED" in str(self.accelerator.state.fsdp_plugin.state_dict_type):
            self._save(output_dir or self.args.output_dir, state_dict=self.accelerator.get_state_dict(self.model))
        super().save_model(output_dir, _internal_call)

    def _save(self, output_dir=None, state_dict=None) -> None:
        with original_class(self.model):
            super()._save(output_dir, share_tied_weights(state_dict, self.model))

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / f"{STAGING_PREFIX}{name}"
        self._get_output_dir = lambda trial=None: str(staging)  # the library writes `checkpoint-N` under `staging`
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        self.accelerator.wait_for_everyone()  # every rank has written its part (RNG states)
        if self.args.should_save:
            shutil.rmtree(run_dir / name, ignore_errors=True)
            os.replace(staging / name, run_dir / name)
            shutil.rmtree(staging)
            if self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(str(staging), str(run_dir))
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()


def paper_training_arguments(output_dir: str | Path, **overrides) -> TrainingArguments:
    """`TrainingArguments` with the paper's defaults (`PAPER_DEFAULTS`), any of which `overrides` replaces."""
    return TrainingArguments(output_dir=str(output_dir), **{**PAPER_DEFAULTS, **overrides})


def build_trainer(script_args: MoEAudioTrainArguments, training_args: TrainingArguments) -> Trainer:
    """The model set up for its stage, the data, and a `Trainer` with the aux-loss callback first in line."""
    # LoRA's weights are drawn before the Trainer seeds: seed here, so that --seed decides them and every rank draws
    # the same ones (FSDP, unlike DDP, does not copy rank 0's weights to the others).
    set_seed(training_args.seed)
    model, processor = load_checkpoint(script_args.model)
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
            script_args.lora_target_modules, script_args.lora_targets, script_args.lora_target_parameters,
        )

    if script_args.max_audio_seconds > processor.max_audio_seconds:
        raise ValueError(
            f"--max_audio_seconds {script_args.max_audio_seconds} is above the processor's own limit of "
            f"{processor.max_audio_seconds} s, so longer rows would pass the check and fail mid-epoch; use at most "
            f"{processor.max_audio_seconds} (or save the processor with a higher max_audio_seconds)."
        )
    if script_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps: a streamed dataset has no length, so the number of steps "
                         "cannot come from --num_train_epochs.")
    semantic = SemanticIdsRule.for_model(model.config, processor)
    train_dataset, train_report = _checked_data("training", script_args, semantic)
    eval_dataset = _checked_data("evaluation", script_args, semantic)[0] if script_args.eval_data else None

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

    trainer = MoEAudioTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=MoEAudioDataCollator(processor),
        processing_class=processor,
    )
    trainer.train_data_report = train_report  # a stream's counts grow as training reads it
    coef = script_args.aux_loss_coef if script_args.aux_loss_coef is not None else model.config.router_aux_loss_coef
    MoEAuxLossCallback.install(
        trainer,
        schedule=AuxLossSchedule(coef, script_args.aux_loss_warmup_steps, script_args.aux_loss_decay_to),
        collapse_threshold=script_args.collapse_threshold,
        collapse_patience=script_args.collapse_patience,
        bias_update_rate=script_args.bias_update_rate,
    )
    if script_args.gradient_analysis_data:
        GradientConflictCallback.install(
            trainer, processor=processor, rows=load_rows(script_args.gradient_analysis_data),
            every_steps=script_args.gradient_analysis_every,
        )
    trainer.add_callback(LossCurveCallback(base_model=_public_name(script_args.model)))
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
    # Under FSDP (and DeepSpeed ZeRO-3) each rank holds a shard of each weight: every rank joins in gathering the
    # full state dict, as the Trainer's own `save_model` does.
    state_dict = None
    if trainer.is_fsdp_enabled:
        state_dict = trainer.accelerator.get_state_dict(model)
    elif trainer.is_deepspeed_enabled:
        state_dict = trainer.accelerator.get_state_dict(trainer.deepspeed)
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX, dir=output_dir) as staging, original_class(model):
            model.save_pretrained(staging, state_dict=share_tied_weights(state_dict, model))
            trainer.processing_class.save_pretrained(staging)
            write_model_card(staging, training_summary=summary or None)
            for path in Path(staging).iterdir():
                os.replace(path, output_dir / path.name)  # each file whole, or the old one: never half-written
    return output_dir


def training_summary(script_args: MoEAudioTrainArguments, trainer: Trainer, metrics: dict) -> str:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    final_loss = f", last logged training loss {losses[-1]:.4f}" if losses else ""
    return (
        f"Trained with `moe-audio train` from `{_public_name(script_args.model)}`: stage `{script_args.stage}`"
        f"{f' (LoRA on `{script_args.lora_targets}`)' if script_args.stage == 'lora' else ''}"
        f"{' with the encoder' if script_args.train_encoder else ''}, {trainer.state.global_step} optimizer steps "
        f"on {_examples(script_args, trainer)} of `{_public_name(script_args.train_data)}`, learning rate "
        f"{trainer.args.learning_rate} ({_scheduler_name(trainer.args.lr_scheduler_type)}), AdamW betas ({trainer.args.adam_beta1}, "
        f"{trainer.args.adam_beta2}){final_loss}."
        + (f" Validation loss {metrics['eval_loss']:.4f}." if "eval_loss" in metrics else "")
    )


def _examples(script_args: MoEAudioTrainArguments, trainer: Trainer) -> str:
    report = trainer.train_data_report
    if not script_args.streaming:
        return f"{len(trainer.train_dataset)} examples"
    if trainer.args.dataloader_num_workers > 0:  # the rows were checked, and counted, in the loader's processes
        return "a stream"
    left_out = f", {len(report.skipped)} bad rows left out" if report.skipped else ""
    return f"a stream ({report.kept} checked rows read{left_out})"


def _public_name(model: str) -> str:
    """A Hub id as it is; a local folder by its name only (its path is private)."""
    return Path(model).resolve().name if Path(model).exists() else model


def _scheduler_name(scheduler) -> str:
    return getattr(scheduler, "value", scheduler)  # a `SchedulerType` member prints as its class and name


def train(script_args: MoEAudioTrainArguments, training_args: TrainingArguments) -> dict:
    if training_args.process_index == 0:  # one rank decides: another's check could see rank 0's first files
        check_output_dir(training_args.output_dir, script_args.overwrite,
                         resuming=resumes_run_in(training_args.output_dir, training_args.resume_from_checkpoint))
    # The Trainer's own pushes leave out the model code (and race with checkpoint writes): publish once, at the end.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    trainer = build_trainer(script_args, training_args)
    def empty_stream() -> ValueError:
        return ValueError(f"Training data {script_args.train_data} streamed no usable rows "
                          f"({len(trainer.train_data_report.skipped)} left out, listed above).")

    try:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    except ValueError:  # accelerate's own words for a stream that yields nothing ("Batch does not contain any data")
        report = trainer.train_data_report
        if script_args.streaming and report.kept == 0 and report.skipped:
            raise empty_stream() from None
        raise
    if script_args.streaming and trainer.state.global_step == 0:
        raise empty_stream()
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    metrics["summary"] = training_summary(script_args, trainer, metrics)
    save_final(trainer, training_args.output_dir, metrics["summary"])
    trainer.save_state()  # trainer_state.json: the log history (never published, see hub.publish.TRAINING_LEFTOVERS)
    if trainer.is_world_process_zero():
        (Path(training_args.output_dir) / "train_results.json").write_text(json.dumps(metrics, indent=2))
        if push_to_hub:
            from ..hub.publish import checkpoint_files, publish

            repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
            uploaded, left_out = checkpoint_files(training_args.output_dir)
            print(f"uploading {len(uploaded)} files to {repo_id} ({len(left_out)} left out):", *uploaded, sep="\n  ")
            metrics["hub_commit"] = str(publish(training_args.output_dir, repo_id, token=training_args.hub_token,
                                                private=bool(training_args.hub_private_repo)))
    trainer.accelerator.wait_for_everyone()  # no rank leaves while rank 0 still writes or pushes
    return metrics
