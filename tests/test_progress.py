"""Progress on long work: bars and phase messages on stderr (quiet on request), and the loss-curve figure that
training draws beside its TensorBoard logs."""

import pytest
from matplotlib.image import imread
from transformers.utils import logging as transformers_logging

from modeling_moe_audio.experiments.tiny import evaluate_one
from modeling_moe_audio.training.callbacks import LossCurveCallback
from modeling_moe_audio.training.trainer import build_trainer

from helpers import moe_audio, parse_train_args as parse


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus(make_corpus):
    return make_corpus(seed=3, sizes={"train": 48, "validation": 8, "test": 8})


def loss_curves_of(trainer) -> LossCurveCallback:
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, LossCurveCallback)]
    return callback


def test_training_draws_train_eval_and_aux_loss_beside_the_tensorboard_logs(tiny_checkpoint, corpus, tmp_path):
    output = tmp_path / "tiny-moe-run"
    script_args, training_args = parse(
        tiny_checkpoint, corpus, output, "--eval_data", str(corpus["validation"]), "--max_steps", "4",
        "--logging_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2", "--per_device_train_batch_size", "4",
        "--report_to", "tensorboard",
    )
    trainer = build_trainer(script_args, training_args)
    trainer.train()
    callback = loss_curves_of(trainer)
    png = output / "runs" / "loss_curves.png"
    assert callback.drawn["path"] == png
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    height, width = imread(png).shape[:2]
    assert 440 <= height <= 480 and 1180 <= width <= 1230  # about 10 x 3.8 inches at 120 dpi, cropped to its labels
    assert list((output / "runs").rglob("events.out.tfevents.*")), "the PNG lies beside the TensorBoard logs"
    losses, aux = callback.drawn["panels"]
    # Logged and evaluated at steps 2 and 4; the model's loss includes lambda * aux loss, and the legend says so.
    assert losses["series"] == {"train loss (+ λ·aux)": 2, "eval loss (+ λ·aux)": 2}
    assert aux["series"] == {"moe/aux_loss": 2} and not aux["texts"]
    assert losses["xlabel"] == aux["xlabel"] == "optimizer step" and losses["ylabel"] == "loss" and aux["ylabel"]
    assert callback.drawn["title"] == f"tiny-moe-run (moe adapter, from {tiny_checkpoint.name}): training losses"
    trainer.evaluate()  # the final evaluation of `moe-audio train` redraws the figure with its point
    assert loss_curves_of(trainer).drawn["panels"][0]["series"]["eval loss (+ λ·aux)"] == 3


def test_a_dense_model_gets_a_note_instead_of_an_aux_loss_curve(tiny_dense_checkpoint, corpus, tmp_path):
    script_args, training_args = parse(
        tiny_dense_checkpoint, corpus, tmp_path / "dense", "--max_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "4",
    )
    trainer = build_trainer(script_args, training_args)
    trainer.train()
    losses, aux = loss_curves_of(trainer).drawn["panels"]
    assert losses["series"] == {"train loss": 2}
    assert aux["series"] == {} and aux["texts"] == ["dense adapter:\nno load-balancing loss"]
    assert (tmp_path / "dense" / "runs" / "loss_curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_the_demo_answering_phase_shows_a_bar_unless_quieted(tiny_checkpoint, corpus, capsys, monkeypatch):
    evaluate_one(tiny_checkpoint, corpus["test"])  # what the demo and ablate run after training each model
    shown = capsys.readouterr().err
    assert f"{tiny_checkpoint.name}: answering the test questions" in shown and "8/8" in shown

    monkeypatch.setenv("TQDM_DISABLE", "1")
    evaluate_one(tiny_checkpoint, corpus["test"])
    assert "answering" not in capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE")

    transformers_logging.disable_progress_bar()
    evaluate_one(tiny_checkpoint, corpus["test"])
    assert "answering" not in capsys.readouterr().err


def test_writing_the_corpus_counts_the_examples_of_each_split(tmp_path, capsys):
    from modeling_moe_audio.data.corpus import write_corpus

    write_corpus(tmp_path / "corpus", seed=1, sizes={"train": 6, "validation": 2, "test": 3})
    shown = capsys.readouterr().err
    for split, size in (("train", 6), ("validation", 2), ("test", 3)):
        assert f"{split} corpus: 100%" in shown and f"{size}/{size}" in shown
    write_corpus(tmp_path / "quiet", seed=1, sizes={"train": 6, "validation": 2, "test": 3}, progress=False)
    assert capsys.readouterr().err == ""


def test_no_progress_quiets_a_command(tiny_checkpoint, corpus, tmp_path, capsys):
    moe_audio("analyze", tiny_checkpoint, corpus["test"], "--output_dir", tmp_path / "shown", "--batch_size", "4")
    shown = capsys.readouterr().err
    assert "expert routing" in shown and "gradients" in shown and "influence" in shown
    moe_audio("analyze", tiny_checkpoint, corpus["test"], "--output_dir", tmp_path / "quiet", "--no_progress")
    assert "routing" not in capsys.readouterr().err
