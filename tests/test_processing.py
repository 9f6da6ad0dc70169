"""MoEAudioProcessor: placeholder counts equal audio embeddings, chat template, audio input rules, saving."""

import numpy as np
import pytest
import soundfile
import soxr
import torch
from transformers import AutoProcessor, AutoTokenizer

from modeling_moe_audio import MoEAudioForCausalLM, MoEAudioProcessor, load_audio
from modeling_moe_audio.checkpoints.build import bind_processor, new_processor
from modeling_moe_audio.presets import SHIPPED_TOKENIZERS

from conftest import tiny_config
from remote_code import run_without_package


SR = 16000


@pytest.fixture(scope="module")
def processor():
    return new_processor(tiny_config(), AutoTokenizer.from_pretrained(SHIPPED_TOKENIZERS["tiny"]))


@pytest.fixture(scope="module")
def model(processor):
    config = tiny_config()
    bind_processor(config, processor)
    torch.manual_seed(0)
    return MoEAudioForCausalLM(config).eval()


def noise(seconds, seed=0, scale=0.1):
    return (np.random.default_rng(seed).standard_normal(int(round(seconds * SR))) * scale).astype(np.float32)


def placeholders(inputs, processor):
    return (inputs["input_ids"] == processor.audio_token_id).sum().item()


@pytest.mark.parametrize("seconds", [0.1, 1, 2.5, 29.99, 30, 30.01, 75])
def test_placeholders_equal_audio_embeddings(processor, model, seconds):
    inputs = processor(text=["Listen: <|audio_pad|> What is it?"], audio=[noise(seconds)], sampling_rate=SR)
    assert inputs["input_features"].shape[0] == int(np.ceil(seconds * SR / (30 * SR)))  # one 30 s window each
    with torch.no_grad():
        out = model(**inputs)
    assert out.audio_hidden_states.shape[0] == placeholders(inputs, processor) > 0


def test_mixed_batch_with_several_clips_per_prompt_and_a_text_only_row(processor, model):
    clips = [noise(3.3, 1), noise(41, 2), noise(0.5, 3), noise(12, 4)]
    text = ["<|audio_pad|> then <|audio_pad|>: same?", "no audio in this row", "<|audio_pad|> and <|audio_pad|>"]
    inputs = processor(text=text, audio=clips, sampling_rate=SR)
    with torch.no_grad():
        out = model(**inputs)
    assert out.audio_hidden_states.shape[0] == placeholders(inputs, processor)
    # Each clip is framed by the start and end tokens; the text-only row has none.
    starts = (inputs["input_ids"] == processor.audio_special_token_ids["audio_start_token_id"]).sum(-1)
    assert starts.tolist() == [2, 0, 2]
    # Left padding by default (ready for generate), and configurable.
    assert inputs["attention_mask"][1, 0] == 0
    right = processor(text=text, audio=clips, sampling_rate=SR, padding_side="right")
    assert right["attention_mask"][1, -1] == 0


def test_each_clip_gets_its_own_count(processor):
    inputs = processor(text=["<|audio_pad|>", "<|audio_pad|>"], audio=[noise(1.0), noise(2.0)], sampling_rate=SR)
    counts = (inputs["input_ids"] == processor.audio_token_id).sum(-1).tolist()
    assert counts == [13, 25]  # 100 mel frames -> 50 encoder frames -> 13 tokens; 200 -> 100 -> 25


def test_count_mismatch_names_both_counts(processor):
    with pytest.raises(ValueError, match=r"Found total 2 <\|audio_pad\|> tokens and 1 audio inputs"):
        processor(text=["<|audio_pad|> <|audio_pad|>"], audio=[noise(1)], sampling_rate=SR)
    with pytest.raises(ValueError, match=r"1 <\|audio_pad\|> tokens in the text but no audio"):
        processor(text=["<|audio_pad|>"])


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros(0, np.float32), "Audio 0 is empty"),
        (np.array([0.1, np.nan] * 800, np.float32), "Audio 0 contains NaN"),
        (np.array([0.1, np.inf] * 800, np.float32), "Audio 0 contains NaN or infinite"),
        (np.zeros((16000, 20), np.float32), r"Audio 0 has shape \(16000, 20\)"),
        (np.zeros((2, 3, 16000), np.float32), "Audio 0 has 3 dimensions"),
        (np.zeros(16000, np.uint8), "Audio 0 has dtype uint8"),
    ],
)
def test_bad_audio_is_a_clear_error(processor, audio, message):
    with pytest.raises((ValueError, TypeError), match=message):
        processor(text=["<|audio_pad|>"], audio=[audio], sampling_rate=SR)


def test_sampling_rate_is_required_and_checked(processor):
    with pytest.raises(ValueError, match="Pass `sampling_rate` with audio arrays"):
        processor(text=["<|audio_pad|>"], audio=[noise(1)])
    with pytest.raises(ValueError, match=r"sampled at 44100 Hz but the model expects 16000 Hz.*soxr.resample"):
        processor(text=["<|audio_pad|>"], audio=[noise(1)], sampling_rate=44100)


