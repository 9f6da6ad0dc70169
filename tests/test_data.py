"""Manifests, bad rows, and the collator's labels."""

import json

import numpy as np
import pytest
import soundfile
from transformers import AutoTokenizer

from modeling_moe_audio.checkpoints.build import new_processor
from modeling_moe_audio.data.audio import BadRowError, decode_audio_item
from modeling_moe_audio.data.collator import MoEAudioDataCollator
from modeling_moe_audio.data.manifest import load_manifest
from modeling_moe_audio.presets import SHIPPED_TOKENIZERS, load_config


@pytest.fixture(scope="module")
def processor():
    return new_processor(load_config("tiny-4s"), AutoTokenizer.from_pretrained(SHIPPED_TOKENIZERS["tiny"]))


def write_wav(path, seconds=1.0, rate=16000, seed=0):
    soundfile.write(path, np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1, rate)
    return path.name


def write_manifest(folder, rows):
    path = folder / "data.jsonl"
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


def test_both_row_forms_and_extra_columns(tmp_path):
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "b.wav", rate=44100)
    manifest = write_manifest(tmp_path, [
        {"audio": "a.wav", "prompt": "High or low?", "response": "high", "category": "speech"},
        {"audio": ["a.wav", "b.wav"], "prompt": "Same?", "response": "no", "category": "sound"},
        {"conversation": [
            {"role": "system", "content": "You listen."},
            {"role": "user", "content": [{"type": "text", "text": "Hear this:"}, {"type": "audio", "path": "b.wav"}]},
            {"role": "assistant", "content": "a siren"},
        ], "category": "sound"},
    ])
    dataset, report = load_manifest(manifest)
    assert report.kept == 3 and report.skipped == []
    assert dataset.column_names == ["conversation", "audio", "category"]
    assert dataset[1]["audio"] == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    assert dataset[2]["audio"] == [str(tmp_path / "b.wav")]


def test_collator_labels_only_the_assistant(tmp_path, processor):
    write_wav(tmp_path / "a.wav", seconds=2.0)
    write_wav(tmp_path / "b.wav", seconds=1.0)
    manifest = write_manifest(tmp_path, [
        {"audio": "a.wav", "prompt": "High or low?", "response": "high"},
        {"audio": ["a.wav", "b.wav"], "prompt": "Which is longer, first or second?", "response": "first one"},
    ])
    dataset, _ = load_manifest(manifest)
    batch = MoEAudioDataCollator(processor)([dataset[0], dataset[1]])
    assert set(batch) >= {"input_ids", "attention_mask", "labels", "input_features", "input_features_mask"}
    assert batch["input_features"].shape[0] == 3
    for row, answer in enumerate(["high", "first one"]):
        labels = batch["labels"][row]
        assert processor.decode(labels[labels != -100]) == answer + "<|im_end|>"
    assert (batch["labels"][batch["input_ids"] == processor.audio_token_id] == -100).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert batch["attention_mask"][0, -1] == 0  # right padding for training
    with pytest.raises(ValueError, match="has 2 audio blocks but its 'audio' column holds 1 items"):
        MoEAudioDataCollator(processor)([{**dataset[1], "audio": dataset[1]["audio"][:1]}])


def test_collator_accepts_datasets_audio_dicts(tmp_path):
    write_wav(tmp_path / "a.wav", rate=22050)
    expected = decode_audio_item(str(tmp_path / "a.wav"))
    raw = (tmp_path / "a.wav").read_bytes()
    np.testing.assert_allclose(decode_audio_item({"path": None, "bytes": raw}), expected, atol=1e-6)
    np.testing.assert_allclose(decode_audio_item({"path": str(tmp_path / "a.wav")}), expected)
    array, rate = soundfile.read(tmp_path / "a.wav", dtype="float32")
    np.testing.assert_allclose(decode_audio_item({"array": array, "sampling_rate": rate}), expected, atol=1e-6)


BAD_ROWS = [
    ("not json", "{not json", "is not valid JSON"),
    ("missing key", {"audio": "a.wav", "prompt": "?"}, r"missing \['response'\]"),
    ("missing file", {"audio": "nope.wav", "prompt": "?", "response": "x"}, "nope.wav does not exist"),
    ("unreadable", {"audio": "garbage.wav", "prompt": "?", "response": "x"}, "garbage.wav cannot be decoded"),
    ("too long", {"audio": "long.wav", "prompt": "?", "response": "x"}, r"long.wav lasts 5.0 s, over the limit of 3"),
    ("no assistant", {"conversation": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ("audio block without path", {"conversation": [{"role": "user", "content": [{"type": "audio"}]},
                                                  {"role": "assistant", "content": "x"}]}, "needs a 'path'"),
    ("bad audio type", {"audio": 3, "prompt": "?", "response": "x"}, "'audio' must be a path"),
]


@pytest.mark.parametrize("name, bad_row, message", BAD_ROWS, ids=[case[0] for case in BAD_ROWS])
def test_bad_rows_name_the_row_and_the_reason(tmp_path, name, bad_row, message):
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "long.wav", seconds=5.0)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF0000WAVEnot really audio")
    good = {"audio": "a.wav", "prompt": "High or low?", "response": "high"}
    manifest = write_manifest(tmp_path, [good, good, bad_row, good])
    with pytest.raises(BadRowError, match=rf"data.jsonl, line 3: .*{message}.*skip_bad_rows=True"):
        load_manifest(manifest, max_audio_seconds=3.0)
    dataset, report = load_manifest(manifest, max_audio_seconds=3.0, skip_bad_rows=True)
    assert len(dataset) == report.kept == 3
    assert len(report.skipped) == 1 and "line 3" in report.skipped[0]


def test_a_manifest_with_no_usable_rows(tmp_path):
    manifest = write_manifest(tmp_path, [{"audio": "nope.wav", "prompt": "?", "response": "x"}])
    with pytest.raises(ValueError, match="no usable rows"):
        load_manifest(manifest, skip_bad_rows=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_manifest(tmp_path / "missing.jsonl")
