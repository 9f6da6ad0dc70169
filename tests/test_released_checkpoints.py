"""A checkpoint written by the last release still works with this library: its code files (those of 0.4.0, byte
for byte those of release commit 7a630f9, in `tests/fixtures/moe-audio-0.4.0-code`) know nothing of what came after
(the semantic codebook, for one), and the library must not assume they do. The commands run in fresh processes,
where transformers loads the checkpoint's own code (`trust_remote_code`), as it does for users."""

import json
import shutil
from pathlib import Path

import pytest

from modeling_moe_audio.data.corpus import export_mmau
from modeling_moe_audio.data.manifest import load_rows

from helpers import moe_audio_process


RELEASED_CODE = Path(__file__).resolve().parent / "fixtures" / "moe-audio-0.4.0-code"


@pytest.fixture(scope="module")
def released_checkpoint(tiny_checkpoint, tmp_path_factory):
    folder = shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("released") / "tiny-0.4.0")
    for code in RELEASED_CODE.iterdir():
        shutil.copy(code, folder / code.name)
    config = json.loads((folder / "config.json").read_text())
    del config["semantic_codebook_layer"]  # 0.4.0 wrote no such key
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def corpus(make_corpus):
    return make_corpus(seed=3, sizes={"train": 8, "validation": 4, "test": 8})


def test_a_released_checkpoint_evaluates(released_checkpoint, corpus, tmp_path):
    """`moe-audio evaluate` in a fresh process loads the checkpoint's own (0.4.0) code through trust_remote_code."""
    assert "semantic_codebook_layer" not in (released_checkpoint / "configuration_moe_audio.py").read_text()
    export_mmau(corpus["test"], tmp_path / "mmau.json")
    result = moe_audio_process("evaluate", released_checkpoint, tmp_path / "mmau.json", "--max_new_tokens", 2,
                               "--output_dir", tmp_path / "eval", "--no_progress")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert report["evaluation"]["num_items"] == len(load_rows(corpus["test"]))


@pytest.mark.slow
def test_a_released_checkpoint_trains_and_is_analysed(released_checkpoint, corpus, tmp_path):
    trained = moe_audio_process("train", "--model", released_checkpoint, "--train_data", corpus["train"],
                                "--output_dir", tmp_path / "run", "--max_steps", 1, "--per_device_train_batch_size", 2,
                                "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["train_loss"] > 0
    analysed = moe_audio_process("analyze", released_checkpoint, corpus["validation"], "--output_dir",
                                 tmp_path / "analysis", "--no_progress")
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    assert (tmp_path / "analysis" / "analysis.json").is_file()


def test_the_released_code_is_recognised_as_0_4_0(released_checkpoint):
    from modeling_moe_audio.checkpoints.code_update import _written_by

    assert _written_by(released_checkpoint) == "written by moe-audio 0.4.0"
