"""Bringing a checkpoint's code up to date: `update_checkpoint_code(folder)`, the library side of
`moe-audio update-code CHECKPOINT`.

A checkpoint carries the three code files of the moe-audio that wrote it, and `trust_remote_code=True` runs those,
whatever version of moe-audio is installed. So checkpoints written by 0.1.0 crash on transformers 5.24
(`unexpected keyword argument 'cache'`) until their code files are replaced. This replaces them with the installed
package's and completes the `auto_map` entries that point the Auto classes at them; it never writes a weight file
(checked by hashing every `*.safetensors` beside config.json before and after), keeps the replaced files in a
`code-backup-<time>` folder inside the checkpoint (which `moe-audio push` leaves out), and proves on a fixed probe
input that the updated checkpoint computes the same logits as before, putting everything back if not.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .files import CODE_BACKUP_PREFIX, CODE_FILES, PACKAGE_DIR


# Largest |logit difference| accepted between the old and the updated code. The same weights through the same
# operations give identical floats; this only leaves room for a reordered sum in a future version.
TOLERANCE = 1e-6

# sha256 of the code files each release wrote into checkpoints, to tell the user what they hold.
RELEASED_CODE = {
    "0.1.0": {
        "configuration_moe_audio.py": "38135e4236264fbfd0d1206701060787c9807d2d335629313e57c068ea6a2c19",
        "modeling_moe_audio.py": "18409a0cf50dfd072461ed8cdd235e8fe67afe98e311ae75a2881bc91222473f",
        "processing_moe_audio.py": "ba3be3ea064a7af1550f809bf88066f114f8e243b336fc2c89e10c3edc3ada2a",
    },
    "0.2.0": {
        "configuration_moe_audio.py": "1253888e227282775bcc7c7f83717fb218925477dac80af0e675b92173d0208a",
        "modeling_moe_audio.py": "e85aa1ad653bcd25411bc83cad2d2f0af572d966aa8cdf01b48e84b7f51c1e43",
        "processing_moe_audio.py": "d900408106245e42e221f887b87dccf7d3da3622a66b4d07e12585c6611f8901",
    },
    "0.3.0": {
        "configuration_moe_audio.py": "651774b5e1f5576a556ea307fdacdc0872e1addec4f67bcea014295484005325",
        "modeling_moe_audio.py": "43ef048f79bcd0eee9ee382e14a188811a20edce90800aa4a1d1ac8a663689dc",
        "processing_moe_audio.py": "c2073c6f181946610aeb0f2a5f8394eef0d9c0c6faea514108d976ade98a526a",
    },
    "0.4.0": {
        "configuration_moe_audio.py": "651774b5e1f5576a556ea307fdacdc0872e1addec4f67bcea014295484005325",
        "modeling_moe_audio.py": "03959f3f38d70e2e91d7a10e3b74f36b58df07e348b5003f818b5560e5340fa9",
        "processing_moe_audio.py": "c3bba5e927a5e8b52ab8eb5d62182e01406df71a312ec954a41a579810e76c85",
    },
    "0.5.0": {
        "configuration_moe_audio.py": "a47031d95c348a2cf46c342931323b69c5423a79e10b105be02033e16668013f",
        "modeling_moe_audio.py": "dfa70d1e379662dd36feff3dc6bccc2fc009336649d71225a087070e86d9dbe0",
        "processing_moe_audio.py": "8113c187894b52eb1fc586ff75ed86352d6534b93f9d8bc1076e4f749ad5a545",
    },
}

PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json")


def _auto_map_entries() -> dict[str, dict[str, str]]:
    """The `auto_map` entries each JSON file of a current checkpoint holds, named after the package's own classes."""
    from ..configuration_moe_audio import MoEAudioConfig
    from ..modeling_moe_audio import MoEAudioForCausalLM, MoEAudioModel
    from ..processing_moe_audio import MoEAudioProcessor

    def reference(cls) -> str:
        return f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}"

    processor = {"AutoProcessor": reference(MoEAudioProcessor)}
    return {
        "config.json": {
            "AutoConfig": reference(MoEAudioConfig),
            "AutoModel": reference(MoEAudioModel),
            "AutoModelForCausalLM": reference(MoEAudioForCausalLM),
            "AutoModelForMultimodalLM": reference(MoEAudioForCausalLM),
        },
        **dict.fromkeys(PROCESSOR_FILES, processor),
    }


