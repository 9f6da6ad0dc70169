"""`moe-audio update-code`: a checkpoint written by moe-audio 0.1.0 gets the installed code, same weights, same logits.

The 0.1.0 checkpoint is real: the `tiny-4s` model and processor saved by the current code, with the three code files
0.1.0 wrote (`tests/fixtures/moe-audio-0.1.0-code`, byte for byte those of release commit acfd25b) in place of the
current ones, and the shared expert's weights under 0.1.0's positional names (`shared_expert.0.weight`, ...); the
tensors, config and processor files are the same in both versions. Loading checks run in fresh processes where the
package cannot be imported, each with its own empty remote-code module cache.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version

import modeling_moe_audio
from modeling_moe_audio import MoEAudioForCausalLM, MoEAudioModel, MoEAudioProcessor
from modeling_moe_audio.checkpoints.build import init_checkpoint
from modeling_moe_audio.checkpoints.code_update import RELEASED_CODE, TOLERANCE, update_checkpoint_code
from modeling_moe_audio.hub.publish import CODE_FILES, checkpoint_files, push_checkpoint
from modeling_moe_audio.presets import load_config, shipped_tokenizer
from modeling_moe_audio.training.stages import add_lora

from helpers import moe_audio, moe_audio_process, moe_audio_result, use_positional_shared_expert_names
from remote_code import PRELUDE


pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

OLD_CODE = Path(__file__).resolve().parent / "fixtures" / "moe-audio-0.1.0-code"
PACKAGE = Path(modeling_moe_audio.__file__).resolve().parent
# transformers 5.24 passes `cache=` where 0.1.0's output class only knows `past_key_values`; 5.25 accepts the old
# field name again (measured: 0.1.0's checkpoint runs there).
OLD_CODE_CRASHES = Version("5.24.0.dev0") <= Version(transformers.__version__) < Version("5.25.0.dev0")
PROMPT = "Listen: <|audio_pad|> Is the voice high or low?"
AUDIO = (0.5 * np.sin(np.linspace(0, 2200 * np.pi, 16000))).astype(np.float32)  # 1 s, 1.1 kHz


def write_checkpoint(folder: Path, processor: bool = True) -> Path:
    preset = "tiny-4s"
    init_checkpoint(load_config(preset), folder, tokenizer=shipped_tokenizer(preset) if processor else None, seed=0)
    return folder


def put_old_code(folder: Path) -> None:
    """What 0.1.0 wrote: its three code files, or without a processor its configuration and modeling files, and its
    weight names (the shared expert's layers by position)."""
    for name in CODE_FILES:
        if (folder / name).exists():
            shutil.copyfile(OLD_CODE / name, folder / name)
    use_positional_shared_expert_names(folder)


def files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def backups(folder: Path) -> list[Path]:
    return sorted(folder.glob("code-backup-*"))


def run_fresh(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a new process where moe-audio cannot be imported, with an empty remote-code module cache."""
    modules = cwd / f"modules-{len(list(cwd.glob('modules-*')))}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(modules)}
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# Loads `folder` with the three Auto classes and its own code; saves the processor's batch, logits, hidden states.
LOAD_WITH_AUTO_CLASSES = """
import numpy as np
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor

processor = AutoProcessor.from_pretrained({folder!r}, trust_remote_code=True)
batch = processor(text=[{prompt!r}], audio=[np.load("audio.npy")], sampling_rate=16000)
print(type(processor).__name__)
model = AutoModelForCausalLM.from_pretrained({folder!r}, trust_remote_code=True).eval()
print(type(model).__name__)
base = AutoModel.from_pretrained({folder!r}, trust_remote_code=True).eval()
print(type(base).__name__)
with torch.no_grad():
    hidden = base(**batch).last_hidden_state
    logits = model(**batch).logits
torch.save({{"batch": dict(batch), "logits": logits, "hidden": hidden}}, {out!r})
"""


def outputs_with_own_code(folder: Path, cwd: Path) -> dict:
    out = cwd / f"outputs-{len(list(cwd.glob('outputs-*.pt')))}.pt"
    np.save(cwd / "audio.npy", AUDIO)
    result = run_fresh(LOAD_WITH_AUTO_CLASSES.format(folder=str(folder), prompt=PROMPT, out=str(out)), cwd)
    if result.returncode != 0:
        raise AssertionError(f"loading {folder} with its own code failed:\n{result.stderr[-4000:]}")
    assert result.stdout.split() == ["MoEAudioProcessor", "MoEAudioForCausalLM", "MoEAudioModel"]
    return torch.load(out, weights_only=False)


def outputs_with_package(folder: Path) -> dict:
    processor = MoEAudioProcessor.from_pretrained(folder)
    batch = processor(text=[PROMPT], audio=[AUDIO], sampling_rate=16000)
    with torch.no_grad():
        return {
            "batch": dict(batch),
            "logits": MoEAudioForCausalLM.from_pretrained(folder).eval()(**batch).logits,
            "hidden": MoEAudioModel.from_pretrained(folder).eval()(**batch).last_hidden_state,
        }


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp("old") / "tiny")
    put_old_code(folder)
    return folder


@pytest.fixture(scope="module")
def updated(old_checkpoint, tmp_path_factory):
    """A copy of the 0.1.0 checkpoint after `moe-audio update-code`, with what it held and computed before."""
    work = tmp_path_factory.mktemp("updated")
    folder = Path(shutil.copytree(old_checkpoint, work / "tiny"))
    before = files(folder)
    # The reference: 0.1.0's own code where it runs; where it crashes, the package's classes on the same weights.
    expected = outputs_with_package(folder) if OLD_CODE_CRASHES else outputs_with_own_code(folder, work)
    result = moe_audio_process("update-code", folder)  # the command's one run in a process of its own
    assert result.returncode == 0, result.stderr[-4000:]
    return {"folder": folder, "work": work, "before": before, "expected": expected, "stdout": result.stdout}


def test_the_fixture_is_the_code_0_1_0_wrote():
    hashes = {name: hashlib.sha256((OLD_CODE / name).read_bytes()).hexdigest() for name in CODE_FILES}
    assert hashes == RELEASED_CODE["0.1.0"]
    # Otherwise there is nothing to update and the tests below would prove nothing.
    current = hashlib.sha256((PACKAGE / "modeling_moe_audio.py").read_bytes()).hexdigest()
    assert current != hashes["modeling_moe_audio.py"], "the installed modeling_moe_audio.py is still 0.1.0's"
    for name in CODE_FILES:
        shown = subprocess.run(["git", "show", f"acfd25b:modeling_moe_audio/{name}"], cwd=OLD_CODE, capture_output=True)
        if shown.returncode == 0:  # a clone with history: the fixture is exactly the release's file
            assert shown.stdout == (OLD_CODE / name).read_bytes(), name


# Slow (a fresh process): the same run of the old code is update-code's first probe, whose outcome (the crash on
# 5.24, or the run) test_update_code_replaces_the_code_keeps_weights_and_logits checks in the command's output.
@pytest.mark.slow
def test_old_checkpoint_crashes_on_transformers_5_24_and_runs_before(old_checkpoint, tmp_path):
    np.save(tmp_path / "audio.npy", AUDIO)
    code = LOAD_WITH_AUTO_CLASSES.format(folder=str(old_checkpoint), prompt=PROMPT, out=str(tmp_path / "out.pt"))
    result = run_fresh(code, tmp_path)
    if OLD_CODE_CRASHES:
        assert result.returncode != 0
        assert "unexpected keyword argument 'cache'" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-4000:]


def test_update_code_replaces_the_code_keeps_weights_and_logits(updated):
    folder, before = updated["folder"], updated["before"]
    stdout = updated["stdout"]
    assert "written by moe-audio 0.1.0" in stdout
    # The expert kernel changed since 0.1.0 (0.5.0 weights the experts' hidden units, not their outputs), so the
    # logits agree to rounding, within the command's tolerance, not bit for bit.
    difference = re.search(r"max abs difference \(tolerance 1e-06\): logits (\S+), hidden (\S+)\n", stdout)
    assert difference and all(float(value) <= TOLERANCE for value in difference.groups()), stdout
    if OLD_CODE_CRASHES:
        assert "the checkpoint's own code cannot run on transformers" in stdout and "'cache'" in stdout
    else:
        assert "probe before: the checkpoint's own code" in stdout

    after = files(folder)
    [backup] = backups(folder)
    assert f"old files kept in {backup}" in stdout
    changed = [name for name in CODE_FILES if before[name] != (PACKAGE / name).read_bytes()]
    assert "modeling_moe_audio.py" in changed
    assert f": {', '.join(changed)}\n" in stdout
    for name in CODE_FILES:
        assert after[name] == (PACKAGE / name).read_bytes()
    # 0.1.0 wrote complete auto_map entries, so only the code changed; every weight byte is the same.
    assert sorted(path.name for path in backup.iterdir()) == changed
    for name in changed:
        assert (backup / name).read_bytes() == before[name] == (OLD_CODE / name).read_bytes()
    unchanged = {name: data for name, data in after.items() if name not in changed and "code-backup-" not in name}
    assert unchanged == {name: data for name, data in before.items() if name not in changed}
    assert after["model.safetensors"] == before["model.safetensors"]
    assert not list(folder.glob(".*.tmp"))

    config = json.loads(after["config.json"])
    assert config["auto_map"] == {
        "AutoConfig": "configuration_moe_audio.MoEAudioConfig",
        "AutoModel": "modeling_moe_audio.MoEAudioModel",
        "AutoModelForCausalLM": "modeling_moe_audio.MoEAudioForCausalLM",
        "AutoModelForMultimodalLM": "modeling_moe_audio.MoEAudioForCausalLM",
    }
    for name in ("processor_config.json", "tokenizer_config.json"):
        assert json.loads(after[name])["auto_map"] == {"AutoProcessor": "processing_moe_audio.MoEAudioProcessor"}

    # Independently of the command's own check: a fresh process without the package, the three Auto classes.
    loaded = outputs_with_own_code(folder, updated["work"])
    expected = updated["expected"]
    assert loaded["batch"].keys() == expected["batch"].keys()
    for key in loaded["batch"]:
        assert torch.equal(loaded["batch"][key], expected["batch"][key]), key
    torch.testing.assert_close(loaded["logits"], expected["logits"], rtol=0, atol=TOLERANCE)  # the kernel's rounding
    torch.testing.assert_close(loaded["hidden"], expected["hidden"], rtol=0, atol=TOLERANCE)


def test_a_second_run_says_already_current_and_changes_nothing(updated, capsys):
    folder = updated["folder"]
    before = files(folder)
    moe_audio("update-code", folder)
    stdout = capsys.readouterr().out
    assert "is already current" in stdout and "nothing changed" in stdout
    assert files(folder) == before and len(backups(folder)) == 1


def test_push_refuses_old_code_and_never_publishes_the_backup(old_checkpoint, updated, hub):
    with pytest.raises(ValueError, match=r"differ from the installed moe-audio's \([a-z_.py, ]*modeling_moe_audio\.py"
                                         r"[a-z_.py, ]*\).* `moe-audio update-code "):
        push_checkpoint(old_checkpoint, "user/old", token="dummy")
    assert "user/old" not in hub.repos

    folder = updated["folder"]
    uploaded, excluded = checkpoint_files(folder)
    [backup] = backups(folder)
    assert excluded == sorted(f"{backup.name}/{path.name}" for path in backup.iterdir())
    commit = push_checkpoint(folder, "user/updated", token="dummy")
    published = hub.repos["user/updated"].resolve(commit.oid).files
    assert sorted(published) == sorted([".gitattributes", *uploaded])
    assert not [path for path in published if "code-backup" in path]
    for name in CODE_FILES:
        assert published[name].content == (PACKAGE / name).read_bytes()


# Slow (three probe processes): the update itself is also in test_update_code_replaces_the_code_keeps_weights_and_logits
# (there through the command, in a process of its own).
@pytest.mark.slow
def test_checkpoint_without_processor_and_with_incomplete_auto_map(tmp_path):
    folder = write_checkpoint(tmp_path / "no-processor", processor=False)
    put_old_code(folder)
    assert not (folder / "processing_moe_audio.py").exists()
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]["AutoModelForMultimodalLM"]  # as a checkpoint saved before that entry existed
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    before = files(folder)

    result = update_checkpoint_code(folder)
    assert not result.already_current and result.written_by == "written by moe-audio 0.1.0"
    changed = [name for name in CODE_FILES if not (OLD_CODE / name).read_bytes() == (PACKAGE / name).read_bytes()]
    assert result.replaced == sorted({"config.json", "processing_moe_audio.py", *changed})
    assert set(result.max_abs_diff) == {"logits", "hidden"} and max(result.max_abs_diff.values()) <= TOLERANCE
    assert result.loaded_as == ["MoEAudioForCausalLM", "MoEAudioModel"]
    assert result.weights == {"model.safetensors": hashlib.sha256(before["model.safetensors"]).hexdigest()}
    # The processing file was missing (nothing to keep); config.json and the replaced old code files are kept.
    assert sorted(path.name for path in result.backup.iterdir()) == sorted(
        {"config.json", *changed} - {"processing_moe_audio.py"}
    )
    assert (result.backup / "config.json").read_bytes() == before["config.json"]
    updated_config = json.loads((folder / "config.json").read_text())
    assert updated_config["auto_map"]["AutoModelForMultimodalLM"] == "modeling_moe_audio.MoEAudioForCausalLM"
    assert {key: value for key, value in updated_config.items() if key != "auto_map"} == {
        key: value for key, value in config.items() if key != "auto_map"
    }
    after = files(folder)
    assert after["model.safetensors"] == before["model.safetensors"]
    assert after["processing_moe_audio.py"] == (PACKAGE / "processing_moe_audio.py").read_bytes()


def test_code_that_computes_something_else_is_refused_and_put_back(tmp_path):
    folder = write_checkpoint(tmp_path / "edited")
    with open(folder / "modeling_moe_audio.py", "a") as file:  # a hand edit that changes the model's output
        file.write(textwrap.dedent("""

            _original_forward = MoEAudioForCausalLM.forward

            def _scaled_forward(self, *args, **kwargs):
                outputs = _original_forward(self, *args, **kwargs)
                outputs.logits = outputs.logits * 1.5
                return outputs

            MoEAudioForCausalLM.forward = _scaled_forward
            """))
    before = files(folder)
    with pytest.raises(ValueError, match=r"different outputs on the probe input \(max abs difference: logits "
                                         r"[0-9.e+-]+, hidden 0;.*every file was put back"):
        update_checkpoint_code(folder)
    assert files(folder) == before and not backups(folder)


def test_what_is_not_a_moe_audio_checkpoint_is_refused(old_checkpoint, tmp_path, capsys):
    result = moe_audio_result(capsys, "update-code", tmp_path / "nowhere")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'nowhere'} does not exist: pass the folder of a saved moe-audio checkpoint (the one "
        f"holding config.json and model.safetensors)."
    )

    with pytest.raises(ValueError, match=r"config\.json is a file, not a checkpoint folder: pass the folder"):
        update_checkpoint_code(old_checkpoint / "config.json")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"has no config\.json, so it is not a saved moe-audio checkpoint"):
        update_checkpoint_code(empty)

    other = tmp_path / "qwen3"
    transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8,
    )).save_pretrained(other)
    with pytest.raises(ValueError, match=r"holds a 'qwen3' model, not a moe-audio one \(config\.json model_type "
                                         r"'moe_audio'\): update-code only replaces moe-audio's own code files"):
        update_checkpoint_code(other)

    damaged = Path(shutil.copytree(old_checkpoint, tmp_path / "damaged"))
    (damaged / "config.json").write_text('{"model_type": "moe_audio",')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON .*restore config\.json"):
        update_checkpoint_code(damaged)

    no_weights = Path(shutil.copytree(old_checkpoint, tmp_path / "no-weights"))
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"has no \*\.safetensors weights"):
        update_checkpoint_code(no_weights)

    adapter = tmp_path / "lora"
    add_lora(MoEAudioForCausalLM.from_pretrained(old_checkpoint), rank=2).save_pretrained(adapter)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    base = re.escape(str(old_checkpoint))
    with pytest.raises(ValueError, match=rf"is a LoRA/PEFT adapter .*its base model's \({base}\)\. Update that "
                                         rf"checkpoint instead: `moe-audio update-code {base}`"):
        update_checkpoint_code(adapter)

    cache = tmp_path / "hub-cache"  # a snapshot of huggingface_hub's cache: files linked to shared blobs
    (cache / "blobs").mkdir(parents=True)
    snapshot = cache / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for path in old_checkpoint.iterdir():
        shutil.copyfile(path, cache / "blobs" / path.name)
        (snapshot / path.name).symlink_to(cache / "blobs" / path.name)
    with pytest.raises(ValueError, match=r"looks like a Hugging Face cache snapshot .* copy it first \(`cp -rL "):
        update_checkpoint_code(snapshot)
    assert files(cache / "blobs") == files(old_checkpoint)

    for folder in (empty, other, damaged, no_weights, adapter, snapshot):
        assert not backups(folder)
    assert (old_checkpoint / "modeling_moe_audio.py").read_bytes() == (OLD_CODE / "modeling_moe_audio.py").read_bytes()


@pytest.mark.parametrize("version, commit", [("0.2.0", "79a647d"), ("0.5.0", "6184701")])
def test_the_hashes_of_a_release_are_those_of_its_code(version, commit):
    """Releases are told apart by the hashes of their files (0.2.0: the last commit before the library layout;
    0.5.0: the commit that landed it)."""
    released = subprocess.run(["git", "-C", str(PACKAGE.parent), "cat-file", "-e", commit], capture_output=True)
    if released.returncode:
        pytest.skip(f"not a git checkout with {version}'s commit")
    for name, digest in RELEASED_CODE[version].items():
        code = subprocess.run(["git", "-C", str(PACKAGE.parent), "show", f"{commit}:modeling_moe_audio/{name}"],
                              capture_output=True, check=True).stdout
        assert hashlib.sha256(code).hexdigest() == digest
    others = [hashes for other, hashes in RELEASED_CODE.items() if other != version]
    assert RELEASED_CODE[version] not in others
