"""What the demo and the ablations share: the tiny preset, the training budgets, and training and scoring one
tiny model on the built-in corpus."""

import time
from pathlib import Path

from ..checkpoints.build import init_checkpoint
from ..checkpoints.loading import load_checkpoint
from ..data.manifest import load_rows
from ..evaluation.accuracy import answer_hits, score_answers
from ..evaluation.generation import generate_answers
from ..presets import shipped_tokenizer
from ..progress import announce, progress_enabled
from ..training.trainer import MoEAudioTrainArguments, paper_training_arguments, train


# Corpus sizes count examples (four questions per clip); budgets are the same for every model.
# `probe_every`: optimizer steps between the gradient cosines that `compare` logs during training.
FULL = {"sizes": {"train": 2400, "validation": 200, "test": 400}, "epochs": 12, "batch_size": 16, "lr": 1e-3,
        "probe_every": 300}
QUICK = {"sizes": {"train": 480, "validation": 40, "test": 120}, "epochs": 3, "batch_size": 16, "lr": 1e-3,
         "probe_every": 30}
# The tiny preset with 4 s Whisper windows: the corpus's clips last 1-3 s, and a 30 s window would spend most of
# the encoder's time on padding.
PRESET = "tiny-4s"


def train_one(name: str, config, output: Path, manifests: dict, budget: dict, seed: int,
              gradient_probe: Path | None = None, probe_every: int = 300) -> float:
    """Initialise `config` with `seed` in `output/<name>-init` and train it into `output/<name>`; returns seconds.

    `gradient_probe`: a manifest whose categories' gradient cosines are logged every `probe_every` steps (in the
    checkpoint's `trainer_state.json` and TensorBoard logs, as `grad_cos/<a>-<b>`)."""
    init_dir = output / f"{name}-init"
    announce(f"{name}: initialising the model in {init_dir}")
    init_checkpoint(config, init_dir, tokenizer=shipped_tokenizer(PRESET), seed=seed, overwrite=True)
    script_args = MoEAudioTrainArguments(
        model=str(init_dir),
        train_data=str(manifests["train"]),
        eval_data=str(manifests["validation"]),
        stage="full",
        train_encoder=True,
        gradient_analysis_data=str(gradient_probe) if gradient_probe else None,
        gradient_analysis_every=probe_every,
        overwrite=True,  # the demo (and ablate) decide what may be replaced in `output`
    )
    training_args = paper_training_arguments(
        output / name,
        num_train_epochs=budget["epochs"],
        per_device_train_batch_size=budget["batch_size"],
        per_device_eval_batch_size=budget["batch_size"],
        learning_rate=budget["lr"],
        warmup_steps=20,
        weight_decay=0.01,
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        logging_steps=10,
        eval_strategy="epoch",
        save_strategy="no",
        report_to=["tensorboard"],
        dataloader_num_workers=0,
        disable_tqdm=not progress_enabled(),
    )
    announce(f"{name}: training for {budget['epochs']} epochs into {output / name} "
             f"(TensorBoard: tensorboard --logdir {output / name / 'runs'})")
    start = time.perf_counter()
    train(script_args, training_args)
    return time.perf_counter() - start


def evaluate_one(checkpoint: Path, test_manifest: Path) -> tuple[dict, list[bool]]:
    """Test accuracy overall and per category of greedy one-word answers, and whether each answer was right (in
    the manifest's order, so two models' answers to the same questions pair up)."""
    model, processor = load_checkpoint(checkpoint)
    rows = load_rows(test_manifest)
    answers = generate_answers(model, processor, rows, desc=f"{Path(checkpoint).name}: answering the test questions")
    return score_answers(rows, answers, group_key="category"), answer_hits(rows, answers)
