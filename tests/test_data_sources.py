"""Training data the way users hold it: datasets saved to disk, parquet folders, Hub ids (a Hub cache filled by hand,
offline), column names mapped by flags, one clip or a list per row, and streaming; all through the real Trainer."""

import hashlib
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets import Audio, Dataset, DatasetDict, List

import modeling_moe_audio.data.sources as sources
from modeling_moe_audio.data.audio import BadRowError, decode_audio_item
from modeling_moe_audio.data.manifest import load_manifest
from modeling_moe_audio.data.sources import DataColumns, load_training_data
from modeling_moe_audio.training.trainer import build_trainer, train

from helpers import parse_train_args


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` prepares folders into the datasets cache: this test's own, not the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.fixture(scope="module")
def corpus(make_corpus):
    return make_corpus(seed=5, sizes={"train": 12, "validation": 4, "test": 4})


def manifest_rows(manifest: Path) -> list[dict]:
    """The manifest's rows, audio paths made absolute."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [{**row, "audio": str(manifest.parent / row["audio"])} for row in rows]


def dataset_of(manifest: Path, clips_per_row: int = 1) -> Dataset:
    """The manifest as a user's dataset: the clip in a `datasets.Audio` column `clip` (bytes stored in the dataset
    when saved), the texts in `question` / `answer`, `category` kept; or a list of `clips_per_row` clips per row."""
    rows = manifest_rows(manifest)
    clip = [row["audio"] for row in rows] if clips_per_row == 1 else [[row["audio"]] * clips_per_row for row in rows]
    dataset = Dataset.from_dict({"clip": clip, "question": [row["prompt"] for row in rows],
                                 "answer": [row["response"] for row in rows],
                                 "category": [row["category"] for row in rows]})
    return dataset.cast_column("clip", Audio() if clips_per_row == 1 else List(Audio()))


MAPPED = DataColumns(audio="clip", prompt="question", response="answer")
MAPPED_FLAGS = ("--audio_column", "clip", "--prompt_column", "question", "--response_column", "answer")


def contents(folder: Path) -> dict:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_same_rows(rows, reference):
    """Same conversations (texts, roles) and the same decoded audio, row by row."""
    rows, reference = list(rows), list(reference)
    assert len(rows) == len(reference)
    for row, expected in zip(rows, reference):
        texts = [[block["text"] for block in message["content"]] for message in row["conversation"]]
        assert texts == [[block["text"] for block in message["content"]] for message in expected["conversation"]]
        assert len(row["audio"]) == len(expected["audio"])
        for item, expected_item in zip(row["audio"], expected["audio"]):
            np.testing.assert_array_equal(decode_audio_item(item), decode_audio_item(expected_item))
        assert row["category"] == expected["category"]


def test_a_saved_dataset_a_dataset_dict_and_a_parquet_folder_give_the_manifests_rows(corpus, tmp_path):
    reference, _ = load_manifest(corpus["train"])
    dataset_of(corpus["train"]).save_to_disk(tmp_path / "saved")
    DatasetDict({"train": dataset_of(corpus["train"]), "validation": dataset_of(corpus["validation"])}).save_to_disk(
        tmp_path / "dict")
    # A parquet folder whose audio column holds paths relative to the folder, as exported next to the clips.
    shutil.copytree(corpus["train"].parent / "audio", tmp_path / "pq" / "audio")
    rows = [json.loads(line) for line in corpus["train"].read_text().splitlines()]
    Dataset.from_list(rows).to_parquet(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet")
    before = {name: contents(tmp_path / name) for name in ("saved", "dict", "pq")}

    saved, report = load_training_data(tmp_path / "saved", MAPPED)
    assert report.kept == len(reference) and report.skipped == []
    assert all(isinstance(item, dict) and item["bytes"] for row in saved for item in row["audio"])  # never decoded
    assert_same_rows(saved, reference)
    assert_same_rows(load_training_data(tmp_path / "dict", MAPPED)[0], reference)  # no --split: "train"
    assert_same_rows(load_training_data(tmp_path / "dict", MAPPED, split="validation")[0],
                     load_manifest(corpus["validation"])[0])
    parquet, _ = load_training_data(tmp_path / "pq")
    assert parquet[0]["audio"] == [str(tmp_path / "pq" / rows[0]["audio"])]
    assert_same_rows(parquet, reference)
    streamed, _ = load_training_data(tmp_path / "pq", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert_same_rows(streamed, reference)
    # Nothing is written next to the user's data (no cache files from casts or selections).
    assert {name: contents(tmp_path / name) for name in ("saved", "dict", "pq")} == before


def test_a_list_of_clips_per_row_and_whole_conversations(corpus, tmp_path, tiny_checkpoint):
    from modeling_moe_audio.checkpoints.loading import load_checkpoint
    from modeling_moe_audio.data.collator import MoEAudioDataCollator

    dataset_of(corpus["train"], clips_per_row=2).save_to_disk(tmp_path / "pairs")
    pairs, _ = load_training_data(tmp_path / "pairs", MAPPED)
    row = pairs[0]
    assert len(row["audio"]) == 2
    assert [block["type"] for block in row["conversation"][0]["content"]] == ["audio", "audio", "text"]
    # A conversation column, as in a manifest: paths relative to the dataset's folder.
    shutil.copy(manifest_rows(corpus["train"])[0]["audio"], tmp_path / "talk-clip.wav")
    Dataset.from_dict({"talk": [[
        {"role": "user", "content": [{"type": "audio", "path": "talk-clip.wav", "text": None},
                                     {"type": "text", "path": None, "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "path": None, "text": "speech"}]},
    ]]}).to_parquet(tmp_path / "talk" / "train.parquet")
    (tmp_path / "talk-clip.wav").rename(tmp_path / "talk" / "talk-clip.wav")
    talk, _ = load_training_data(tmp_path / "talk", DataColumns(conversation="talk"))
    assert talk[0]["audio"] == [str(tmp_path / "talk" / "talk-clip.wav")]
    # A conversation whose audio blocks have no path, the clips in an audio column, in order (how chat datasets
    # with audio are often laid out).
    first, second = manifest_rows(corpus["train"])[:2]
    Dataset.from_dict({"messages": [[
        {"role": "user", "content": [{"type": "audio", "text": None}, {"type": "text", "text": "Same or not?"},
                                     {"type": "audio", "text": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": "not"}]},
    ]], "clips": [[first["audio"], second["audio"]]]}).cast_column("clips", List(Audio())).save_to_disk(
        tmp_path / "chat")
    chat, _ = load_training_data(tmp_path / "chat", DataColumns(audio="clips", conversation="messages"))
    assert [block["type"] for block in chat[0]["conversation"][0]["content"]] == ["audio", "text", "audio"]
    for item, path in zip(chat[0]["audio"], [first["audio"], second["audio"]], strict=True):
        np.testing.assert_array_equal(decode_audio_item(item), decode_audio_item(path))

    _, processor = load_checkpoint(tiny_checkpoint)
    batch = MoEAudioDataCollator(processor)([pairs[0], pairs[1], talk[0], chat[0]])
    assert batch["input_features"].shape[0] == 7  # 2 + 2 + 1 + 2 clips
    for row, answer in ((2, "speech"), (3, "not")):
        labels = batch["labels"][row]
        assert processor.decode(labels[labels != -100]) == answer + "<|im_end|>"


def test_train_on_a_saved_dataset_and_evaluate_on_a_dataset_dicts_split(corpus, tiny_checkpoint, tmp_path):
    dataset_of(corpus["train"]).save_to_disk(tmp_path / "train-set")
    DatasetDict({"train": dataset_of(corpus["train"]), "validation": dataset_of(corpus["validation"])}).save_to_disk(
        tmp_path / "both")
    script_args, training_args = parse_train_args(
        tiny_checkpoint, {"train": tmp_path / "train-set"}, tmp_path / "run", "--eval_data", str(tmp_path / "both"),
        *MAPPED_FLAGS, "--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--logging_steps", "1")
    metrics = train(script_args, training_args)
    assert np.isfinite(metrics["eval_loss"])
    assert "2 optimizer steps on 12 examples of `train-set`" in metrics["summary"]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_streaming_reads_only_what_it_trains_on(corpus, tiny_checkpoint, tmp_path, monkeypatch):
    """A 240-row parquet corpus, written in row groups of 4, with a bad row at index 200: 3 steps of 2 rows read
    (and check) only the rows they train on, plus what the data loader fetches ahead; the bad row is never reached,
    which a whole load refuses at once."""
    rows = manifest_rows(corpus["train"]) * 20
    rows[200] = {**rows[200], "audio": str(tmp_path / "gone.wav")}
    Dataset.from_list(rows).to_parquet(tmp_path / "big" / "train.parquet", batch_size=4)
    checked = []
    real_check = sources.checked_row
    monkeypatch.setattr(sources, "checked_row", lambda row, *args, **kwargs: (
        checked.append(row["prompt"]), real_check(row, *args, **kwargs))[1])  # a spy: counts, then checks for real

    script_args, training_args = parse_train_args(
        tiny_checkpoint, {"train": tmp_path / "big"}, tmp_path / "run", "--streaming", "--max_steps", "3",
        "--per_device_train_batch_size", "2")
    trainer = build_trainer(script_args, training_args)
    assert checked == []  # nothing is read before training
    trainer.train()
    assert trainer.state.global_step == 3
    assert 6 <= len(checked) <= 10, len(checked)  # 6 trained on, at most one batch fetched ahead (and its filter)
    assert trainer.train_data_report.kept == len(checked) and trainer.train_data_report.skipped == []
    with pytest.raises(BadRowError, match=r"big, row 200: audio file .*gone.wav does not exist"):
        load_training_data(tmp_path / "big")


def test_a_bad_row_stops_the_stream_with_its_index_or_is_skipped_and_counted(corpus, tiny_checkpoint, tmp_path):
    rows = manifest_rows(corpus["train"])
    rows[3] = {**rows[3], "prompt": "Hear <|audio_pad|> this"}
    Dataset.from_list(rows).to_parquet(tmp_path / "data" / "train.parquet")

    def trainer(*extra):
        return build_trainer(*parse_train_args(
            tiny_checkpoint, {"train": tmp_path / "data"}, tmp_path / "run", "--streaming", "--max_steps", "3",
            "--per_device_train_batch_size", "2", "--overwrite", *extra))

    with pytest.raises(BadRowError, match=r"data, row 3: 'prompt' holds the special token '<\|audio_pad\|>'.*"
                                          r"--skip_bad_rows"):
        trainer().train()
    skipping = trainer("--skip_bad_rows")
    skipping.train()
    assert skipping.state.global_step == 3
    assert len(skipping.train_data_report.skipped) == 1 and "row 3" in skipping.train_data_report.skipped[0]

    Dataset.from_list([{**rows[0], "audio": "gone.wav"}] * 4).to_parquet(tmp_path / "all-bad" / "train.parquet")
    with pytest.raises(ValueError, match=r"all-bad streamed no usable rows \(4 left out"):
        train(*parse_train_args(tiny_checkpoint, {"train": tmp_path / "all-bad"}, tmp_path / "run-all-bad",
                                "--streaming", "--max_steps", "3", "--skip_bad_rows"))


def hub_cache_of(tmp_path, dataset_dict: DatasetDict, repo_id="someone/audio-qa") -> Path:
    """A Hub cache filled by hand as `hf download --repo-type dataset` leaves it: refs/main and a snapshot of
    parquet files (the audio bytes inside them, as the Hub stores `datasets.Audio` columns)."""
    from datasets.table import embed_table_storage

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for split, dataset in dataset_dict.items():
        embedded = dataset.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
        embedded.to_parquet(repo / "snapshots" / commit / "data" / f"{split}-00000-of-00001.parquet")
    return tmp_path / "hub"


@pytest.fixture
def offline_hub(tmp_path, corpus, monkeypatch):
    from huggingface_hub import constants

    cache = hub_cache_of(tmp_path, DatasetDict({"train": dataset_of(corpus["train"]),
                                                "validation": dataset_of(corpus["validation"])}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_dataset_id_offline_from_the_hub_cache(offline_hub, corpus, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `someone/audio-qa` is no local path here
    hub_rows, _ = load_training_data("someone/audio-qa", MAPPED, split="validation")
    assert all(item["bytes"] for row in hub_rows for item in row["audio"])
    assert_same_rows(hub_rows, load_manifest(corpus["validation"])[0])
    with pytest.raises(FileNotFoundError, match="neither a local path nor in the local Hub cache"):
        load_training_data("someone/other-set", MAPPED)

    script_args, training_args = parse_train_args(
        tiny_checkpoint, {"train": "someone/audio-qa"}, tmp_path / "run", "--eval_data", "someone/audio-qa",
        *MAPPED_FLAGS, "--streaming", "--max_steps", "2", "--per_device_train_batch_size", "4")
    metrics = train(script_args, training_args)
    assert np.isfinite(metrics["eval_loss"])
    assert "2 optimizer steps on a stream (" in metrics["summary"] and "`someone/audio-qa`" in metrics["summary"]


def test_evaluate_takes_a_benchmark_as_a_dataset(corpus, tiny_checkpoint, tmp_path, capsys):
    """`moe-audio evaluate` on MMAU rows saved as a dataset (the clips' bytes in a `datasets.Audio` column) asks the
    same questions, with the same audio, as on the JSONL file."""
    from helpers import moe_audio
    from modeling_moe_audio.evaluation import load_items

    rows = manifest_rows(corpus["test"])
    mmau = [{"id": f"q{i}", "audio_id": row["audio"], "question": row["prompt"], "choices": ["speech", "music", "sound"],
             "answer": "speech", "task": "sound"} for i, row in enumerate(rows)]
    (tmp_path / "mmau.jsonl").write_text("\n".join(json.dumps(row) for row in mmau) + "\n")
    DatasetDict({"test": Dataset.from_list(mmau).cast_column("audio_id", Audio())}).save_to_disk(tmp_path / "mmau-set")

    from_file, from_dataset = load_items(tmp_path / "mmau.jsonl"), load_items(tmp_path / "mmau-set")
    assert [(item.id, item.question, item.options, item.answer_index) for item in from_dataset] == [
        (item.id, item.question, item.options, item.answer_index) for item in from_file]
    for file_item, dataset_item in zip(from_file, from_dataset):
        assert isinstance(dataset_item.audio, dict) and dataset_item.audio["bytes"]
        np.testing.assert_array_equal(decode_audio_item(dataset_item.audio), decode_audio_item(file_item.audio))

    moe_audio("evaluate", tiny_checkpoint, tmp_path / "mmau-set", "--split", "test", "--limit", "2", "--no_progress",
              "--max_new_tokens", "2", "--output_dir", tmp_path / "eval")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["evaluation"]["num_items"] == 2
    assert [prediction["id"] for prediction in results["evaluation"]["predictions"]] == ["q0", "q1"]


@pytest.mark.slow
def test_the_train_command_offline_on_a_hub_id_in_a_process_of_its_own(corpus, tiny_checkpoint, tmp_path):
    """`moe-audio train --train_data org/name` with HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 set as a user sets them,
    the dataset in a Hub cache filled by hand (HF_HUB_CACHE); nothing is downloaded."""
    from helpers import moe_audio_process

    cache = hub_cache_of(tmp_path, DatasetDict({"train": dataset_of(corpus["train"])}))
    result = moe_audio_process(
        "train", "--model", tiny_checkpoint, "--train_data", "someone/audio-qa", *MAPPED_FLAGS, "--output_dir",
        tmp_path / "run", "--max_steps", "2", "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none",
        "--save_strategy", "no",
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
             "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_results.json").read_text())["summary"]
    assert "2 optimizer steps on 12 examples of `someone/audio-qa`" in summary
    missing = moe_audio_process(
        "train", "--model", tiny_checkpoint, "--train_data", "someone/elsewhere", "--output_dir", tmp_path / "run2",
        "--max_steps", "1", "--use_cpu", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert missing.returncode == 1
    assert "error: Dataset 'someone/elsewhere' is neither a local path nor in the local Hub cache" in missing.stderr