def test_a_single_2d_array_is_ambiguous(processor):
    with pytest.raises(ValueError, match="pass a list of 1-D arrays for a batch"):
        processor(text=["<|audio_pad|>"], audio=np.zeros((2, 16000), np.float32), sampling_rate=SR)


def test_audio_longer_than_the_maximum_is_rejected(processor):
    short = MoEAudioProcessor(processor.feature_extractor, processor.tokenizer, max_audio_seconds=10)
    with pytest.raises(ValueError, match=r"lasts 12.0 s, longer than max_audio_seconds=10"):
        short(text=["<|audio_pad|>"], audio=[noise(12)], sampling_rate=SR)


def test_sample_formats_give_the_same_features(processor):
    clip = noise(2.0, scale=0.3)
    as_int16 = np.round(clip * 32767).astype(np.int16)
    reference = processor(text=["<|audio_pad|>"], audio=[as_int16.astype(np.float32) / 32768.0], sampling_rate=SR)
    for variant in (as_int16, as_int16.astype(np.float64) / 32768.0, torch.from_numpy(as_int16.astype(np.float32) / 32768.0)):
        out = processor(text=["<|audio_pad|>"], audio=[variant], sampling_rate=SR)
        torch.testing.assert_close(out["input_features"], reference["input_features"], rtol=1e-5, atol=1e-5)
        assert torch.equal(out["input_ids"], reference["input_ids"])


def test_stereo_is_averaged_to_mono(processor):
    left, right = noise(1.5, 1), noise(1.5, 2)
    mono = processor(text=["<|audio_pad|>"], audio=[(left + right) / 2], sampling_rate=SR)
    for stereo in (np.stack([left, right]), np.stack([left, right], axis=1)):
        out = processor(text=["<|audio_pad|>"], audio=[stereo], sampling_rate=SR)
        torch.testing.assert_close(out["input_features"], mono["input_features"])


