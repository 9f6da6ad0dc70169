"""The package as installed: a lazy import, registration on first use, and a wheel that works outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
# What building the wheel reads; anything setup.cfg maps in that is missing here makes the wheel test fail.
BUILD_INPUTS = ["setup.cfg", "pyproject.toml", "README.md", "model_card.md", "modeling_moe_audio", "configuration",
                "processing"]


def run(args, cwd, timeout=300):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(args, cwd=cwd, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def test_import_and_help_load_neither_torch_nor_transformers(tmp_path):
    code = """
import sys
import modeling_moe_audio
from modeling_moe_audio.commands.main import main
try:
    main(["--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print(sorted(name for name in ("torch", "transformers") if name in sys.modules))
"""
    out = run([sys.executable, "-c", code], cwd=tmp_path)
    assert "params" in out and "init" in out  # the help text came out
    assert out.strip().splitlines()[-1] == "[]"


def test_first_use_of_a_class_registers_it_for_the_auto_classes_and_save_pretrained(tmp_path):
    code = """
import modeling_moe_audio
from transformers import AutoConfig, AutoModelForCausalLM
from modeling_moe_audio import MoEAudioForCausalLM, MoEAudioConfig
assert isinstance(AutoConfig.for_model("moe_audio"), MoEAudioConfig)
assert MoEAudioForCausalLM._auto_class == "AutoModelForCausalLM"
assert MoEAudioConfig._auto_class == "AutoConfig"
print(AutoModelForCausalLM._model_mapping[MoEAudioConfig].__name__)
"""
    assert run([sys.executable, "-c", code], cwd=tmp_path).strip() == "MoEAudioForCausalLM"


def test_register_without_naming_a_class(tmp_path):
    code = """
import modeling_moe_audio
modeling_moe_audio.register()
from transformers import AutoConfig
print(type(AutoConfig.for_model("moe_audio")).__name__)
"""
    assert run([sys.executable, "-c", code], cwd=tmp_path).strip() == "MoEAudioConfig"


def test_unknown_attribute_is_an_attribute_error():
    import modeling_moe_audio

    with pytest.raises(AttributeError, match="no attribute 'MoEAudioNothing'"):
        modeling_moe_audio.MoEAudioNothing


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_init_and_params_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves no build/ or *.egg-info in the checkout
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    # No build isolation and no index: setuptools and wheel come from this environment (the `test` extra).
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(tmp_path / "dist"), str(source)], cwd=tmp_path)
    wheel, = (tmp_path / "dist").glob("moe_audio-*.whl")

    # A fresh venv that sees this environment's packages (torch, transformers, ...: no download) through a .pth
    # file, which adds them after the venv's own site-packages, so the wheel's copy of the package comes first.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    venv_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=tmp_path).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (venv_site / "test-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = run([str(python), "-c", "import modeling_moe_audio.presets as p; print(p.RESOURCES)"], cwd=outside)
    assert Path(where.strip()) == (venv_site / "modeling_moe_audio").resolve()

    moe_audio = str(venv / "bin" / "moe-audio")
    run([moe_audio, "init", "--config", "tiny", "--output_dir", str(outside / "m")], cwd=outside)
    written = {path.name for path in (outside / "m").iterdir()}
    assert {"config.json", "model.safetensors", "configuration_moe_audio.py", "modeling_moe_audio.py",
            "processing_moe_audio.py", "tokenizer.json", "processor_config.json", "README.md"} <= written, written
    assert json.loads((outside / "m" / "config.json").read_text())["model_type"] == "moe_audio"
    assert "moe-audio" in (outside / "m" / "README.md").read_text()  # the card, from the shipped template

    counts = json.loads(run([moe_audio, "params", "paper-moe"], cwd=outside))
    assert counts["adapter_total_params"] == 94_406_656 and counts["adapter_active_params"] == 70_813_696
