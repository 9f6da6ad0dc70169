"""Build the tiny MoE model, run one training-style forward pass and greedy generation on random audio features.

    python examples/quickstart.py
"""

import torch

from modeling_moe_audio import MoEAudioForCausalLM, num_audio_tokens
from modeling_moe_audio.presets import load_config


def main() -> None:
    torch.manual_seed(0)
    config = load_config("tiny")
    model = MoEAudioForCausalLM(config).eval()

    mel_frames = 1000  # 10 s of audio in a 30 s Whisper window
    features = torch.randn(1, config.audio_config.num_mel_bins, 3000)
    features_mask = torch.zeros(1, 3000, dtype=torch.long)
    features_mask[0, :mel_frames] = 1
    audio_tokens = int(num_audio_tokens(mel_frames, config.frame_stacking_factor))
    input_ids = torch.tensor([[1, 2] + [config.audio_token_id] * audio_tokens + [3, 4]])
    inputs = dict(input_ids=input_ids, input_features=features, input_features_mask=features_mask)

    out = model(**inputs, labels=input_ids, output_router_logits=True)
    tokens_per_expert = torch.bincount(out.selected_experts.flatten(), minlength=config.num_experts)
    print(f"loss {out.loss.item():.3f} (aux loss {out.aux_loss.item():.3f}) over {audio_tokens} audio tokens")
    print(f"tokens routed to each expert: {tokens_per_expert.tolist()}")
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print(f"generated ids: {generated[0, input_ids.shape[1]:].tolist()}")


if __name__ == "__main__":
    main()
