"""Every configuration mistake is a clear error that names the field and the fix."""

import pytest

from modeling_moe_audio import MoEAudioConfig
from modeling_moe_audio.presets import load_config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_experts": 4, "num_experts_per_tok": 5}, "num_experts_per_tok=5 is larger than num_experts=4"),
        ({"adapter_type": "sparse"}, r"adapter_type='sparse' is unknown: use one of \('moe', 'dense'\)"),
        ({"expert_intermediate_size": 0}, "expert_intermediate_size=0 must be a positive integer"),
        ({"dense_intermediate_size": -8}, "dense_intermediate_size=-8 must be a positive integer"),
        ({"audio_hidden_size": 0}, "audio_hidden_size=0 must be a positive integer"),
        ({"num_experts": 0}, "num_experts=0 must be a positive integer"),
        ({"shared_expert_intermediate_size": -1}, "shared_expert_intermediate_size=-1 must be >= 0"),
        ({"semantic_vocab_size": -3}, "semantic_vocab_size=-3 must be >= 0"),
        ({"frame_stacking_factor": 7}, "frame_stacking_factor=7 does not divide the encoder's 1500 frames"),
        ({"router_aux_loss_coef": -0.1}, "router_aux_loss_coef=-0.1 must be >= 0"),
        ({"router_jitter_noise": 1.5}, "router_jitter_noise=1.5 must be below 1"),
        ({"audio_token_id": 151936}, "audio_token_id=151936 is outside the language model's vocabulary"),
        ({"audio_start_token_id": -1}, "audio_start_token_id=-1 is outside the language model's vocabulary"),
        ({"audio_config": {"model_type": "llama"}}, "audio_config must be a Whisper config"),
    ],
)
def test_invalid_config_raises_a_clear_error(overrides, message):
    with pytest.raises(Exception, match=message):
        MoEAudioConfig(**overrides)


def test_wrong_field_type_is_rejected():
    with pytest.raises(Exception, match="num_experts"):
        MoEAudioConfig(num_experts="eight")


def test_invalid_override_of_a_preset_is_caught():
    with pytest.raises(ValueError, match="num_experts_per_tok=9"):
        load_config("tiny", num_experts_per_tok=9)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(FileNotFoundError, match="paper-moe, paper-dense|paper-dense, paper-moe"):
        load_config("no-such-preset")


def test_defaults_are_the_paper_model():
    config = MoEAudioConfig()
    assert config.text_config.model_type == "qwen3" and config.text_config.hidden_size == 2048
    assert config.audio_config.d_model == 1280 and config.stacked_audio_size == 5120
    assert (config.num_experts, config.num_experts_per_tok, config.expert_intermediate_size) == (8, 4, 1280)
    assert config.shared_expert_intermediate_size == 10240 and config.audio_hidden_size == 2560
    assert config.tie_word_embeddings is True  # Qwen3-1.7B ties its embeddings
