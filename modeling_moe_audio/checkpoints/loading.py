"""Loading a checkpoint (a local folder or a Hub repository) as a model and its processor, with the mistakes a
user can make named at once: a mistyped folder (not 30 Hub retries), a corrupt file (by its name), a processor
that does not match the model."""

import json
import os
from pathlib import Path

from ..local_paths import looks_like_a_local_path, missing_path_error
from .files import is_safetensors_file


JSON_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json",
              "tokenizer.json", "special_tokens_map.json", "generation_config.json", "model.safetensors.index.json")


def check_checkpoint_folder(folder: Path) -> None:
    """Refuse a local checkpoint that cannot load, naming the file: a missing config, corrupt JSON, weights that are
    not safetensors or are cut short."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a checkpoint folder.")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json, so it is not a checkpoint folder (is it the right one?).")
    for name in JSON_FILES:
        path = folder / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{path} is corrupt: not valid JSON ({error}). Restore it from where you got the "
                                 "checkpoint.") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{folder} has no *.safetensors weights.")
    for path in weights:
        if not is_safetensors_file(path):
            raise ValueError(f"{path} is corrupt or cut short: not a complete safetensors file. Restore it from where "
                             "you got the checkpoint.")


def resolve_source(source: str | os.PathLike) -> str:
    """`source` as `from_pretrained` takes it, after checking a local folder (see `check_checkpoint_folder`)."""
    if looks_like_a_local_path(source):
        folder = Path(source).expanduser()
        if not folder.exists():
            raise missing_path_error(folder, "Checkpoint folder")
        check_checkpoint_folder(folder)
        return str(folder)
    return os.fspath(source)


def load_checkpoint(source: str | os.PathLike, dtype=None, device: str | None = None, with_processor: bool = True):
    """(model, processor) of a moe-audio checkpoint, loaded with `trust_remote_code=True` (the processor is None
    without `with_processor`); `dtype`: as `from_pretrained` takes it (default: its own)."""
    from transformers import AutoModelForCausalLM

    source = resolve_source(source)
    model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=True, **({} if dtype is None else {"dtype": dtype}))
    if device is not None:
        model = model.to(device)
    return model, load_processor(source, model) if with_processor else None


def load_processor(source: str | os.PathLike, model):
    """The processor of the checkpoint `source` (resolved), checked against its `model`."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    stacking = getattr(processor, "frame_stacking_factor", None)
    if stacking is not None and stacking != model.config.frame_stacking_factor:
        raise ValueError(
            f"{source}: the processor stacks {stacking} encoder frames per audio token but the model "
            f"{model.config.frame_stacking_factor}, so placeholders and audio embeddings would not match; save the "
            "processor made for this model (frame_stacking_factor in processor_config.json)."
        )
    return processor
