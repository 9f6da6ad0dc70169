"""`moe-audio init --llm ... --audio-encoder ...`: a checkpoint from a pretrained causal LM and Whisper model."""

import subprocess
import sys
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

from remote_code import run_without_package


MOE_AUDIO = str(Path(sys.executable).parent / "moe-audio")
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
    result = subprocess.run([MOE_AUDIO, "init", "--llm", str(llm), "--audio_encoder", str(whisper),
                             "--config", "tiny", "--output_dir", str(output)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr

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


def test_llm_and_encoder_go_together(tmp_path):
    result = subprocess.run([MOE_AUDIO, "init", "--llm", "x", "--output_dir", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--llm and --audio_encoder go together" in result.stderr
