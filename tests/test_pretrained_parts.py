"""`moe-audio init --llm ... --audio-encoder ...`: a checkpoint from a pretrained causal LM and Whisper model."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from helpers import moe_audio, moe_audio_error
from remote_code import run_without_package


WORDS = ["hello", "high", "low", "music", "speech", "sound", "what", "is", "this", "?", "yes", "no"]


def save_llm(folder: Path, tied: bool) -> Path:
    """A tiny Qwen3 release in the Hub's layout: config, safetensors weights, a tokenizer without audio tokens."""
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="[UNK]")
    torch.manual_seed(1)
    config = Qwen3Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=tied)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_whisper(folder: Path) -> Path:
    """A tiny Whisper release: the full encoder-decoder model (keys `model.encoder.*`) and its feature extractor."""
    torch.manual_seed(2)
    config = WhisperConfig(d_model=24, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=80,
                           max_source_positions=200, vocab_size=100, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1)
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80, chunk_length=4).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return save_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_components_are_loaded_and_the_tokenizer_grows(tmp_path, whisper, tied):
    llm = save_llm(tmp_path / "llm", tied)
    output = tmp_path / "model"
    moe_audio("init", "--llm", llm, "--audio_encoder", whisper, "--config", "tiny", "--output_dir", output)

    source_llm = AutoModelForCausalLM.from_pretrained(llm)
    source_whisper = WhisperForConditionalGeneration.from_pretrained(whisper)
    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)

    # The tokenizer grew by exactly the three audio tokens, and the embeddings with it.
    original = AutoTokenizer.from_pretrained(llm)
    assert len(processor.tokenizer) == len(original) + 3
    ids = processor.audio_special_token_ids
    assert sorted(ids.values()) == [len(original), len(original) + 1, len(original) + 2]
    assert model.config.audio_token_id == ids["audio_token_id"]
    assert model.get_input_embeddings().num_embeddings == len(original) + 3

    # Every pretrained weight arrived unchanged.
    source_decoder = source_llm.get_decoder().state_dict()
    for name, value in model.model.language_model.state_dict().items():
        expected = source_decoder[name]
        torch.testing.assert_close(value[: expected.shape[0]], expected, rtol=0, atol=0, msg=name)
    for name, value in model.model.audio_tower.state_dict().items():
        torch.testing.assert_close(value, source_whisper.model.encoder.state_dict()[name], rtol=0, atol=0, msg=name)
    # Tying as the LLM had it.
    assert model.config.tie_word_embeddings is tied
    shares_storage = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert shares_storage is tied
    if not tied:
        lm_head = source_llm.get_output_embeddings().weight
        torch.testing.assert_close(model.lm_head.weight[: lm_head.shape[0]], lm_head, rtol=0, atol=0)
    assert model.config.text_config.hidden_size == 32 and model.config.audio_config.d_model == 24
    assert model.config.num_experts == 8  # the adapter comes from --config

    # It generates, from a conversation, in a process without the package.
    printed = run_without_package(
        f"""
        import numpy as np
        from transformers import AutoModelForCausalLM, AutoProcessor
        model = AutoModelForCausalLM.from_pretrained({str(output)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(output)!r}, trust_remote_code=True)
        audio = (np.random.default_rng(0).standard_normal(16000 * 6) * 0.1).astype(np.float32)
        conversation = [{{"role": "user", "content": [{{"type": "audio", "audio": audio, "sampling_rate": 16000}},
                                                      {{"type": "text", "text": "what is this ?"}}]}}]
        inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                               add_generation_prompt=True)
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        print(inputs["input_features"].shape[0], out.shape[1] - inputs["input_ids"].shape[1])
        """,
        cwd=tmp_path,
    )
    assert printed.split() == ["2", "4"]  # 6 s in 4 s windows: two windows; four new tokens


def test_llm_and_encoder_go_together(tmp_path, capsys):
    stderr = moe_audio_error(capsys, "init", "--llm", "x", "--output_dir", tmp_path / "o")
    assert "--llm and --audio_encoder go together" in stderr


def test_shorter_windows_keep_whisper_s_first_positions_and_the_processor_cuts_clips_to_them(tmp_path, whisper):
    llm = save_llm(tmp_path / "llm", tied=True)
    output = tmp_path / "model"
    # The tiny Whisper release has 4 s windows (200 encoder frames); 2 s ones keep its first 100 positions.
    moe_audio("init", "--llm", llm, "--audio_encoder", whisper, "--config", "tiny", "--window_seconds", 2,
              "--output_dir", output)

    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    source = WhisperForConditionalGeneration.from_pretrained(whisper).model.encoder.state_dict()
    for name, value in model.model.audio_tower.state_dict().items():
        expected = source[name][:100] if name == "embed_positions.weight" else source[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
    assert model.config.audio_config.max_source_positions == 100
    assert model.config.audio_tokens_per_window == 25
    assert (processor.feature_extractor.chunk_length, processor.feature_extractor.n_samples) == (2, 32000)

    # A 3 s clip: two 2 s windows, the second holding 1 s (100 mel frames, 50 encoder frames: 13 tokens).
    audio = (torch.randn(48000, generator=torch.Generator().manual_seed(0)) * 0.1).numpy()
    inputs = processor(text=f"what is this ? {processor.audio_token}", audio=[audio], sampling_rate=16000)
    assert tuple(inputs["input_features"].shape) == (2, 80, 200)
    assert inputs["input_features_mask"].sum(-1).tolist() == [200, 100]
    assert (inputs["input_ids"] == model.config.audio_token_id).sum() == 25 + 13
    with torch.no_grad():
        output_ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output_ids.shape[1] == inputs["input_ids"].shape[1] + 3


def test_a_random_model_takes_a_shorter_window_too(tmp_path):
    output = tmp_path / "model"
    moe_audio("init", "--config", "tiny", "--window_seconds", 6, "--output_dir", output)
    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    assert model.config.audio_config.max_source_positions == 300
    assert model.model.audio_tower.embed_positions.weight.shape[0] == 300
    assert processor.feature_extractor.n_samples == 6 * 16000
    inputs = processor(text=processor.audio_token, audio=[torch.zeros(16000 * 7).numpy()], sampling_rate=16000)
    assert tuple(inputs["input_features"].shape) == (2, 80, 600)  # 7 s: a full 6 s window and 1 s
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("seconds, problem", [
    (3, "choose one of 2, 4"),  # 150 encoder frames do not stack by 4
    (6, "at most the encoder's 4 s"),
    (0, "choose one of 2, 4"),
])
def test_a_window_that_cannot_be_used_is_refused_with_the_valid_choices(tmp_path, whisper, capsys, seconds, problem):
    llm = save_llm(tmp_path / "llm", tied=True)
    stderr = moe_audio_error(capsys, "init", "--llm", llm, "--audio_encoder", whisper, "--config", "tiny",
                             "--window_seconds", seconds, "--output_dir", tmp_path / "model")
    assert f"window_seconds={seconds}" in stderr and problem in stderr
    assert "loading the language model" not in stderr  # refused before any weights are loaded
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())