@dataclass
class CodeUpdate:
    """What `update_checkpoint_code` found and did; `str()` is the report the command prints."""

    folder: Path
    already_current: bool
    written_by: str
    replaced: list[str] = field(default_factory=list)
    backup: Path | None = None
    weights: dict[str, str] = field(default_factory=dict)
    reference: str = ""
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    loaded_as: list[str] = field(default_factory=list)
    tolerance: float = TOLERANCE

    def __str__(self) -> str:
        if self.already_current:
            return (f"{self.folder} is already current: its code files and auto_map entries are those of the "
                    f"installed moe-audio; nothing changed.")
        differences = ", ".join(f"{name} {value:.3g}" for name, value in self.max_abs_diff.items())
        return "\n".join([
            f"updated {self.folder} (its code: {self.written_by}): {', '.join(self.replaced)}",
            f"old files kept in {self.backup} (moe-audio push leaves that folder out)",
            f"weights untouched: {len(self.weights)} safetensors file(s), same sha256 before and after",
            f"probe before: {self.reference}",
            f"probe after: the updated folder through the Auto classes with trust_remote_code=True, moe-audio not "
            f"importable: {', '.join(self.loaded_as)}",
            f"max abs difference (tolerance {self.tolerance:g}): {differences}",
        ])


def check_checkpoint_folder(folder: str | Path) -> dict:
    """The parsed `config.json` of a moe-audio checkpoint folder; a clear `ValueError` (or `FileNotFoundError`)
    naming the problem and the fix for anything else."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(
            f"{folder} does not exist: pass the folder of a saved moe-audio checkpoint (the one holding config.json "
            f"and model.safetensors)."
        )
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is a file, not a checkpoint folder: pass the folder that holds config.json and the weights "
            f"(e.g. {folder.parent})."
        )
    config_path = folder / "config.json"
    adapter_config = folder / "adapter_config.json"
    if not config_path.is_file() and adapter_config.is_file():
        # A PEFT adapter holds only low-rank weights; the code that runs is its base model's, so that is what to fix.
        base = _json_or_none(adapter_config) or {}
        base = base.get("base_model_name_or_path") or "its base model"
        raise ValueError(
            f"{folder} is a LoRA/PEFT adapter (adapter_config.json, no config.json): it carries no model code, the "
            f"code that runs is its base model's ({base}). Update that checkpoint instead: "
            f"`moe-audio update-code {base}`; the adapter then loads on it unchanged."
        )
    if not config_path.is_file():
        raise ValueError(
            f"{folder} has no config.json, so it is not a saved moe-audio checkpoint: pass the folder that "
            f"model.save_pretrained (or moe-audio init/train) wrote."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{config_path} is not valid JSON ({error}): the checkpoint is damaged; restore config.json from where "
            f"the checkpoint came from, then run update-code again."
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "moe_audio":
        raise ValueError(
            f"{folder} holds a {model_type!r} model, not a moe-audio one (config.json model_type 'moe_audio'): "
            f"update-code only replaces moe-audio's own code files. Pass a moe-audio checkpoint folder; for another "
            f"model's remote code, ask its authors for an update."
        )
    if config_path.is_symlink():
        # huggingface_hub's cache links snapshot files to shared blobs; editing them would corrupt the cache.
        raise ValueError(
            f"{folder} looks like a Hugging Face cache snapshot (config.json is a link into the cache), which must "
            f"not be edited: copy it first (`cp -rL {folder} my-checkpoint`), update the copy, and push that."
        )
    if not os.access(folder, os.W_OK):
        raise ValueError(
            f"{folder} is not writable, so its code files cannot be replaced: copy it somewhere writable (or fix its "
            f"permissions) and run update-code on that."
        )
    if not _weight_files(folder):
        raise ValueError(
            f"{folder} has no *.safetensors weights, so there is nothing to check the updated code against: pass the "
            f"folder that holds model.safetensors (save with model.save_pretrained)."
        )
    return config


def update_checkpoint_code(folder: str | Path, tolerance: float = TOLERANCE) -> CodeUpdate:
    """Replace the code files of the moe-audio checkpoint in `folder` with the installed package's.

    Refuses (`ValueError`, `FileNotFoundError`) anything but a moe-audio checkpoint folder with safetensors
    weights. A checkpoint whose code files and `auto_map` entries are already current is left as it is
    (`CodeUpdate.already_current`). Otherwise the logits (and the base model's hidden states) on a fixed probe
    input are computed before, with the checkpoint's own code in a fresh process (or, where that code cannot run
    on the installed transformers, with the installed package's classes on the same weights, and the report says
    so), and after, with the updated folder loaded through the Auto classes and `trust_remote_code=True` in a fresh
    process where moe-audio is not importable. If they differ by more than `tolerance`, or the updated checkpoint
    fails to load, every file is put back and a `ValueError` explains. Weight files are never written.
    """
    folder = Path(folder)
    config = check_checkpoint_folder(folder)
    new_files = _planned_files(folder, config)
    if not new_files:
        return CodeUpdate(folder, already_current=True, written_by="current")
    written_by = _written_by(folder)
    weights = _hash_weights(folder)

    with tempfile.TemporaryDirectory(prefix="moe-audio-update-code-") as scratch:
        scratch = Path(scratch)
        inputs = _config_probe_inputs(folder, scratch)
        before, reference = _probe_before(folder, inputs, scratch)
        backup = _back_up(folder, [name for name in new_files if (folder / name).exists()])
        try:
            for name, content in new_files.items():
                _write_atomically(folder / name, content)
            after, error = _run_probe(folder, "checkpoint", inputs, scratch / "after.safetensors")
            if error:
                raise ValueError(
                    f"{folder} with the updated code does not load or run with trust_remote_code=True ({error}); "
                    f"every file was put back. Reinstall moe-audio (its code files may be damaged) and run "
                    f"update-code again."
                )
            differences = _compare(before, after)
            if any(value > tolerance for value in differences.values()):
                listed = ", ".join(f"{name} {value:.3g}" for name, value in differences.items())
                raise ValueError(
                    f"{folder} with the updated code computes different outputs on the probe input (max abs "
                    f"difference: {listed}; tolerance {tolerance:g}) than with {reference}; every file was put back. "
                    f"The checkpoint's code does something the installed moe-audio's does not (edited by hand, or "
                    f"written by a newer version?): keep it as it is, or install the moe-audio that wrote it."
                )
            if _hash_weights(folder) != weights:
                raise RuntimeError(f"the weight files in {folder} changed while the code was updated; check them.")
        except BaseException:
            _restore(folder, backup, new_files)
            raise
    return CodeUpdate(folder, already_current=False, written_by=written_by, replaced=sorted(new_files),
                      backup=backup, weights=weights, reference=reference, max_abs_diff=differences,
                      loaded_as=after["classes"], tolerance=tolerance)


# --- what changes -------------------------------------------------------------------------------------------------


def _planned_files(folder: Path, config: dict) -> dict[str, bytes]:
    """File name -> new bytes, for every code file or JSON file with `auto_map` entries that is not current."""
    planned = {
        name: (PACKAGE_DIR / name).read_bytes()
        for name in CODE_FILES
        if not (folder / name).is_file() or (folder / name).read_bytes() != (PACKAGE_DIR / name).read_bytes()
    }
    has_processor = (folder / "processor_config.json").is_file()
    for name, entries in _auto_map_entries().items():
        if name in PROCESSOR_FILES and not has_processor:
            continue  # a tokenizer alone is not our processor: AutoProcessor must not be pointed at it
        data = config if name == "config.json" else _json_or_none(folder / name)
        if not isinstance(data, dict):
            continue  # not there, or unreadable: left as it is
        auto_map = data.get("auto_map") or {}
        if any(auto_map.get(key) != value for key, value in entries.items()):
            # transformers writes these files with sorted keys and an indent of 2; keep them diffable against it.
            updated = {**data, "auto_map": {**auto_map, **entries}}
            planned[name] = (json.dumps(updated, indent=2, sort_keys=True) + "\n").encode()
    return planned


def _written_by(folder: Path) -> str:
    present = {name: _sha256(folder / name) for name in CODE_FILES if (folder / name).is_file()}
    if not present:
        return "missing: the checkpoint carried no code files"
    for version, hashes in RELEASED_CODE.items():
        if all(hashes.get(name) == digest for name, digest in present.items()):
            return f"written by moe-audio {version}"
    return "matching no moe-audio release (edited, or from an unreleased version)"


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --- files --------------------------------------------------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    # The checkpoint's own weights (one file or shards) sit beside config.json; a training run's checkpoint-N
    # folders are checkpoints of their own, which this update does not touch.
    return sorted(path for path in folder.glob("*.safetensors") if path.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_weights(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): _sha256(path) for path in _weight_files(folder)}


def _write_atomically(path: Path, content: bytes) -> None:
    # A crash mid-write must leave either the old file or the new one, never half of one.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _back_up(folder: Path, names: list[str]) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(100):
        backup = folder / f"{CODE_BACKUP_PREFIX}{stamp}{f'-{attempt}' if attempt else ''}"
        try:
            backup.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a fresh {CODE_BACKUP_PREFIX}{stamp} folder in {folder}.")
    for name in names:
        shutil.copy2(folder / name, backup / name)
    return backup


def _restore(folder: Path, backup: Path, written: dict[str, bytes]) -> None:
    for name in written:
        saved = backup / name
        if saved.is_file():
            _write_atomically(folder / name, saved.read_bytes())
            shutil.copystat(saved, folder / name)
        else:
            (folder / name).unlink(missing_ok=True)  # the update added it
    shutil.rmtree(backup)  # everything is as it was: a backup of it would only mislead


# --- the probe ----------------------------------------------------------------------------------------------------


def _config_probe_inputs(folder: Path, scratch: Path) -> Path | None:
    """Model inputs built from the config, for a checkpoint without a processor (else None: the processor makes them).

    Deterministic: a few text tokens around the audio placeholders of one 8 s clip of seeded log-mel noise.
    """
    if (folder / "processor_config.json").is_file():
        return None
    import torch
    from safetensors.torch import save_file

    from ..configuration_moe_audio import MoEAudioConfig, num_audio_tokens

    config = MoEAudioConfig.from_pretrained(folder)
    window = 2 * config.audio_config.max_source_positions
    frames = min(window, 800)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, config.audio_config.num_mel_bins, window, generator=generator)
    mask = torch.zeros(1, window, dtype=torch.long)
    mask[0, :frames] = 1
    special = {config.audio_token_id, config.audio_start_token_id, config.audio_end_token_id}
    text = [token for token in range(1, 40) if token not in special][:12]
    inputs = {}
    audio = []
    if config.audio_token_id is not None:  # without a placeholder id the model cannot take audio: text only
        audio = [config.audio_token_id] * int(num_audio_tokens(frames, config.frame_stacking_factor))
        inputs = {"input_features": features, "input_features_mask": mask}
    input_ids = torch.tensor([text[:4] + audio + text[4:]])
    path = scratch / "inputs.safetensors"
    save_file({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **inputs}, path)
    return path


# Runs in a fresh process: `checkpoint` loads the folder's own code through the Auto classes with moe-audio made
# unimportable, `package` uses the installed moe-audio's classes. Writes the inputs, logits and hidden states.
PROBE = r'''
import json
import sys

mode, folder, inputs_path, out_path = sys.argv[1:5]
if mode == "checkpoint":
    sys.modules["modeling_moe_audio"] = None  # only the checkpoint's own code may run
    from transformers import AutoModel as Base, AutoModelForCausalLM as CausalLM, AutoProcessor as Processor
    options = {"trust_remote_code": True}
else:
    from modeling_moe_audio import MoEAudioForCausalLM as CausalLM, MoEAudioModel as Base
    from modeling_moe_audio import MoEAudioProcessor as Processor
    options = {}
import numpy as np
import torch
from safetensors.torch import load_file, save_file

classes = []
if inputs_path:
    inputs = load_file(inputs_path)
else:
    processor = Processor.from_pretrained(folder, **options)
    classes.append(type(processor).__name__)
    t = np.arange(16000, dtype=np.float64) / 16000  # 1 s: a tone and a decaying overtone
    clip = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.exp(-3 * t) * np.sin(2 * np.pi * 1250 * t)).astype(np.float32)
    batch = processor(text=[f"Listen: {processor.audio_token} What do you hear?"], audio=[clip], sampling_rate=16000)
    inputs = {key: torch.as_tensor(value) for key, value in batch.items()}
with torch.no_grad():
    model = CausalLM.from_pretrained(folder, **options).eval()
    classes.append(type(model).__name__)
    logits = model(**inputs).logits
    del model
    base = Base.from_pretrained(folder, **options).eval()
    classes.append(type(base).__name__)
    hidden = base(**inputs).last_hidden_state
outputs = {"logits": logits, "hidden": hidden, **{"input." + key: value for key, value in inputs.items()}}
save_file({key: value.contiguous() for key, value in outputs.items()}, out_path)
print(json.dumps({"classes": classes}))
'''


def _run_probe(folder: Path, mode: str, inputs: Path | None, out: Path) -> tuple[dict | None, str | None]:
    """(outputs, None) from one probe process, or (None, its error's last line)."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="moe-audio-modules-") as modules:
        # transformers caches remote code by folder name: a fresh cache guarantees the code on disk now is what runs.
        env = {**os.environ, "HF_MODULES_CACHE": modules, "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(
            [sys.executable, "-c", PROBE, mode, str(folder.resolve()), str(inputs or ""), str(out)],
            cwd=modules, env=env, capture_output=True, text=True,
        )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        return None, lines[-1] if lines else f"exit status {result.returncode}"
    outputs = load_file(out)
    outputs["classes"] = json.loads(result.stdout.strip().splitlines()[-1])["classes"]
    return outputs, None


def _probe_before(folder: Path, inputs: Path | None, scratch: Path) -> tuple[dict, str]:
    import transformers

    before, error = None, "it carries no code files"
    if any((folder / name).is_file() for name in CODE_FILES):
        before, error = _run_probe(folder, "checkpoint", inputs, scratch / "before.safetensors")
    if before is not None:
        return before, "the checkpoint's own code (trust_remote_code=True)"
    reference = (f"the installed moe-audio's classes on the same weights, as the checkpoint's own code cannot run on "
                 f"transformers {transformers.__version__} ({error})")
    before, package_error = _run_probe(folder, "package", inputs, scratch / "before.safetensors")
    if before is None:
        raise ValueError(
            f"{folder} loads neither with its own code ({error}) nor with the installed moe-audio's classes "
            f"({package_error}), so the update could not be checked and nothing was changed. If the installed "
            f"moe-audio fails on transformers {transformers.__version__} too, upgrade moe-audio first; otherwise check "
            f"that the checkpoint is complete (config.json and weights from one save_pretrained)."
        )
    return before, reference


def _compare(before: dict, after: dict) -> dict[str, float]:
    inputs = sorted(key for key in before if key.startswith("input."))
    if inputs != sorted(key for key in after if key.startswith("input.")) or any(
        not before[key].equal(after[key]) for key in inputs
    ):
        # Different inputs would make equal logits meaningless (and mean the processor changed behaviour).
        return {"processor output": float("inf")}
    return {
        key: float((before[key].double() - after[key].double()).abs().max()) if before[key].shape == after[key].shape
        else float("inf")
        for key in ("logits", "hidden")
    }
