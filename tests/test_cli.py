"""The `moe-audio` console script: `params` and `init`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    from modeling_moe_audio.parameters import count_parameters
    from modeling_moe_audio.presets import load_config

    counts = {p.stem: count_parameters(load_config(p)) for p in PRESETS.glob("ablation-*.json")}
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
    half, double = counts["ablation-expert-width-half"], counts["ablation-expert-width-double"]
    assert half["adapter_total_params"] == paper["adapter_total_params"] - 4 * expert
    assert double["adapter_total_params"] == paper["adapter_total_params"] + 8 * expert
    assert counts["ablation-8-choose-1"]["adapter_active_params"] == paper["adapter_active_params"] - 3 * expert
    assert counts["ablation-no-balance-loss"]["adapter_total_params"] == paper["adapter_total_params"]


def test_params_of_an_unknown_config_is_a_clear_error():
    result = moe_audio("params", "nope.json", check=False)
    assert result.returncode != 0
    assert "No configuration file 'nope.json'" in result.stderr and "paper-moe" in result.stderr


def test_init_writes_a_checkpoint_that_loads_without_the_package(tmp_path):
    output = tmp_path / "tiny-moe"
    moe_audio("init", "--config", str(PRESETS / "tiny.json"), "--output", str(output))
    assert (output / "model.safetensors").is_file() and (output / "modeling_moe_audio.py").is_file()
    config = json.loads((output / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    printed = run_without_package(
        f"""
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        for auto in (AutoConfig, AutoModel, AutoModelForCausalLM):
            print(type(auto.from_pretrained({str(output)!r}, trust_remote_code=True)).__name__)
        """,
        cwd=tmp_path,
    )
    assert printed.split() == ["MoEAudioConfig", "MoEAudioModel", "MoEAudioForCausalLM"]


def test_init_never_overwrites_without_being_asked(tmp_path):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    result = moe_audio("init", "--config", "tiny", "--output", str(output), check=False)
    assert result.returncode != 0 and "not empty" in result.stderr and "--overwrite" in result.stderr
    assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]
    moe_audio("init", "--config", "tiny", "--output", str(output), "--overwrite")
    assert (output / "model.safetensors").is_file() and (output / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("seed", [0, 1])
def test_init_is_deterministic_per_seed(tmp_path, seed):
    from safetensors.torch import load_file

    paths = []
    for run in range(2):
        path = tmp_path / f"run{run}"
        moe_audio("init", "--config", "tiny", "--output", str(path), "--seed", str(seed))
        paths.append(load_file(path / "model.safetensors"))
    assert all((paths[0][k] == paths[1][k]).all() for k in paths[0])
