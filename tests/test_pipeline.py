"""transformers' `any-to-any` pipeline on a saved checkpoint, called as users call it: chats with audio files or
arrays, one by one and batched, and raw text with an audio placeholder; answers equal `model.generate`'s (greedy)."""

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoProcessor, WhisperFeatureExtractor, pipeline

from modeling_moe_audio.processing_moe_audio import MoEAudioFeatureExtractor, MoEAudioProcessor


SR = 16000
NEW_TOKENS = 8
QUESTION = "What do you hear?"


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny MoE checkpoint with its language model's projections scaled x10: at their initial scale the layers are
    near the identity and every clip gets the same answer; scaled, greedy answers depend on the audio, so a batch
    that mixed up or mangled its rows would answer differently."""
    folder = shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("pipeline") / "tiny")
    weights = load_file(folder / "model.safetensors")
    for name in weights:
        if ".language_model.layers." in name and name.endswith("proj.weight"):
            weights[name] = weights[name] * 10
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two wav files of different lengths (so a batch needs padding), one of them at 44.1 kHz (resampled on load)."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(int(1.2 * SR)) * 0.1).astype(np.float32)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(2.6 * 44100)) / 44100)).astype(np.float32)
    soundfile.write(folder / "noise.wav", noise, SR)
    soundfile.write(folder / "tone.wav", tone, 44100)
    return [str(folder / "noise.wav"), str(folder / "tone.wav")]


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return pipeline("any-to-any", model=str(checkpoint), trust_remote_code=True)


@pytest.fixture(scope="module")
def model(checkpoint):
    return AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()


@pytest.fixture(scope="module")
def processor(checkpoint):
    return AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)


def chat(audio_block):
    return [{"role": "user", "content": [audio_block, {"type": "text", "text": QUESTION}]}]


def generated(model, processor, inputs) -> list[str]:
    output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def answers(results) -> list[str]:
    results = results if isinstance(results[0], list) else [results]
    return [result[0]["generated_text"] for result in results]


def ask(pipe, text, **kwargs):
    return pipe(text=text, max_new_tokens=NEW_TOKENS, return_full_text=False, **kwargs)


@pytest.fixture
def generate_calls(pipe, monkeypatch):
    """What the pipeline hands `model.generate`, recorded by a spy around the real method."""
    calls = []
    real_generate = pipe.model.generate

    def spy(**inputs):
        calls.append({name: value for name, value in inputs.items() if isinstance(value, torch.Tensor)})
        return real_generate(**inputs)

    monkeypatch.setattr(pipe.model, "generate", spy)
    return calls


def test_a_chat_with_an_audio_file_answers_as_generate(pipe, model, processor, clips):
    conversation = chat({"type": "audio", "path": clips[1]})
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True)
    expected = generated(model, processor, inputs)
    assert answers(ask(pipe, conversation)) == expected
    full = pipe(text=conversation, max_new_tokens=NEW_TOKENS)[0]["generated_text"]
    assert full[:-1] == conversation and full[-1] == {"role": "assistant", "content": expected[0]}


def test_a_chat_with_an_array_and_its_rate_answers_as_generate(pipe, model, processor, clips):
    array, rate = soundfile.read(clips[0], dtype="float32")
    conversation = chat({"type": "audio", "audio": array, "sampling_rate": rate})
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert answers(ask(pipe, conversation)) == generated(model, processor, inputs)
    # The same clip by path gives the same answer.
    assert answers(ask(pipe, chat({"type": "audio", "path": clips[0]}))) == generated(model, processor, inputs)


def test_batched_chats_are_left_padded_and_answer_as_one_by_one(pipe, model, processor, clips, generate_calls):
    conversations = [chat({"type": "audio", "path": path}) for path in clips]
    one_by_one = [answers(ask(pipe, conversation))[0] for conversation in conversations]
    assert one_by_one[0] != one_by_one[1], "the two clips must get different answers, or a mix-up would go unseen"
    generate_calls.clear()

    batched = answers(ask(pipe, conversations, batch_size=2))

    assert batched == one_by_one
    (call,) = generate_calls
    mask = call["attention_mask"]
    assert mask.shape[0] == 2 and bool((mask == 0).any()), "the rows differ in length, so one must be padded"
    assert bool(mask[:, -1].all()), f"the batch is padded on the right:\n{mask}"
    assert (call["input_ids"][mask == 0] == processor.tokenizer.pad_token_id).all()
    # And as `model.generate` answers the same batch built by the processor.
    batch = processor.apply_chat_template(conversations, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert generated(model, processor, batch) == one_by_one


def test_raw_text_with_an_audio_file_needs_no_sampling_rate(pipe, model, processor, clips):
    text = f"Listen: {processor.audio_token} {QUESTION}"
    expected = generated(model, processor, processor(text=[text], audio=[clips[1]]))
    assert answers(ask(pipe, text, audio=clips[1])) == expected
    assert pipe(text=text, audio=clips[1], max_new_tokens=NEW_TOKENS)[0]["generated_text"] == text + expected[0]
    # A data URI of the same file, decoded by the processor too.
    data_uri = "data:audio/wav;base64," + base64.b64encode(Path(clips[1]).read_bytes()).decode()
    assert answers(ask(pipe, text, audio=data_uri)) == expected

    # Batched, as dicts of text and audio.
    rows = [{"text": text, "audio": path} for path in clips]
    one_by_one = [answers(ask(pipe, row["text"], audio=row["audio"]))[0] for row in rows]
    assert one_by_one[1] == expected[0]
    assert answers(ask(pipe, rows, batch_size=2)) == one_by_one


def test_raw_text_with_an_array_needs_its_sampling_rate(pipe, model, processor, clips):
    text = f"Listen: {processor.audio_token} {QUESTION}"
    array, _ = soundfile.read(clips[0], dtype="float32")
    with pytest.raises(ValueError, match=r"Pass `sampling_rate` with audio arrays .* sampling_rate=16000"):
        ask(pipe, text, audio=array)
    expected = generated(model, processor, processor(text=[text], audio=[array], sampling_rate=SR))
    assert answers(ask(pipe, text, audio=array, processor_kwargs={"sampling_rate": SR})) == expected


def test_audio_windows_stay_right_padded_while_the_feature_extractor_says_left(processor, checkpoint):
    """The processor tells pipelines to pad on the left, but Whisper windows must still be padded on the right."""
    assert isinstance(processor.feature_extractor, MoEAudioFeatureExtractor)
    assert processor.feature_extractor.padding_side == processor.tokenizer.padding_side == "left"
    settings = {key: value for key, value in processor.feature_extractor.to_dict().items()}
    assert settings["feature_extractor_type"] == "WhisperFeatureExtractor"  # checkpoints need no extra class
    # Saved padding on the right, as Whisper pads audio: a plain WhisperFeatureExtractor (or an older moe-audio's
    # code) reading the checkpoint pads correctly; loaded by this processor, it says left again.
    assert settings["padding_side"] == "right"
    assert json.loads((checkpoint / "processor_config.json").read_text())["feature_extractor"]["padding_side"] == "right"
    assert MoEAudioProcessor.from_pretrained(checkpoint).feature_extractor.padding_side == "left"
    whisper = WhisperFeatureExtractor(**settings)
    window = whisper.n_samples
    rng = np.random.default_rng(1)
    for samples in (1, 159, 160, 161, window - 1, window, window + 1, 2 * window + 7):
        clip = (rng.standard_normal(samples) * 0.1).astype(np.float32)
        ours = processor(text=[processor.audio_token], audio=[clip], sampling_rate=SR)
        windows = [clip[start : start + window] for start in range(0, samples, window)]
        reference = whisper(windows, sampling_rate=SR, padding="max_length", return_attention_mask=True,
                            return_tensors="pt")
        assert torch.equal(ours["input_features"], reference["input_features"]), samples
        assert torch.equal(ours["input_features_mask"], reference["attention_mask"]), samples


def test_a_clip_longer_than_a_window_goes_alone_and_batched_says_so(pipe, model, processor, clips, tmp_path):
    """The pipeline batches by keeping the first window of each row's features: longer clips need batch_size=1."""
    window_seconds = processor.feature_extractor.chunk_length
    long_clip = (np.random.default_rng(3).standard_normal(int((window_seconds + 1.5) * SR)) * 0.1).astype(np.float32)
    soundfile.write(tmp_path / "long.wav", long_clip, SR)
    conversation = chat({"type": "audio", "path": str(tmp_path / "long.wav")})
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert inputs["input_features"].shape[0] == 2
    assert answers(ask(pipe, conversation)) == generated(model, processor, inputs)
    one_window = rf"batch_size > 1 takes clips of one window at most \({window_seconds} s for this model\)"
    with pytest.raises(ValueError, match=one_window):
        ask(pipe, [conversation, chat({"type": "audio", "path": clips[0]})], batch_size=2)