def test_load_audio_decodes_and_resamples_real_files(tmp_path, processor):
    stereo = np.stack([noise(2.0, 1), noise(2.0, 2)], axis=1)
    resampled_reference = soxr.resample(stereo.mean(axis=1), SR, 44100)
    path = tmp_path / "clip.flac"
    soundfile.write(path, resampled_reference, 44100)
    decoded = load_audio(path)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert decoded.shape[0] == 32000
    expected = soxr.resample(soundfile.read(path, dtype="float32")[0], 44100, SR)
    np.testing.assert_allclose(decoded, expected[: decoded.shape[0]], atol=1e-4)
    by_path = processor(text=["<|audio_pad|>"], audio=[str(path)])
    by_array = processor(text=["<|audio_pad|>"], audio=[decoded], sampling_rate=SR)
    torch.testing.assert_close(by_path["input_features"], by_array["input_features"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")


def test_semantic_ids_are_split_per_window_and_checked(processor):
    clips = [noise(31.0), noise(2.0)]  # 31 s spans two windows: 375 + 13 tokens; 2 s: 25 tokens
    inputs = processor(text=["<|audio_pad|>", "<|audio_pad|>"], audio=clips, sampling_rate=SR)
    counts = [int((inputs["input_ids"][i] == processor.audio_token_id).sum()) for i in range(2)]
    assert counts == [375 + 13, 25]
    ids = [torch.arange(counts[0]) % 50, torch.arange(counts[1]) % 50 + 100]
    out = processor(text=["<|audio_pad|>", "<|audio_pad|>"], audio=clips, sampling_rate=SR, semantic_audio_ids=ids)
    rows = out["semantic_audio_ids"]
    assert rows.shape == (3, 375)
    torch.testing.assert_close(rows[0], ids[0][:375])
    torch.testing.assert_close(rows[1, : counts[0] - 375], ids[0][375:])
    torch.testing.assert_close(rows[2, : counts[1]], ids[1])
    with pytest.raises(ValueError, match=rf"Clip 1 has {counts[1]} audio tokens at 12.5 Hz but {counts[1] - 1}"):
        processor(text=["<|audio_pad|>", "<|audio_pad|>"], audio=clips, sampling_rate=SR,
                  semantic_audio_ids=[ids[0], ids[1][:-1]])


def test_semantic_ids_feed_a_model_with_the_discrete_stream(processor):
    config = tiny_config(semantic_vocab_size=200)
    bind_processor(config, processor)
    model = MoEAudioForCausalLM(config).eval()
    clips = [noise(33.0)]
    count = int((processor(text=["<|audio_pad|>"], audio=clips, sampling_rate=SR)["input_ids"] == 509).sum())
    inputs = processor(text=["<|audio_pad|>"], audio=clips, sampling_rate=SR, semantic_audio_ids=[torch.arange(count) % 200])
    with torch.no_grad():
        assert model(**inputs).audio_hidden_states.shape[0] == count


CONVERSATION = [
    {"role": "system", "content": "You listen."},
    {"role": "user", "content": [{"type": "audio", "audio": noise(1.0), "sampling_rate": 16000}, {"type": "text", "text": "High or low?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "high"}]},
]


def test_chat_template_renders_the_conversation(processor):
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou listen.<|im_end|>\n"
        "<|im_start|>user\n<|audio_pad|>High or low?<|im_end|>\n"
        "<|im_start|>assistant\nhigh<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_labels_cover_only_the_assistant(processor):
    inputs = processor.apply_chat_template([CONVERSATION, CONVERSATION[:2] + [
        {"role": "assistant", "content": [{"type": "text", "text": "low, quite low"}]}]], tokenize=True,
        return_labels=True, processor_kwargs={"padding_side": "right"})
    for row, answer in enumerate(["high", "low, quite low"]):
        labelled = inputs["labels"][row][inputs["labels"][row] != -100]
        assert processor.decode(labelled) == answer + "<|im_end|>"
    assert (inputs["labels"][inputs["input_ids"] == processor.audio_token_id] == -100).all()
    assert (inputs["labels"][inputs["attention_mask"] == 0] == -100).all()
    with pytest.raises(ValueError, match="return_labels=True needs tokenize=True"):
        processor.apply_chat_template(CONVERSATION, return_labels=True)


def test_generation_from_a_conversation(processor, model):
    inputs = processor.apply_chat_template(CONVERSATION[:2], tokenize=True, return_dict=True, add_generation_prompt=True)
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    assert isinstance(processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:])[0], str)


def test_missing_audio_file_in_a_conversation(processor, tmp_path):
    conversation = [{"role": "user", "content": [{"type": "audio", "path": str(tmp_path / "nope.wav")}]}]
    with pytest.raises(FileNotFoundError, match="nope.wav' in the conversation does not exist"):
        processor.apply_chat_template(conversation, tokenize=True)


def test_missing_audio_tokens_are_added_to_a_tokenizer(processor):
    plain = AutoTokenizer.from_pretrained(SHIPPED_TOKENIZERS["tiny"])
    assert len(plain) == 512 and "<|sound|>" not in plain.get_vocab()
    fresh = MoEAudioProcessor(processor.feature_extractor, plain, audio_token="<|sound|>", audio_start_token=None,
                              audio_end_token="<|sound_end|>")
    assert len(fresh.tokenizer) == 514 and fresh.tokenizer.convert_tokens_to_ids("<|sound|>") == 512
    assert fresh.audio_special_token_ids == {"audio_token_id": 512, "audio_start_token_id": None,
                                             "audio_end_token_id": 513}
    assert fresh.tokenizer.tokenize("a <|sound|> b") .count("<|sound|>") == 1


def test_save_and_load_in_a_clean_process_gives_identical_outputs(processor, tmp_path):
    processor.save_pretrained(tmp_path / "processor")
    assert (tmp_path / "processor" / "chat_template.jinja").is_file()
    assert sorted(p.name for p in (tmp_path / "processor").glob("*.py")) == [
        "configuration_moe_audio.py", "processing_moe_audio.py"]
    clips = [noise(2.2, 5), noise(35.0, 6)]
    expected = processor(text=["a <|audio_pad|>", "<|audio_pad|> b"], audio=clips, sampling_rate=SR)
    chat = processor.apply_chat_template(CONVERSATION, tokenize=True, return_labels=True)
    torch.save({"clips": clips, "expected": dict(expected), "chat": dict(chat), "conversation": CONVERSATION},
               tmp_path / "expected.pt")
    output = run_without_package(
        f"""
        import torch
        from transformers import AutoProcessor
        saved = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=False)
        processor = AutoProcessor.from_pretrained({str(tmp_path / "processor")!r}, trust_remote_code=True)
        assert type(processor).__name__ == "MoEAudioProcessor"
        out = processor(text=["a <|audio_pad|>", "<|audio_pad|> b"], audio=saved["clips"], sampling_rate=16000)
        for key, value in saved["expected"].items():
            assert torch.equal(out[key], value), key
        chat = processor.apply_chat_template(saved["conversation"], tokenize=True, return_labels=True)
        for key, value in saved["chat"].items():
            assert torch.equal(torch.as_tensor(chat[key]), torch.as_tensor(value)), key
        print("OK")
        """,
        cwd=tmp_path,
    )
    assert output.strip().endswith("OK")
    assert type(AutoProcessor.from_pretrained(tmp_path / "processor", trust_remote_code=True)) is MoEAudioProcessor


def test_decode_passes_through_to_the_tokenizer(processor):
    ids = processor.tokenizer("high or low")["input_ids"]
    assert processor.decode(ids) == processor.tokenizer.decode(ids) == "high or low"
    assert processor.batch_decode([ids, ids]) == ["high or low"] * 2
