"""The bad-input matrix: each row an input a careless or hostile user can give, and what it must get: accepted with
a stated result, or an error whose message names the problem. Grouped by area; `README.md` ("What bad input gets")
summarises it."""

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from modeling_moe_audio import MoEAudioConfig
from modeling_moe_audio.hub.publish import checkpoint_files, card_for_repo, without_local_paths
from modeling_moe_audio.presets import load_config


@dataclass
class Row:
    name: str
    run: Callable  # (tmp_path, fixtures) -> result
    error: type | None = None  # None: the input is accepted
    message: str = ""  # a substring of the error message; for an accepted input, see `check`
    check: Callable | None = None  # for an accepted input: an assertion on the result


def cases(rows: list[Row]):
    return pytest.mark.parametrize("row", rows, ids=[row.name for row in rows])


def play(row: Row, *args):
    if row.error is None:
        result = row.run(*args)
        if row.check is not None:
            assert row.check(result), f"{row.name}: unexpected result {result!r}"
        return
    with pytest.raises(row.error) as raised:
        row.run(*args)
    assert row.message.lower() in str(raised.value).lower(), f"{row.name}: {raised.value}"


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


def config_with(**changes):
    values = load_config("tiny").to_dict()
    values.update(changes)
    return MoEAudioConfig.from_dict(values)


