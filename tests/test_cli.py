"""The `moe-audio` console script: `params` and `init`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from remote_code import run_without_package


MOE_AUDIO = str(Path(sys.executable).parent / "moe-audio")
PRESETS = Path(__file__).resolve().parent.parent / "configuration"


def moe_audio(*args, check=True):
    result = subprocess.run([MOE_AUDIO, *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def test_params_reproduces_table_4():
    moe = json.loads(moe_audio("params", str(PRESETS / "paper-moe.json")).stdout)
    dense = json.loads(moe_audio("params", "paper-dense").stdout)
    assert moe["adapter_total_params_millions"] == 94.4
    assert moe["adapter_active_params_millions"] == 70.8
    assert dense["adapter_total_params_millions"] == dense["adapter_active_params_millions"] == 94.4
    # Same frontend, encoder and LLM: the models differ only in the adapter.
    assert moe["model_total_params"] - moe["adapter_total_params"] == (
        dense["model_total_params"] - dense["adapter_total_params"]
    )
    assert moe["frontend_params"] == 5120 * 2 + 5120 * 2560 + 2560 + 2560 * 2  # LN -> Linear -> SiLU -> LN


def test_params_of_the_ablations_follow_their_shapes():
    from modeling_moe_audio.checkpoints.parameters import count_parameters
    from modeling_moe_audio.presets import ABLATIONS, load_config

    counts = {f"ablation-{name}": count_parameters(load_config(f"ablation-{name}")) for name in ABLATIONS}
    paper = count_parameters(load_config("paper-moe"))
    expert = (2560 + 2048) * 1280  # one routed expert: 2560 -> 1280 -> 2048
    router_row = 2560
    assert counts["ablation-16-choose-4"]["adapter_total_params"] == (
        paper["adapter_total_params"] + 8 * expert + 8 * router_row
    )
    assert counts["ablation-16-choose-4"]["adapter_active_params"] == paper["adapter_active_params"] + 8 * router_row
    assert counts["ablation-4-choose-2"]["adapter_total_params"] == (
        paper["adapter_total_params"] - 4 * expert - 4 * router_row
    )
    half, double = counts["ablation-8-choose-4-width-half"], counts["ablation-8-choose-4-width-double"]
    assert half["adapter_total_params"] == paper["adapter_total_params"] - 4 * expert
    assert double["adapter_total_params"] == paper["adapter_total_params"] + 8 * expert
    assert counts["ablation-8-choose-1"]["adapter_active_params"] == paper["adapter_active_params"] - 3 * expert
    assert counts["ablation-8-choose-4-no-balance-loss"]["adapter_total_params"] == paper["adapter_total_params"]


def test_params_of_an_unknown_config_is_a_clear_error():
    result = moe_audio("params", "nope.json", check=False)
    assert result.returncode != 0
    assert "No configuration file 'nope.json'" in result.stderr and "paper-moe" in result.stderr


def test_init_writes_a_checkpoint_that_loads_without_the_package(tmp_path):
    output = tmp_path / "tiny-moe"
    moe_audio("init", "--config", str(PRESETS / "tiny.json"), "--output_dir", str(output))
    for name in ("model.safetensors", "modeling_moe_audio.py", "processing_moe_audio.py", "chat_template.jinja"):
        assert (output / name).is_file(), name
    config = json.loads((output / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert (config["audio_token_id"], config["text_config"]["eos_token_id"]) == (509, 508)
    soundfile.write(tmp_path / "clip.wav", np.random.default_rng(0).standard_normal((44100 * 3, 2)) * 0.1, 44100)
    printed = run_without_package(
        f"""
        import numpy as np
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor
        for auto in (AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor):
            loaded = auto.from_pretrained({str(output)!r}, trust_remote_code=True)
            print(type(loaded).__name__)
        processor, model = loaded, AutoModelForCausalLM.from_pretrained({str(output)!r}, trust_remote_code=True)
        rng = np.random.default_rng(1)
        short, long = rng.standard_normal(16000 * 4) * 0.1, rng.standard_normal(16000 * 37) * 0.1
        conversations = [
            [{{"role": "user", "content": [{{"type": "audio", "audio": short, "sampling_rate": 16000}}, {{"type": "text", "text": "and"}},
                                          {{"type": "audio", "audio": long, "sampling_rate": 16000}}, {{"type": "text", "text": "Same?"}}]}}],
            [{{"role": "user", "content": [{{"type": "audio", "path": {str(tmp_path / "clip.wav")!r}}},
                                          {{"type": "text", "text": "High or low?"}}]}}],
            [{{"role": "user", "content": "No audio in this one."}}],
        ]
        inputs = processor.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                               add_generation_prompt=True)
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        print(inputs["input_features"].shape[0], len(answers), all(isinstance(a, str) for a in answers))
        """,
        cwd=tmp_path,
    )
    lines = printed.strip().splitlines()
    assert lines[:4] == ["MoEAudioConfig", "MoEAudioModel", "MoEAudioForCausalLM", "MoEAudioProcessor"]
    assert lines[4] == "4 3 True"  # 4 s, 37 s (two windows) and the 3 s file: four windows; three answers


def test_init_never_overwrites_without_being_asked(tmp_path):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    result = moe_audio("init", "--config", "tiny", "--output_dir", str(output), check=False)
    assert result.returncode != 0 and "not empty" in result.stderr and "--overwrite" in result.stderr
    assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]
    moe_audio("init", "--config", "tiny", "--output_dir", str(output), "--overwrite")
    assert (output / "model.safetensors").is_file() and (output / "notes.txt").read_text() == "keep me"


def test_init_without_a_tokenizer_writes_the_model_only(tmp_path):
    result = moe_audio("init", "--config", str(PRESETS / "tiny.json"), "--output_dir",
                       str(tmp_path / "a"), "--tokenizer", str(PRESETS.parent / "processing" / "tiny-tokenizer"))
    assert "and its processor" in result.stdout
    custom = tmp_path / "custom.json"
    custom.write_text((PRESETS / "tiny.json").read_text())
    result = moe_audio("init", "--config", str(custom), "--output_dir", str(tmp_path / "b"))
    assert "no processor" in result.stdout
    assert not (tmp_path / "b" / "processor_config.json").exists() and (tmp_path / "b" / "config.json").is_file()


@pytest.mark.parametrize("seed", [0, 1])
def test_init_is_deterministic_per_seed(tmp_path, seed):
    from safetensors.torch import load_file

    paths = []
    for run in range(2):
        path = tmp_path / f"run{run}"
        moe_audio("init", "--config", "tiny", "--output_dir", str(path), "--seed", str(seed))
        paths.append(load_file(path / "model.safetensors"))
    assert all((paths[0][k] == paths[1][k]).all() for k in paths[0])
