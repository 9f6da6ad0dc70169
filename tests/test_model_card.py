"""The card written into checkpoints: valid model-card metadata, real numbers, a usage snippet that runs."""

import re

from huggingface_hub import ModelCard

from modeling_moe_audio.checkpoints.model_card import write_model_card
from modeling_moe_audio.checkpoints.parameters import count_parameters
from modeling_moe_audio.presets import load_config

from remote_code import run_without_package


def test_card_metadata_and_numbers_come_from_the_checkpoint(tiny_checkpoint_copy):
    config = load_config("tiny-4s")  # the checkpoint's
    assert (tiny_checkpoint_copy / "README.md").is_file(), "init writes a card"
    path = write_model_card(tiny_checkpoint_copy, repo_id="someone/tiny-moe", base_models=["Qwen/Qwen3-1.7B"],
                            datasets=["someone/audio-qa"], training_summary="Trained for 3 steps.",
                            eval_results={"accuracy": 0.75})
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "audio-text-to-text"
    assert data["base_model"] == ["Qwen/Qwen3-1.7B"] and data["datasets"] == ["someone/audio-qa"]
    assert data["license"] == "apache-2.0" and "custom_code" in data["tags"]
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.75
    counts = count_parameters(config)
    assert f"{counts['adapter_total_params']:,} in total, {counts['adapter_active_params']:,} active" in card.text
    assert "8 routed SiLU experts of width 24, top-4" in card.text
    assert "Trained for 3 steps." in card.text and "@inproceedings{lei2026moeadapter" in card.text
    assert 'from_pretrained("someone/tiny-moe", trust_remote_code=True)' in card.text


def test_usage_snippet_runs_as_written(tiny_checkpoint, tmp_path):
    card = ModelCard.load(tiny_checkpoint / "README.md")
    snippet = re.search(r"```python\n(.*?)```", card.text, re.DOTALL).group(1)
    assert str(tiny_checkpoint) in snippet  # a local card names its folder; a pushed one its repo id
    printed = run_without_package(snippet, cwd=tmp_path)
    assert printed.startswith("[") and printed.strip().endswith("]")


def test_dense_card_says_dense(tiny_dense_checkpoint):
    card = ModelCard.load(tiny_dense_checkpoint / "README.md")
    assert "dense MLP 48 -> 384 -> LLM width" in card.text and "dense-adapter" in card.data.tags