def preset_file(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    return load_config(path)


TINY_EOS = 2  # the tiny tokenizer's <|im_end|>, its eos
CONFIG_ROWS = [
    Row("NaN aux-loss coefficient", lambda _: config_with(router_aux_loss_coef=math.nan), Exception, "router_aux_loss_coef=nan"),
    Row("infinite aux-loss coefficient", lambda _: config_with(router_aux_loss_coef=math.inf), Exception, "router_aux_loss_coef=inf"),
    Row("negative aux-loss coefficient", lambda _: config_with(router_aux_loss_coef=-0.1), Exception, "must be >= 0"),
    Row("NaN z-loss coefficient", lambda _: config_with(router_z_loss_coef=math.nan), Exception, "router_z_loss_coef"),
    Row("infinite jitter", lambda _: config_with(router_jitter_noise=math.inf), Exception, "router_jitter_noise"),
    Row("negative LayerNorm eps", lambda _: config_with(adapter_layer_norm_eps=-1e-5), Exception, "adapter_layer_norm_eps"),
    Row("zero LayerNorm eps", lambda _: config_with(adapter_layer_norm_eps=0.0), Exception, "adapter_layer_norm_eps"),
    Row("NaN initializer range", lambda _: config_with(initializer_range=math.nan), Exception, "initializer_range"),
    Row("audio token id = eos", lambda _: config_with(audio_token_id=TINY_EOS, text_config={
        **load_config("tiny").text_config.to_dict(), "eos_token_id": TINY_EOS}), Exception, "eos_token_id"),
    Row("audio token id = bos", lambda _: config_with(audio_token_id=1, text_config={
        **load_config("tiny").text_config.to_dict(), "bos_token_id": 1}), Exception, "bos_token_id"),
    Row("audio token id = audio start id", lambda _: config_with(audio_start_token_id=load_config("tiny").audio_token_id),
        Exception, "audio_start_token_id"),
    Row("audio token id outside the vocabulary", lambda _: config_with(audio_token_id=10**7), Exception, "outside the language model's vocabulary"),
    Row("typo num_expert for num_experts", lambda _: config_with(num_expert=16), ValueError, "did you mean 'num_experts'"),
    Row("typo router_aux_loss_coeff", lambda _: config_with(router_aux_loss_coeff=0.1), ValueError, "did you mean 'router_aux_loss_coef'"),
    Row("typo override to load_config", lambda _: load_config("tiny", num_expert=16), ValueError, "did you mean 'num_experts'"),
    Row("library key kept (transformers_version)", lambda _: config_with(transformers_version="5.24.0"),
        check=lambda config: config.transformers_version == "5.24.0"),
    Row("JSON integer for a float field", lambda _: config_with(router_aux_loss_coef=0, adapter_layer_norm_eps=1),
        check=lambda config: isinstance(config.router_aux_loss_coef, float) and config.router_aux_loss_coef == 0.0),
    Row("string for an int field", lambda _: config_with(num_experts="8"), Exception, "num_experts"),
    Row("top-k above the expert count", lambda _: config_with(num_experts_per_tok=9), Exception, "num_experts_per_tok=9"),
    Row("zero experts", lambda _: config_with(num_experts=0), Exception, "num_experts=0"),
    Row("unknown adapter type", lambda _: config_with(adapter_type="sparse"), Exception, "adapter_type='sparse'"),
    Row("preset of another model type", lambda tmp: preset_file(tmp, json.dumps({"model_type": "qwen3"})), ValueError, "is a 'qwen3' config"),
    Row("malformed --config JSON names the file", lambda tmp: preset_file(tmp, "{not json"), ValueError, "config.json is not a valid JSON"),
    Row("--config JSON list", lambda tmp: preset_file(tmp, "[1, 2]"), ValueError, "not an object"),
    Row("unknown preset name", lambda _: load_config("tiny-typo"), FileNotFoundError, "one of the presets"),
    Row("unknown ablation", lambda _: load_config("ablation-3-choose-9"), ValueError, "Unknown ablation"),
]


@cases(CONFIG_ROWS)
def test_configuration(row, tmp_path):
    play(row, tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# What `push` publishes
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def folder_with(extra: Callable[[Path], None]):
    def run(tmp_path, checkpoint):
        folder = Path(shutil.copytree(checkpoint, tmp_path / "folder"))
        extra(folder)
        return checkpoint_files(folder)
    return run


def write(name, content=b"x"):
    def add(folder):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return add


def pickle_renamed_safetensors(folder):
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, folder / "model.safetensors")


def link_outside(folder):
    secret = folder.parent / "secret.txt"
    secret.write_text("token")
    os.symlink(secret, folder / "tokenizer_config.json.bak")


def link_weights_outside(folder):
    target = folder.parent / "weights-elsewhere.safetensors"
    shutil.move(folder / "model.safetensors", target)
    os.symlink(target, folder / "model.safetensors")


PUSH_ROWS = [
    Row(".env file", folder_with(write(".env", b"HF_TOKEN=hf_secret")), ValueError, ".env (not part of a model repository)"),
    Row("data.pickle", folder_with(write("data.pickle")), ValueError, "data.pickle"),
    Row("model.joblib", folder_with(write("model.joblib")), ValueError, "model.joblib"),
    Row("weights.pt.gz", folder_with(write("weights.pt.gz")), ValueError, "weights.pt.gz"),
    Row("pytorch_model.bin", folder_with(write("pytorch_model.bin")), ValueError, "holds pickle files (pytorch_model.bin)"),
    Row("pickle renamed model.safetensors", folder_with(pickle_renamed_safetensors), ValueError, "not a safetensors file"),
    Row("empty model.safetensors", folder_with(write("model.safetensors", b"")), ValueError, "not a safetensors file"),
    Row("link to a file outside the folder", folder_with(link_outside), ValueError, "outside the folder"),
    Row("weights linked from outside the folder", folder_with(link_weights_outside), ValueError, "outside the folder"),
    Row("notes in a subfolder", folder_with(write("notes/todo.txt")), ValueError, "notes/todo.txt"),
    Row("a stray JSON file", folder_with(write("secrets.json", b"{}")), ValueError, "secrets.json"),
    Row("TensorBoard events are left out", folder_with(write("runs/Dec01/events.out.tfevents.1.host")),
        check=lambda result: "runs/Dec01/events.out.tfevents.1.host" in result[1] and all("runs/" not in p for p in result[0])),
    Row("checkpoint folders are left out", folder_with(write("checkpoint-5/optimizer.pt")),
        check=lambda result: result[1] == ["checkpoint-5/optimizer.pt"]),
    Row("update-code backups are left out", folder_with(write("code-backup-20261201/config.json", b"{}")),
        check=lambda result: result[1] == ["code-backup-20261201/config.json"]),
    Row("a clean checkpoint uploads its files", folder_with(lambda folder: None),
        check=lambda result: "model.safetensors" in result[0] and "config.json" in result[0] and not result[1]),
]


@cases(PUSH_ROWS)
def test_push_contents(row, tmp_path, saved_checkpoint):
    play(row, tmp_path, saved_checkpoint)


def test_push_cuts_local_paths_and_names_the_repo_in_the_card(tmp_path, saved_checkpoint):
    link = tmp_path / "linked"
    os.symlink(saved_checkpoint, link)
    for given in (link, Path(os.path.relpath(saved_checkpoint)), saved_checkpoint):
        card = card_for_repo(given, "you/tiny")
        assert 'from_pretrained("you/tiny"' in card and str(saved_checkpoint) not in card
    summary = f"Trained from `{saved_checkpoint}` on `/home/me/data/train.jsonl`, see ~/notes/run.md."
    assert without_local_paths(summary) == "Trained from `tiny` on `train.jsonl`, see run.md."


# ----------------------------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoTokenizer

    from modeling_moe_audio.checkpoints.build import new_processor
    from modeling_moe_audio.presets import TINY_TOKENIZER

    return new_processor(load_config("tiny"), AutoTokenizer.from_pretrained(TINY_TOKENIZER))


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    import numpy as np
    import soundfile

    path = tmp_path_factory.mktemp("audio") / "one-second.wav"
    soundfile.write(path, (np.random.default_rng(0).standard_normal(16000) * 0.1).astype("float32"), 16000)
    return path


def chat(block):
    return [{"role": "user", "content": [block, {"type": "text", "text": "What is it?"}]}]


def tokenized(processor, conversation, **kwargs):
    return processor.apply_chat_template(conversation, tokenize=True, return_dict=True, **kwargs)


def samples(seconds=1.0, value=None, rate=16000):
    import numpy as np

    if value is not None:
        return np.full(int(seconds * rate), value, dtype=np.float32)
    return (np.random.default_rng(1).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def audio_tokens(processor):
    return lambda inputs: int((inputs["input_ids"] == processor.audio_token_id).sum()) > 0


PROCESSOR_ROWS = [
    Row("array in a conversation without a sampling rate",
        lambda p, w: tokenized(p, chat({"type": "audio", "audio": samples(1.0, rate=22050)})), ValueError, "no sampling rate"),
    Row("22.05 kHz array in a conversation",
        lambda p, w: tokenized(p, chat({"type": "audio", "audio": samples(1.0, rate=22050), "sampling_rate": 22050})),
        ValueError, "sampled at 22050 Hz"),
    Row("16 kHz array with its rate in the block",
        lambda p, w: tokenized(p, chat({"type": "audio", "audio": samples(), "sampling_rate": 16000})),
        check=lambda inputs: inputs["input_features"].shape[0] == 1),
    Row("16 kHz array with the rate for the whole call",
        lambda p, w: tokenized(p, chat({"type": "audio", "audio": samples()}), processor_kwargs={"sampling_rate": 16000}),
        check=lambda inputs: inputs["input_features"].shape[0] == 1),
    Row("missing file under 'audio' in a conversation",
        lambda p, w: tokenized(p, chat({"type": "audio", "audio": str(w.parent / "missing.wav")})), FileNotFoundError, "missing.wav"),
    Row("missing file under 'path' in a conversation",
        lambda p, w: tokenized(p, chat({"type": "audio", "path": str(w.parent / "missing.wav")})), FileNotFoundError, "does not exist"),
    Row("a folder as an audio path in a conversation",
        lambda p, w: tokenized(p, chat({"type": "audio", "path": str(w.parent)})), IsADirectoryError, "is a folder"),
    Row("a folder as an audio path to processor()",
        lambda p, w: p(text="<|audio_pad|>", audio=[str(w.parent)]), IsADirectoryError, "is a folder"),
    Row("an empty conversation", lambda p, w: tokenized(p, []), ValueError, "conversation is empty"),
    Row("huge amplitude (1e30)",
        lambda p, w: p(text="<|audio_pad|> and <|audio_pad|>", audio=[samples(), samples(value=1e30)], sampling_rate=16000), ValueError,
        "Audio 1 gives non-finite"),
    Row("NaN samples", lambda p, w: p(text="<|audio_pad|>", audio=[samples(value=float("nan"))], sampling_rate=16000),
        ValueError, "NaN or infinite"),
    Row("sampling_rate as a string", lambda p, w: p(text="<|audio_pad|>", audio=[samples()], sampling_rate="16000"),
        TypeError, "whole number of Hz"),
    Row("sampling_rate 44100 for arrays", lambda p, w: p(text="<|audio_pad|>", audio=[samples()], sampling_rate=44100),
        ValueError, "44100 Hz"),
    Row("arrays without sampling_rate", lambda p, w: p(text="<|audio_pad|>", audio=[samples()]), ValueError, "Pass `sampling_rate`"),
    Row("sampling_rate 16000.0 (a whole float)", lambda p, w: p(text="<|audio_pad|>", audio=[samples()], sampling_rate=16000.0),
        check=lambda inputs: inputs["input_features"].shape[0] == 1),
    Row("one 2-D array for a batch", lambda p, w: p(text="<|audio_pad|>", audio=samples().reshape(2, -1), sampling_rate=16000),
        ValueError, "2-D array"),
    Row("an empty clip", lambda p, w: p(text="<|audio_pad|>", audio=[samples(0.0)], sampling_rate=16000), ValueError, "empty"),
    Row("integer dtype other than int16/int32",
        lambda p, w: p(text="<|audio_pad|>", audio=[samples().astype("int8")], sampling_rate=16000), TypeError, "dtype int8"),
    Row("a wav file path", lambda p, w: p(text="<|audio_pad|>", audio=[str(w)]), check=lambda inputs: inputs["input_features"].shape[0] == 1),
    Row("a clip over max_audio_seconds",
        lambda p, w: p(text="<|audio_pad|>", audio=[samples(601.0, value=0.0)], sampling_rate=16000), ValueError, "max_audio_seconds"),
]


@cases(PROCESSOR_ROWS)
def test_processor(row, processor, wav):
    play(row, processor, wav)


# ----------------------------------------------------------------------------------------------------------------
# Loading a checkpoint
# ----------------------------------------------------------------------------------------------------------------


def loaded_copy(change: Callable[[Path], None], name: str | None = None):
    def run(tmp_path, checkpoint):
        from modeling_moe_audio.checkpoints.loading import load_checkpoint

        folder = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
        change(folder)
        return load_checkpoint(folder if name is None else tmp_path / name)
    return run


def cut_in_half(name):
    def change(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return change


def stacking_factor(value):
    def change(folder):
        path = folder / "processor_config.json"
        config = json.loads(path.read_text())
        config["frame_stacking_factor"] = value
        path.write_text(json.dumps(config))
    return change


def delete(name):
    return lambda folder: (folder / name).unlink()


LOADING_ROWS = [
    Row("mistyped folder with a close match", loaded_copy(lambda folder: None, "ckpd"), FileNotFoundError, "did you mean"),
    Row("folder that does not exist", loaded_copy(lambda folder: None, "nowhere/at/all"), FileNotFoundError, "does not exist"),
    Row("a file instead of a folder", loaded_copy(lambda folder: None, "ckpt/config.json"), NotADirectoryError, "not a checkpoint folder"),
    Row("folder without config.json", loaded_copy(delete("config.json")), FileNotFoundError, "no config.json"),
    Row("corrupt config.json", loaded_copy(write("config.json", b"{oops")), ValueError, "config.json is corrupt"),
    Row("corrupt tokenizer.json", loaded_copy(write("tokenizer.json", b"\x00\x01")), ValueError, "tokenizer.json is corrupt"),
    Row("corrupt processor_config.json", loaded_copy(write("processor_config.json", b"[")), ValueError, "processor_config.json is corrupt"),
    Row("truncated model.safetensors", loaded_copy(cut_in_half("model.safetensors")), ValueError, "model.safetensors is corrupt or cut short"),
    Row("pickle as model.safetensors", loaded_copy(pickle_renamed_safetensors), ValueError, "model.safetensors is corrupt"),
    Row("no weights at all", loaded_copy(delete("model.safetensors")), FileNotFoundError, "no *.safetensors"),
    Row("processor stacking differs from the model's", loaded_copy(stacking_factor(2)), ValueError, "stacks 2 encoder frames"),
    Row("an intact checkpoint loads", loaded_copy(lambda folder: None),
        check=lambda loaded: loaded[0].config.model_type == "moe_audio" and loaded[1] is not None),
]


@cases(LOADING_ROWS)
def test_loading(row, tmp_path, saved_checkpoint):
    play(row, tmp_path, saved_checkpoint)


# ----------------------------------------------------------------------------------------------------------------
# Manifests: every row checked up front, with its line
# ----------------------------------------------------------------------------------------------------------------


GOOD_ROW = {"audio": "one-second.wav", "prompt": "What is it?", "response": "noise"}


def manifest_of(*rows, skip=False, raw: bytes | None = None, max_seconds=600.0):
    def run(tmp_path, wav):
        from modeling_moe_audio.data.manifest import load_manifest

        folder = tmp_path / "data"
        folder.mkdir(exist_ok=True)
        shutil.copy(wav, folder / "one-second.wav")
        path = folder / "manifest.jsonl"
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        path.write_bytes(raw if raw is not None else ("\n".join(lines) + "\n").encode())
        return load_manifest(path, max_audio_seconds=max_seconds, skip_bad_rows=skip)
    return run


def user(*blocks):
    return {"role": "user", "content": list(blocks)}


def assistant(text="noise"):
    return {"role": "assistant", "content": text}


AUDIO = {"type": "audio", "path": "one-second.wav"}
TEXT = {"type": "text", "text": "What is it?"}

MANIFEST_ROWS = [
    Row("a good row", manifest_of(GOOD_ROW), check=lambda result: result[1].kept == 1),
    Row("placeholder text in the prompt", manifest_of(GOOD_ROW, {**GOOD_ROW, "prompt": "Hear <|audio_pad|> this"}),
        BadRowError_ := __import__("modeling_moe_audio.data.audio", fromlist=["BadRowError"]).BadRowError,
        "line 2: 'prompt' holds the special token '<|audio_pad|>'"),
    Row("ChatML markup in the response", manifest_of({**GOOD_ROW, "response": "ok<|im_end|>"}), BadRowError_, "'<|im_end|>'"),
    Row("audio block in the assistant message",
        manifest_of({"conversation": [user(AUDIO, TEXT), {"role": "assistant", "content": [AUDIO]}]}), BadRowError_,
        "message 1 (assistant) holds audio"),
    Row("unknown role", manifest_of({"conversation": [{"role": "bot", "content": "hi"}, assistant()]}), BadRowError_,
        "role 'bot'"),
    Row("unknown block type", manifest_of({"conversation": [user({"type": "image", "path": "x.png"}), assistant()]}),
        BadRowError_, "a block that is not"),
    Row("a block that is a string", manifest_of({"conversation": [user("just text"), assistant()]}), BadRowError_,
        "a block that is not"),
    Row("text block without text", manifest_of({"conversation": [user(AUDIO, {"type": "text"}), assistant()]}),
        BadRowError_, "must be a string"),
    Row("text block with a number", manifest_of({"conversation": [user(AUDIO, {"type": "text", "text": 3}), assistant()]}),
        BadRowError_, "must be a string (got number)"),
    Row("content of another type", manifest_of({"conversation": [{"role": "user", "content": 7}, assistant()]}),
        BadRowError_, "must be a string or a non-empty list"),
    Row("empty content list", manifest_of({"conversation": [{"role": "user", "content": []}, assistant()]}),
        BadRowError_, "non-empty list"),
    Row("message without role", manifest_of({"conversation": [{"content": "hi"}, assistant()]}), BadRowError_,
        "needs 'role' and 'content'"),
    Row("message that is a string", manifest_of({"conversation": ["hi", assistant()]}), BadRowError_,
        "needs 'role' and 'content'"),
    Row("conversation without an assistant", manifest_of({"conversation": [user(AUDIO, TEXT)]}), BadRowError_,
        "no assistant message"),
    Row("conversation that is an object", manifest_of({"conversation": {"role": "user"}}), BadRowError_,
        "non-empty list of messages"),
    Row("audio block without a path", manifest_of({"conversation": [user({"type": "audio"}), assistant()]}),
        BadRowError_, "needs a 'path'"),
    Row("audio block with a numeric path", manifest_of({"conversation": [user({"type": "audio", "path": 5}), assistant()]}),
        BadRowError_, "needs a 'path'"),
    Row("row that is a list", manifest_of(GOOD_ROW, [1, 2]), BadRowError_, "line 2: is not a JSON object"),
    Row("row that is a number", manifest_of("42"), BadRowError_, "is not a JSON object"),
    Row("missing response", manifest_of({"audio": "one-second.wav", "prompt": "p"}), BadRowError_, "missing ['response']"),
    Row("prompt that is a list", manifest_of({**GOOD_ROW, "prompt": ["a"]}), BadRowError_, "must be strings"),
    Row("audio that is a number", manifest_of({**GOOD_ROW, "audio": 3}), BadRowError_, "must be a path"),
    Row("audio list with a number", manifest_of({**GOOD_ROW, "audio": ["one-second.wav", 3]}), BadRowError_, "must be a path"),
    Row("empty audio list", manifest_of({**GOOD_ROW, "audio": []}), BadRowError_, "must be a path"),
    Row("invalid JSON line", manifest_of(GOOD_ROW, "{oops"), BadRowError_, "line 2: is not valid JSON"),
    Row("a line that is not UTF-8", manifest_of(raw=json.dumps(GOOD_ROW).encode() + b"\n\xff\xfe{}\n"), BadRowError_,
        "line 2: is not UTF-8 text"),
    Row("missing audio file", manifest_of({**GOOD_ROW, "audio": "gone.wav"}), BadRowError_, "gone.wav does not exist"),
    Row("audio path climbing out with ..", manifest_of({**GOOD_ROW, "audio": "../one-second.wav"}), BadRowError_,
        "climbs out of the data file's folder"),
    Row("audio that is not audio", manifest_of({**GOOD_ROW, "audio": "manifest.jsonl"}), BadRowError_, "cannot be decoded"),
    Row("audio longer than the limit", manifest_of(GOOD_ROW, max_seconds=0.5), BadRowError_, "over the limit of 0.5 s"),
    Row("a column of two types", manifest_of({**GOOD_ROW, "category": "speech"}, {**GOOD_ROW, "category": 3}),
        BadRowError_, "line 2: its 'category' is a number, but line 1 made the column a string"),
    Row("a column null then set", manifest_of({**GOOD_ROW, "category": None}, {**GOOD_ROW, "category": "music"}),
        check=lambda result: result[1].kept == 2),
    Row("an empty manifest", manifest_of(raw=b"\n\n"), ValueError, "has no usable rows"),
    Row("every kind of bad row is skipped and counted", manifest_of(
        GOOD_ROW, "{oops", [1], {**GOOD_ROW, "prompt": "<|audio_pad|>"}, {**GOOD_ROW, "audio": "gone.wav"},
        {"conversation": [user(AUDIO, TEXT), {"role": "assistant", "content": [AUDIO]}]},
        {**GOOD_ROW, "category": 1}, {**GOOD_ROW, "category": "x"}, skip=True),
        check=lambda result: result[1].kept == 2 and len(result[1].skipped) == 6
        and all(", line " in message for message in result[1].skipped)),
    Row("a manifest that is a folder", lambda tmp, wav: __import__("modeling_moe_audio.data.manifest", fromlist=["x"])
        .load_manifest(tmp), IsADirectoryError, "is a folder"),
]


@cases(MANIFEST_ROWS)
def test_manifest(row, tmp_path, wav):
    play(row, tmp_path, wav)


def test_a_truncated_wav_is_named_in_a_warning(tmp_path, wav):
    from modeling_moe_audio.data.manifest import load_manifest

    data = wav.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    (tmp_path / "m.jsonl").write_text(json.dumps({**GOOD_ROW, "audio": "cut.wav"}) + "\n")
    with pytest.warns(UserWarning, match=r"cut\.wav is truncated: 50% of the samples"):
        load_manifest(tmp_path / "m.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# Datasets, parquet folders, Hub ids: the manifest's checks, a bad row named by its index
# ----------------------------------------------------------------------------------------------------------------


def dataset_of(*rows, audio_bytes: bytes | None = None, skip=False, file=False, **options):
    """`load_training_data` on a parquet folder holding `rows` (next to one-second.wav; `file`: on the parquet file
    itself), or, with `audio_bytes`, on a dataset saved to disk whose `datasets.Audio` column holds those bytes."""
    def run(tmp_path, wav):
        import datasets
        from modeling_moe_audio.data.sources import load_training_data

        folder = tmp_path / "data"
        folder.mkdir(exist_ok=True)
        shutil.copy(wav, folder / "one-second.wav")
        if audio_bytes is not None:
            datasets.Dataset.from_dict({"audio": [{"bytes": wav.read_bytes(), "path": "good.wav"},
                                                  {"bytes": audio_bytes, "path": "clip.wav"}],
                                        "prompt": ["p", "p"], "response": ["r", "r"]}).cast_column(
                "audio", datasets.Audio()).save_to_disk(folder / "saved")
            folder = folder / "saved"
        else:
            datasets.Dataset.from_list(list(rows)).to_parquet(folder / "train.parquet")
            folder = folder / "train.parquet" if file else folder
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
            return load_training_data(folder, skip_bad_rows=skip, **options)
    return run


def hub_id_offline(repo_id):
    def run(tmp_path, wav):
        import datasets
        from huggingface_hub import constants
        from modeling_moe_audio.data.sources import load_training_data

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
            patch.setattr(constants, "HF_HUB_OFFLINE", True)
            patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
            patch.chdir(tmp_path)
            return load_training_data(repo_id)
    return run


def missing_folder(tmp_path, wav):
    from modeling_moe_audio.data.sources import load_training_data

    (tmp_path / "train-set").mkdir()
    return load_training_data(tmp_path / "train-sett")


def assistant_blocks(text="noise"):
    """An assistant message whose content is a list of blocks, as a dataset column holds it (one type per column)."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


DATASET_ROWS = [
    Row("a good parquet row", dataset_of(GOOD_ROW), check=lambda result: result[1].kept == 1),
    Row("a parquet file given itself", dataset_of(GOOD_ROW, GOOD_ROW, file=True), check=lambda result: result[1].kept == 2
        and result[0][1]["audio"][0].endswith("/data/one-second.wav")),
    Row("a missing parquet file is no Hub id", lambda tmp, wav: __import__("modeling_moe_audio.data.sources",
        fromlist=["x"]).load_training_data("train.parquet"), FileNotFoundError, "Training data train.parquet does not exist"),
    Row("a missing clip, named with the row's index", dataset_of(GOOD_ROW, {**GOOD_ROW, "audio": "gone.wav"}),
        BadRowError_, "data, row 1: audio file"),
    Row("special tokens in a dataset's prompt", dataset_of({**GOOD_ROW, "prompt": "<|im_start|>x"}), BadRowError_,
        "row 0: 'prompt' holds the special token '<|im_start|>'"),
    Row("an audio path climbing out of the dataset's folder", dataset_of({**GOOD_ROW, "audio": "../one-second.wav"}),
        BadRowError_, "climbs out of the data file's folder"),
    Row("an audio column of numbers", dataset_of({**GOOD_ROW, "audio": 3}), BadRowError_, "'audio' must be a path"),
    Row("undecodable bytes in a datasets.Audio column", dataset_of(audio_bytes=b"RIFF0000WAVEjunk"), BadRowError_,
        "row 1: audio clip.wav (bytes stored in the row) cannot be decoded (Error in WAV file"),
    Row("empty bytes in a datasets.Audio column", dataset_of(audio_bytes=b""), BadRowError_,
        "row 1: audio clip.wav (bytes stored in the row) is empty"),
    Row("every bad dataset row is skipped and counted", dataset_of(
        GOOD_ROW, {**GOOD_ROW, "audio": "gone.wav"}, {**GOOD_ROW, "response": "<|audio_pad|>"}, GOOD_ROW, skip=True),
        check=lambda result: len(result[0]) == result[1].kept == 2 and len(result[1].skipped) == 2
        and ", row 1: " in result[1].skipped[0] and ", row 2: " in result[1].skipped[1]),
    Row("a dataset with no usable rows", dataset_of({**GOOD_ROW, "audio": "gone.wav"}, skip=True), ValueError,
        "has no usable rows (1 left out)"),
    Row("columns the flags do not name", dataset_of({"clip": "one-second.wav", "question": "?", "answer": "x"}),
        ValueError, "has neither a 'conversation' column nor all of 'audio', 'prompt', 'response' (missing ['audio', "
        "'prompt', 'response']"),
    Row("columns named by the flags", dataset_of({"clip": "one-second.wav", "question": "?", "answer": "x"},
        columns=__import__("modeling_moe_audio.data.sources", fromlist=["x"]).DataColumns("clip", "question", "answer")),
        check=lambda result: result[1].kept == 1),
    Row("audio blocks without a path, fewer clips than blocks", dataset_of({"conversation": [
        user(AUDIO, {"type": "audio", "path": None}, {"type": "audio", "path": None}, TEXT), assistant_blocks()],
        "audio": ["one-second.wav"]}), BadRowError_,
        "row 0: the conversation has 2 audio blocks without a path but 'audio' holds 1 clips"),
    Row("audio blocks without a path take the audio column's clips", dataset_of({"conversation": [
        user({"type": "audio", "path": None}, TEXT), assistant_blocks()], "audio": "one-second.wav"}),
        check=lambda result: result[0][0]["audio"][0].endswith("one-second.wav")),
    Row("a split that is not there", dataset_of(GOOD_ROW, split="test"), ValueError,
        "has no split 'test' (its splits: train); choose one with --split"),
    Row("a mistyped data folder", missing_folder, FileNotFoundError, "train-sett does not exist; did you mean"),
    Row("a Hub id offline, not in the Hub cache", hub_id_offline("someone/nothing-here"), FileNotFoundError,
        "neither a local path nor in the local Hub cache"),
]


@cases(DATASET_ROWS)
def test_datasets(row, tmp_path, wav):
    play(row, tmp_path, wav)


# ----------------------------------------------------------------------------------------------------------------
# Files the commands write: nothing the user saved is written over unasked
# ----------------------------------------------------------------------------------------------------------------


def folder_holding(*names):
    def make(tmp_path):
        folder = tmp_path / "out"
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("mine")
        return folder
    return make


def guard(make, **kwargs):
    from modeling_moe_audio.output_dirs import check_output_dir

    return lambda tmp_path: check_output_dir(make(tmp_path), **kwargs)


def run_claim(make, command="demo", settings=None, repeat=None, **kwargs):
    """`start_run` on the folder `make` gives; with `repeat`, a first run (command, settings) claimed it before."""
    from modeling_moe_audio.output_dirs import finish_run, start_run

    def run(tmp_path):
        folder = make(tmp_path)
        if repeat is not None:
            start_run(folder, *repeat[:2])
            if repeat[2:] == ("finished",):
                finish_run(folder)
        return start_run(folder, command, settings or {"quick": True, "seed": 0}, **kwargs)
    return run


QUICK0 = {"quick": True, "seed": 0}
FILE_SAFETY_ROWS = [
    Row("a folder of the user's files (README.md, train_results.json)", guard(folder_holding("README.md", "train_results.json")),
        FileExistsError, "is not empty (README.md, train_results.json)"),
    Row("a file where the folder goes", lambda tmp: guard(lambda t: t / "f")(tmp) if (tmp / "f").write_text("x") else None,
        FileExistsError, "is a file"),
    Row("an empty folder is used", guard(lambda tmp: tmp / "new"), check=lambda folder: folder.name == "new"),
    Row("--overwrite lets a command write into a full folder", guard(folder_holding("notes.txt"), overwrite=True),
        check=lambda folder: (folder / "notes.txt").read_text() == "mine"),
    Row("a run into a folder of the user's files", run_claim(folder_holding("corpus/audio/train/mine.wav")),
        FileExistsError, "is not empty"),
    Row("a demo rerun into its own unfinished run is named unfinished", run_claim(lambda tmp: tmp / "d", repeat=("demo", QUICK0)),
        FileExistsError, "holds an unfinished `moe-audio demo` run with these settings; pass --overwrite"),
    Row("a demo rerun into its finished run", run_claim(lambda tmp: tmp / "d", repeat=("demo", QUICK0, "finished")),
        FileExistsError, "holds a finished `moe-audio demo` run"),
    Row("an ablate rerun continues its unfinished run", run_claim(lambda tmp: tmp / "a", "ablate", resumable=True,
        repeat=("ablate", QUICK0)), check=lambda resuming: resuming is True),
    Row("an ablate rerun with another seed", run_claim(lambda tmp: tmp / "a", "ablate", {"quick": True, "seed": 1},
        resumable=True, repeat=("ablate", QUICK0)), FileExistsError, "run with other settings"),
    Row("ablate into a demo's folder", run_claim(lambda tmp: tmp / "a", "ablate", resumable=True, repeat=("demo", QUICK0)),
        FileExistsError, "`moe-audio demo` run"),
    Row("--overwrite replaces an unfinished run", run_claim(lambda tmp: tmp / "d", repeat=("demo", QUICK0), overwrite=True),
        check=lambda resuming: resuming is False),
    Row("a fresh folder is claimed", run_claim(lambda tmp: tmp / "new"), check=lambda resuming: resuming is False),
]


@cases(FILE_SAFETY_ROWS)
def test_file_safety(row, tmp_path):
    play(row, tmp_path)


def test_a_save_that_dies_half_way_leaves_no_checkpoint_to_trip_over(tmp_path, saved_checkpoint, wav, monkeypatch):
    """Fault: the process dies while writing checkpoint-2 (after the weights, before the trainer state). The folder
    then holds checkpoint-1 whole and no checkpoint-2, and resuming from the last checkpoint works."""
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from modeling_moe_audio.commands.train import build_parser
    from modeling_moe_audio.training.trainer import build_trainer

    shutil.copy(wav, tmp_path / "one-second.wav")
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(GOOD_ROW) for _ in range(4)) + "\n")
    output = tmp_path / "run"
    args = ["--model", str(saved_checkpoint), "--train_data", str(tmp_path / "train.jsonl"), "--output_dir", str(output),
            "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--max_steps", "2", "--save_steps", "1",
            "--save_strategy", "steps", "--per_device_train_batch_size", "2", "--dataloader_num_workers", "0"]
    trainer = build_trainer(*build_parser().parse_args_into_dataclasses(args=args))
    save_rng_state = Trainer._save_rng_state

    def dies_at_step_2(self, output_dir):
        if self.state.global_step == 2:
            raise KeyboardInterrupt("killed while saving")
        save_rng_state(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", dies_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(path.name for path in output.iterdir() if path.name.startswith("checkpoint-")) == ["checkpoint-1"]
    assert get_last_checkpoint(str(output)).endswith("checkpoint-1")
    assert (output / "checkpoint-1" / "trainer_state.json").is_file()
    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)
    resumed = build_trainer(*build_parser().parse_args_into_dataclasses(args=args))
    resumed.train(resume_from_checkpoint=True)
    assert (output / "checkpoint-2" / "trainer_state.json").is_file()


# ----------------------------------------------------------------------------------------------------------------
# The command line: one clear line, at once
# ----------------------------------------------------------------------------------------------------------------


def command(*argv):
    """Run `moe-audio ARGV` in this process; a refusal is the `SystemExit` whose message the user reads."""
    from modeling_moe_audio.commands.main import main

    def run(tmp_path, checkpoint):
        previous = os.getcwd()
        os.chdir(tmp_path)  # relative paths below are the user's own folder
        try:
            Path("runs").mkdir(exist_ok=True)
            return main([str(arg).replace("CKPT", str(checkpoint)) for arg in argv])
        finally:
            os.chdir(previous)
    return run


def command_with_file(name, text, *argv):
    def run(tmp_path, checkpoint):
        (tmp_path / name).write_text(text)
        return command(*argv)(tmp_path, checkpoint)
    return run


CLI_ROWS = [
    Row("train: a mistyped local --model", command("train", "--model", "runs/tiny-mo", "--train_data", "t.jsonl",
        "--output_dir", "o", "--use_cpu"), SystemExit, "error: Checkpoint folder runs/tiny-mo does not exist"),
    Row("evaluate: a mistyped local model", command("evaluate", "runs/tiny-mo", "data.json"), SystemExit,
        "does not exist"),
    Row("evaluate: an unknown --answer_parsing mode", command("evaluate", "CKPT", "data.json", "--answer_parsing",
        "loose"), SystemExit, "2"),
    Row("analyze: a mistyped local model", command("analyze", "runs/x/y", "data.jsonl", "--output_dir", "a"), SystemExit,
        "Checkpoint folder runs/x/y does not exist"),
    Row("upcycle: a missing folder", command("upcycle", "runs/dense", "--output_dir", "up"), SystemExit,
        "Checkpoint folder runs/dense does not exist"),
    Row("push: a missing folder", command("push", "runs/nothing", "you/model"), SystemExit, "is not a directory"),
    Row("push --dry_run lists the files and uploads nothing", command("push", "CKPT", "you/model", "--dry_run"),
        check=lambda result: result is None),
    Row("init: malformed --config JSON names the file", command_with_file("bad.json", "{x", "init", "--config", "bad.json",
        "--output_dir", "m"), SystemExit, "bad.json is not a valid JSON file"),
    Row("init: --llm without --audio_encoder", command("init", "--llm", "x", "--output_dir", "m"), SystemExit,
        "--llm and --audio_encoder go together"),
    Row("init: no --config", command("init", "--output_dir", "m"), SystemExit, "--config is required"),
    Row("init: a config value out of range", command_with_file("neg.json", '{"num_experts": 0}', "init", "--config",
        "neg.json", "--output_dir", "m"), SystemExit, "num_experts=0 must be a positive integer"),
    Row("params: an unknown preset", command("params", "tiny-typo"), SystemExit, "one of the presets"),
    Row("ablate: an unknown configuration", command("ablate", "--configs", "3-choose-9", "--output_dir", "ab"),
        SystemExit, "Unknown configurations ['3-choose-9']"),
    Row("update-code: a folder that is no checkpoint", command("update-code", "runs"), SystemExit, "error:"),
    Row("an unknown command", command("trian"), SystemExit, "2"),
]


@cases(CLI_ROWS)
def test_command_line(row, tmp_path, saved_checkpoint, capsys):
    play(row, tmp_path, saved_checkpoint)
    if row.error is SystemExit and row.message.startswith("error:"):
        assert "Traceback" not in capsys.readouterr().err


def test_nested_values_of_two_types_are_named_not_an_arrow_traceback(tmp_path, wav):
    play(Row("nested types differ", manifest_of({**GOOD_ROW, "attributes": {"pitch": "high"}},
                                                {**GOOD_ROW, "attributes": {"pitch": [1]}}),
             ValueError, "rows disagree on the type of a value inside a column"), tmp_path, wav)


# ----------------------------------------------------------------------------------------------------------------
# The model's inputs
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from helpers import make_audio_batch, make_input_ids, tiny_model, tokens_for

    model = tiny_model()
    features, mask = make_audio_batch(model.config, [800, 3000])
    input_ids, attention_mask = make_input_ids(model.config, tokens_for([800, 3000], model.config), [6, 4])
    return model, {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": features,
                   "input_features_mask": mask}


def forward(**changes):
    def run(tiny):
        model, inputs = tiny
        inputs = {**inputs, **{key: value(inputs) if callable(value) else value for key, value in changes.items()}}
        inputs = {key: value for key, value in inputs.items() if value is not None}
        with torch.no_grad():
            return model(**inputs, labels=inputs["input_ids"])
    return run


def last_token(inputs, token_id):
    return torch.cat([inputs["input_ids"][:, :-1], torch.full_like(inputs["input_ids"][:, -1:], token_id)], 1)


MODEL_ROWS = [
    Row("well-formed inputs", forward(), check=lambda out: torch.isfinite(out.loss)),
    Row("placeholders without input_features", forward(input_features=None, input_features_mask=None), ValueError,
        "audio placeholder tokens but no input_features"),
    Row("input_features as a list", forward(input_features=lambda i: i["input_features"].tolist()), TypeError,
        "input_features must be a float tensor (got list)"),
    Row("integer input_features", forward(input_features=lambda i: i["input_features"].long()), TypeError,
        "must be a float tensor (got torch.int64)"),
    Row("input_features without the window axis", forward(input_features=lambda i: i["input_features"][0]), ValueError,
        "input_features has shape (80, 3000)"),
    Row("input_features cut to 1500 frames", forward(input_features=lambda i: i["input_features"][..., :1500]),
        ValueError, "the audio encoder takes (windows, 80, 3000)"),
    Row("a mask of the wrong shape", forward(input_features_mask=lambda i: i["input_features_mask"][:, :100]),
        ValueError, "input_features_mask has shape (2, 100)"),
    Row("a mask for one window too few", forward(input_features_mask=lambda i: i["input_features_mask"][:1]),
        ValueError, "one row per window"),
    Row("a token id outside the vocabulary", forward(input_ids=lambda i: last_token(i, 10**6)), ValueError,
        "holds the id 1000000, outside the vocabulary"),
    Row("a negative token id", forward(input_ids=lambda i: last_token(i, -3)), ValueError, "holds the id -3"),
    Row("one window too many for the placeholders", forward(
        input_features=lambda i: torch.cat([i["input_features"], i["input_features"][:1]]),
        input_features_mask=lambda i: torch.cat([i["input_features_mask"], i["input_features_mask"][:1]])),
        ValueError, "frame_stacking_factor"),
    Row("text only, no audio at all", forward(input_ids=lambda i: i["input_ids"].masked_fill(
        i["input_ids"] == load_config("tiny").audio_token_id, 7), input_features=None, input_features_mask=None),
        check=lambda out: out.aux_loss is None and torch.isfinite(out.loss)),
]


@cases(MODEL_ROWS)
def test_model_inputs(row, tiny):
    play(row, tiny)


# ----------------------------------------------------------------------------------------------------------------
# Benchmark files, training arguments, upcycling
# ----------------------------------------------------------------------------------------------------------------


MMAU_ROW = {"id": "q1", "audio_id": "one-second.wav", "question": "What is it?", "choices": ["noise", "music"],
            "answer": "noise", "task": "sound"}


def benchmark_of(*rows, format="auto"):
    def run(tmp_path, wav):
        from modeling_moe_audio.evaluation import load_items

        shutil.copy(wav, tmp_path / "one-second.wav")
        path = tmp_path / "bench.jsonl"
        path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
        return load_items(path, format)
    return run


BENCHMARK_ROWS = [
    Row("a good MMAU row", benchmark_of(MMAU_ROW), check=lambda items: items[0].answer_index == 0),
    Row("MMAU answer not among the choices", benchmark_of({**MMAU_ROW, "answer": "speech"}), BadRowError_,
        "line 1 (id q1): answer 'speech' is not among the choices"),
    Row("MMAU with one choice", benchmark_of({**MMAU_ROW, "choices": ["noise"]}), BadRowError_, "at least 2"),
    Row("MMAU without a question", benchmark_of({k: v for k, v in MMAU_ROW.items() if k != "question"}, format="mmau"),
        BadRowError_, "missing MMAU field(s) ['question']"),
    Row("MMAU audio climbing out with ..", benchmark_of({**MMAU_ROW, "audio_id": "../one-second.wav"}), BadRowError_,
        "climbs out"),
    Row("MMAU audio missing", benchmark_of({**MMAU_ROW, "audio_id": "gone.wav"}), BadRowError_, "does not exist"),
    Row("VoiceBench reference that is no option", benchmark_of({"audio": "one-second.wav", "prompt": "Q? A. x B. y",
        "reference": "Z"}, format="voicebench"), BadRowError_, "reference 'Z' is neither a letter"),
    Row("a file of an unknown format", benchmark_of({"foo": 1}), ValueError, "Cannot tell the format"),
    Row("an invalid JSON line", benchmark_of(MMAU_ROW, "{bad", format="mmau"), BadRowError_, "line 2: is not valid JSON"),
]


@cases(BENCHMARK_ROWS)
def test_benchmark_files(row, tmp_path, wav):
    play(row, tmp_path, wav)


def training_run(*extra, manifest_rows=(GOOD_ROW,) * 2):
    def run(tmp_path, checkpoint, wav):
        from modeling_moe_audio.commands.train import build_parser
        from modeling_moe_audio.training.trainer import build_trainer

        shutil.copy(wav, tmp_path / "one-second.wav")
        (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in manifest_rows) + "\n")
        args = ["--model", str(checkpoint), "--train_data", str(tmp_path / "train.jsonl"), "--output_dir",
                str(tmp_path / "run"), "--use_cpu", "--report_to", "none",
                *(str(tmp_path / "train.jsonl") if arg == "TRAIN" else str(arg) for arg in extra)]
        return build_trainer(*build_parser().parse_args_into_dataclasses(args=args))
    return run


def schedule(**kwargs):
    from modeling_moe_audio.training.callbacks import AuxLossSchedule

    return lambda *_: AuxLossSchedule(**kwargs)


TRAINING_ROWS = [
    Row("an unknown stage", training_run("--stage", "everything"), ValueError, "Unknown stage 'everything'"),
    Row("bias balancing without a selection bias", training_run("--bias_update_rate", "0.01"), ValueError,
        "needs a model with router_selection_bias=True"),
    Row("--max_audio_seconds above the processor's limit", training_run("--max_audio_seconds", "1000"), ValueError,
        "above the processor's own limit of 600"),
    Row("bad evaluation rows are skipped too", training_run("--eval_data", "TRAIN", "--skip_bad_rows",
        manifest_rows=(GOOD_ROW, GOOD_ROW, {**GOOD_ROW, "audio": "gone.wav"})),
        check=lambda trainer: trainer.eval_dataset is not None and len(trainer.eval_dataset) == 2),
    Row("--streaming without --max_steps", training_run("--streaming"), ValueError, "--streaming needs --max_steps"),
    Row("an unknown LoRA target preset", training_run("--stage", "lora", "--lora_targets", "attention"), ValueError,
        "Unknown --lora_targets 'attention': use one of llm, experts, llm+experts"),
    Row("a LoRA parameter name that matches nothing", training_run("--stage", "lora", "--lora_targets", "experts",
        "--lora_target_parameters", "adapter.experts.gate_proj"), ValueError,
        "'adapter.experts.gate_proj' matches no parameter of the adapter's experts: name their weights, "
        "adapter.experts.up_proj and/or adapter.experts.down_proj"),
    Row("a LoRA parameter outside the experts", training_run("--stage", "lora", "--lora_targets", "experts",
        "--lora_target_parameters", "router.weight"), ValueError,
        "'router.weight' names model.adapter.router.weight, not the adapter's experts"),
    Row("LoRA expert weights without the experts targeted", training_run("--stage", "lora",
        "--lora_target_parameters", "adapter.experts.up_proj"), ValueError,
        "--lora_targets llm puts no LoRA on the experts: use --lora_targets experts or llm+experts"),
    Row("LoRA LLM modules without the LLM targeted", training_run("--stage", "lora", "--lora_targets", "experts",
        "--lora_target_modules", ".*q_proj"), ValueError,
        "--lora_targets experts puts no LoRA on the language model: use --lora_targets llm+experts"),
    Row("a LoRA module regex that matches nothing", training_run("--stage", "lora", "--lora_target_modules", "q_proj"),
        ValueError, "'q_proj' matches no module outside the frontend and adapter"),
    Row("a LoRA module regex that only reaches the adapter", training_run("--stage", "lora", "--lora_target_modules",
        r".*adapter.*\.up_proj"), ValueError, "matches no module outside the frontend and adapter"),
    Row("a LoRA module pattern that is no regex", training_run("--stage", "lora", "--lora_target_modules", "(q_proj"),
        ValueError, "'(q_proj' is not a regular expression"),
    Row("LoRA dropout on the experts", training_run("--stage", "lora", "--lora_targets", "llm+experts",
        "--lora_dropout", "0.1"), ValueError, "has no dropout. Pass --lora_dropout 0"),
    Row("LoRA dropout 0 on the experts", training_run("--stage", "lora", "--lora_targets", "llm+experts",
        "--lora_dropout", "0"), check=lambda trainer: trainer.model.peft_config["default"].lora_dropout == 0.0),
    Row("a NaN aux-loss coefficient", schedule(coef=math.nan), ValueError, "aux-loss coefficients must be >= 0"),
    Row("a negative decay target", schedule(coef=0.01, decay_to=-1.0), ValueError, "aux-loss coefficients"),
    Row("negative warm-up steps", schedule(coef=0.01, warmup_steps=-2), ValueError, "warmup_steps=-2"),
]


@cases(TRAINING_ROWS)
def test_training_arguments(row, tmp_path, saved_checkpoint, wav):
    play(row, tmp_path, saved_checkpoint, wav)


DENSE_TRAINING_ROWS = [
    Row("LoRA on the experts of a dense adapter", training_run("--stage", "lora", "--lora_targets", "experts"),
        ValueError, "needs a MoE adapter, but this checkpoint's adapter is 'dense' (adapter_type in config.json), "
        "without experts: use --lora_targets llm"),
    Row("LoRA on the LLM of a dense-adapter model", training_run("--stage", "lora", "--lora_rank", "2"),
        check=lambda trainer: set(trainer.model.peft_config["default"].modules_to_save) == {"frontend", "adapter"}),
]


@cases(DENSE_TRAINING_ROWS)
def test_training_arguments_on_a_dense_adapter(row, tmp_path, tiny_dense_checkpoint, wav):
    play(row, tmp_path, tiny_dense_checkpoint, wav)


def upcycled(**kwargs):
    def run(tmp_path, checkpoint):
        from modeling_moe_audio.checkpoints.upcycle import upcycle

        return upcycle(checkpoint, tmp_path / "up", **kwargs)
    return run


UPCYCLE_ROWS = [
    Row("upcycling a model that is already MoE", upcycled(), ValueError, "starts from a dense-adapter model"),
    Row("upcycling into a folder of the user's files", lambda tmp, ckpt: (folder_holding("mine.txt")(tmp),
        __import__("modeling_moe_audio.checkpoints.upcycle", fromlist=["u"]).upcycle(ckpt, tmp / "out"))[1],
        FileExistsError, "is not empty (mine.txt)"),
]


@cases(UPCYCLE_ROWS)
def test_upcycling(row, tmp_path, saved_checkpoint):
    play(row, tmp_path, saved_checkpoint)


# ----------------------------------------------------------------------------------------------------------------
# The web demo (`moe-audio app`): the page shows these messages in its status line (tests/test_app.py)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_model(tiny_checkpoint):
    from modeling_moe_audio.app.page import DemoModel

    return DemoModel(tiny_checkpoint)


def page_clip(samples=None, rate=16000, raw: bytes | None = None):
    def run(tmp_path, page_model):
        import soundfile

        path = tmp_path / "clip.wav"
        if raw is not None:
            path.write_bytes(raw)
        else:
            soundfile.write(path, samples, rate)
        return page_model.read_clip(str(path))
    return run


def page_model_with(**kwargs):
    def run(tmp_path, checkpoint):
        from modeling_moe_audio.app.page import DemoModel

        return DemoModel(checkpoint, **kwargs)
    return run


APP_ROWS = [
    Row("no clip recorded or uploaded", lambda tmp, page: page.read_clip(None), ValueError, "No audio"),
    Row("a silent clip", page_clip(np.zeros(16000, dtype="float32")), ValueError, "The clip is silent"),
    Row("a clip over the page's limit", page_clip(np.full(31 * 8000, 0.1, dtype="float32"), rate=8000), ValueError,
        "lasts 31.0 s, over this page's limit of 30 s"),
    Row("an empty wav file", page_clip(np.zeros(0, dtype="float32")), ValueError, "empty"),
    Row("a file that is not audio", page_clip(raw=b"not audio at all"), ValueError, "Cannot read the audio file clip.wav"),
    Row("an empty question", lambda tmp, page: page.read_question("  \n"), ValueError, "No question"),
    Row("a quiet but audible clip is accepted", page_clip(np.full(16000, 0.01, dtype="float32")),
        check=lambda clip: clip.shape == (16000,)),
]


@cases(APP_ROWS)
def test_web_demo_input(row, tmp_path, page_model):
    play(row, tmp_path, page_model)


APP_START_ROWS = [
    Row("a checkpoint folder that does not exist", lambda tmp, ckpt: page_model_with()(tmp, tmp / "nothing-here"),
        FileNotFoundError, "does not exist"),
    Row("no new tokens to answer with", page_model_with(max_new_tokens=0), ValueError, "max_new_tokens must be at least 1"),
    Row("a zero clip limit", page_model_with(max_audio_seconds=0), ValueError, "max_audio_seconds must be positive"),
]


@cases(APP_START_ROWS)
def test_web_demo_start(row, tmp_path, saved_checkpoint):
    play(row, tmp_path, saved_checkpoint)


def test_web_demo_corpus_needs_experts(tmp_path, tiny_dense_checkpoint, make_corpus):
    manifest = make_corpus(0, {"train": 2})["train"]
    play(Row("--corpus for a dense checkpoint", page_model_with(corpus=manifest), ValueError,
             "--corpus is for MoE checkpoints"), tmp_path, tiny_dense_checkpoint)


# ----------------------------------------------------------------------------------------------------------------
# The second stream's semantic ids: one non-negative integer per 12.5 Hz audio token of each clip
# ----------------------------------------------------------------------------------------------------------------

ONE_SECOND_IDS = 13  # a 1 s clip: 100 mel frames -> 50 encoder frames -> 13 audio tokens (the last one partial)


def semantic_manifest(*rows, files: dict | None = None, vocab_size: int | None = None, codebook=False):
    """`load_training_data` on a manifest of `rows` beside one-second.wav and the .npy `files` ({name: array}), for
    a model with `vocab_size` (None: no model known) and, with `codebook`, a codebook."""
    def run(tmp_path, wav):
        from modeling_moe_audio.data.semantic_ids import SemanticIdsRule
        from modeling_moe_audio.data.sources import load_training_data

        folder = tmp_path / "data"
        folder.mkdir(exist_ok=True)
        shutil.copy(wav, folder / "one-second.wav")
        for name, array in (files or {}).items():
            np.save(folder / name, array)
        path = folder / "manifest.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return load_training_data(path, semantic=SemanticIdsRule(vocab_size=vocab_size, has_codebook=codebook))
    return run


def with_ids(ids, **extra):
    return {**GOOD_ROW, "semantic_ids": ids, **extra}


IDS = list(range(ONE_SECOND_IDS))
TWO_CLIPS = {"audio": ["one-second.wav", "one-second.wav"]}
SEMANTIC_ROWS = [
    Row("inline ids, one per audio token", semantic_manifest(with_ids(IDS)),
        check=lambda result: result[0][0]["semantic_ids"] == [IDS]),
    Row("a .npy file of ids", semantic_manifest(with_ids("ids.npy"), files={"ids.npy": np.arange(13, dtype=np.int16)}),
        check=lambda result: result[0][0]["semantic_ids"] == [IDS]),
    Row("one list per clip of a two-clip row", semantic_manifest(with_ids([IDS, "ids.npy"], **TWO_CLIPS),
                                                                  files={"ids.npy": np.zeros(13, dtype=np.int64)}),
        check=lambda result: result[0][0]["semantic_ids"] == [IDS, [0] * 13]),
    Row("one id too few", semantic_manifest(with_ids(IDS[:-1])), BadRowError_,
        "clip 1 lasts 1.000 s, which is 13 audio tokens at 12.5 hz, but its semantic_ids hold 12; give exactly one id"),
    Row("one id too many in a .npy file", semantic_manifest(with_ids("ids.npy"), files={"ids.npy": np.arange(14)}),
        BadRowError_, "which is 13 audio tokens at 12.5 hz, but its semantic_ids hold 14"),
    Row("a negative id", semantic_manifest(with_ids([-1] + IDS[1:])), BadRowError_, "negative id -1"),
    Row("a float id", semantic_manifest(with_ids([0.5] + IDS[1:])), BadRowError_, "0.5, which is not an integer"),
    Row("a boolean id", semantic_manifest(with_ids([True] + IDS[1:])), BadRowError_, "True, which is not an integer"),
    Row("a .npy file of floats", semantic_manifest(with_ids("ids.npy"), files={"ids.npy": np.zeros(13)}), BadRowError_,
        "1-D float64 array; it must be 1-D integers"),
    Row("a missing .npy file", semantic_manifest(with_ids("gone.npy")), BadRowError_,
        "semantic_ids file", ),
    Row("a .npy path climbing out with ..", semantic_manifest(with_ids("../ids.npy")), BadRowError_,
        "climbs out of the data file's folder"),
    Row("one list for a two-clip row", semantic_manifest(with_ids(IDS, **TWO_CLIPS)), BadRowError_,
        "one entry per audio clip (2 here)"),
    Row("ids as a number", semantic_manifest(with_ids(7)), BadRowError_, "one entry per audio clip (1 here)"),
    Row("ids on some rows only", semantic_manifest(with_ids(IDS), GOOD_ROW), ValueError,
        "1 of 2 rows carry semantic_ids, but not all"),
    Row("an id outside the model's vocabulary", semantic_manifest(with_ids(IDS), vocab_size=12), BadRowError_,
        "the id 12, outside the model's semantic vocabulary (0 to 11)"),
    Row("ids for a model without a semantic stream", semantic_manifest(with_ids(IDS), vocab_size=0), BadRowError_,
        "the model has no semantic stream (semantic_vocab_size=0)"),
    Row("no ids for a model that needs them", semantic_manifest(GOOD_ROW, vocab_size=16), BadRowError_,
        "no semantic_ids, which the model needs"),
    Row("no ids for a model with a codebook", semantic_manifest(GOOD_ROW, vocab_size=16, codebook=True),
        check=lambda result: "semantic_ids" not in result[0][0]),
]


@cases(SEMANTIC_ROWS)
def test_semantic_ids_in_data(row, tmp_path, wav):
    play(row, tmp_path, wav)


def test_missing_npy_names_the_file_and_the_fix(tmp_path, wav):
    with pytest.raises(BadRowError_, match=r"gone\.npy does not exist; give the \.npy file's path"):
        semantic_manifest(with_ids("gone.npy"))(tmp_path, wav)


def semantic_batch(processor, *ids_per_clip):
    clips = [{"type": "audio", "audio": samples(), "sampling_rate": 16000, **({} if ids is None else {"semantic_ids": ids})}
             for ids in ids_per_clip]
    return tokenized(processor, [chat(clip) for clip in clips])


def semantic_model_call(vocab_size, ids_value):
    def run(processor):
        from helpers import tiny_model

        model = tiny_model(semantic_vocab_size=vocab_size)
        inputs = semantic_batch(processor, [0] * ONE_SECOND_IDS)
        inputs["semantic_audio_ids"] = torch.full_like(inputs["semantic_audio_ids"], ids_value)
        with torch.no_grad():
            return model(**inputs)
    return run


SEMANTIC_INPUT_ROWS = [
    Row("ids in every audio block reach the model's input", lambda p: semantic_batch(p, IDS, IDS),
        check=lambda inputs: inputs["semantic_audio_ids"][:, :ONE_SECOND_IDS].tolist() == [IDS, IDS]),
    Row("ids in some audio blocks only", lambda p: semantic_batch(p, IDS, None), ValueError,
        "1 of 2 audio blocks carry semantic_ids"),
    Row("float ids to the processor", lambda p: semantic_batch(p, [0.5] * ONE_SECOND_IDS), TypeError,
        "give integer ids"),
    Row("a negative id to the processor", lambda p: semantic_batch(p, [-3] * ONE_SECOND_IDS), ValueError,
        "negative id -3"),
    Row("a wrong id count to the processor", lambda p: semantic_batch(p, IDS[:5]), ValueError,
        "clip 0 has 13 audio tokens at 12.5 hz but 5 semantic_audio_ids"),
    Row("an id outside the model's vocabulary", semantic_model_call(8, 8), ValueError,
        "holds the id 8, outside this model's semantic vocabulary (0 to 7)"),
    Row("ids to a model without a semantic stream", semantic_model_call(0, 0), ValueError,
        "this model has no semantic stream (semantic_vocab_size=0)"),
    Row("no ids to a model that needs them and has no codebook", lambda p: __import__("helpers").tiny_model(
        semantic_vocab_size=8)(**semantic_batch(p, None)), ValueError, "no codebook to compute them"),
]


@cases(SEMANTIC_INPUT_ROWS)
def test_semantic_ids_in_inputs(row, processor):
    play(row, processor)


def test_benchmark_item_with_a_wrong_id_count(tmp_path, wav):
    from modeling_moe_audio.data.audio import BadRowError
    from modeling_moe_audio.evaluation.benchmarks import load_items

    shutil.copy(wav, tmp_path / "one-second.wav")
    row = {"audio_id": "one-second.wav", "question": "q?", "choices": ["a", "b"], "answer": "a"}
    (tmp_path / "mmau.json").write_text(json.dumps([{**row, "semantic_ids": IDS}, {**row, "semantic_ids": IDS[:3]}]))
    with pytest.raises(BadRowError, match=r"item 2.*which is 13 audio tokens at 12.5 Hz, but its semantic_ids hold 3"):
        load_items(tmp_path / "mmau.json")
    (tmp_path / "mmau.json").write_text(json.dumps([{**row, "semantic_ids": IDS}]))
    assert load_items(tmp_path / "mmau.json")[0].semantic_ids == IDS
