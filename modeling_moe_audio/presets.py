"""Named configuration presets (the JSON files in the repository's `configuration/` folder).

The presets, the tiny tokenizer (`processing/tiny-tokenizer/`) and the model-card template (`model_card.md`) stay at
the top of the repository; setup.cfg installs `configuration/` and `processing/` as the sub-packages
`modeling_moe_audio.configuration` and `modeling_moe_audio.processing`, with `model_card.md` beside them. So the
folder that holds `configuration/` holds the other two as well: the checkout in an editable install, the installed
package in a `pip install .` or a wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .configuration_moe_audio import MoEAudioConfig


try:
    RESOURCES = Path(files("modeling_moe_audio.configuration")).resolve().parent
except ModuleNotFoundError as error:
    raise ImportError(
        "modeling_moe_audio's presets (package data) are missing: install the package (`pip install -e .` or "
        "`pip install .` in a checkout) rather than putting the checkout on PYTHONPATH."
    ) from error
PRESETS_DIR = RESOURCES / "configuration"
MODEL_CARD_TEMPLATE = RESOURCES / "model_card.md"
# Presets whose tokenizer ships with the repository (see processing/build_tiny_tokenizer.py).
TINY_TOKENIZER = RESOURCES / "processing" / "tiny-tokenizer"
SHIPPED_TOKENIZERS = {"tiny": TINY_TOKENIZER, "tiny-4s": TINY_TOKENIZER}


def available_presets() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """The JSON file behind a path or a preset name such as `tiny` or `paper-moe`."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{path.name.removesuffix('.json')}.json"
    if not preset.is_file():
        raise FileNotFoundError(
            f"No configuration file {str(name_or_path)!r}; pass a JSON file or one of the presets: "
            f"{', '.join(available_presets())}."
        )
    return preset


def shipped_tokenizer(name_or_path: str | Path) -> Path | None:
    """The tokenizer that ships with a preset (only `tiny` has one), or None."""
    path = resolve_config_path(name_or_path).resolve()
    return next((tok for name, tok in SHIPPED_TOKENIZERS.items() if PRESETS_DIR / f"{name}.json" == path), None)


def load_config(name_or_path: str | Path, **overrides) -> MoEAudioConfig:
    """A `MoEAudioConfig` from a JSON file path or a preset name such as `tiny` or `paper-moe`."""
    # Not at module level: it imports torch and transformers, and `moe-audio --help` only lists the presets.
    from . import MoEAudioConfig

    config = MoEAudioConfig.from_json_file(resolve_config_path(name_or_path))
    for key, value in overrides.items():
        setattr(config, key, value)
    if overrides:
        config.validate_architecture()
    return config
