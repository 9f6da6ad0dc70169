"""Named configuration presets: the JSON files in the repository's `configuration/` folder, and the ablations of
the paper's Tables 2 and 3, each derived from a base preset by one row of `ABLATIONS`.

The presets, the tiny tokenizer (`processing/tiny-tokenizer/`) and the model-card template (`model_card.md`) stay at
the top of the repository; setup.cfg installs `configuration/` and `processing/` as the sub-packages
`modeling_moe_audio.configuration` and `modeling_moe_audio.processing`, with `model_card.md` beside them. So the
folder that holds `configuration/` holds the other two as well: the checkout in an editable install, the installed
package in a `pip install .` or a wheel.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
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


# Table 2 (D = the base preset's expert width: 1280 in paper-moe, 24 in tiny) and Table 3's "w/o EBL": each is the
# base preset with these changes. `expert_width_factor` scales the expert width. Preset names: `ablation-<name>`.
ABLATIONS = {
    "8-choose-4": {},
    "16-choose-4": {"num_experts": 16},
    "8-choose-1": {"num_experts_per_tok": 1},
    "4-choose-2": {"num_experts": 4, "num_experts_per_tok": 2},
    "8-choose-4-width-half": {"expert_width_factor": 0.5},
    "8-choose-4-width-double": {"expert_width_factor": 2.0},
    "8-choose-4-no-balance-loss": {"router_aux_loss_coef": 0.0},
}
ABLATION_PREFIX = "ablation-"
ABLATION_BASE = "paper-moe"


def available_presets() -> list[str]:
    return sorted([path.stem for path in PRESETS_DIR.glob("*.json")] + [ABLATION_PREFIX + name for name in ABLATIONS])


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


def ablation_config(name: str, base: str | Path = ABLATION_BASE, **overrides) -> MoEAudioConfig:
    """The ablation `name` (a key of `ABLATIONS`) of the `base` preset, with `overrides` on top."""
    if name not in ABLATIONS:
        raise ValueError(f"Unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}.")
    changes = dict(ABLATIONS[name])
    factor = changes.pop("expert_width_factor", None)
    config = load_config(base, **changes, **overrides)
    if factor:
        config.expert_intermediate_size = int(config.expert_intermediate_size * factor)
        config.validate_architecture()
    return config


def load_config(name_or_path: str | Path, **overrides) -> MoEAudioConfig:
    """A `MoEAudioConfig` from a JSON file path or a preset name such as `tiny`, `paper-moe` or
    `ablation-16-choose-4`."""
    # Not at module level: it imports torch and transformers, and `moe-audio --help` only lists the presets.
    from . import MoEAudioConfig

    name = str(name_or_path)
    if name.startswith(ABLATION_PREFIX) and not Path(name).is_file():
        return ablation_config(name.removeprefix(ABLATION_PREFIX), **overrides)
    path = resolve_config_path(name_or_path)
    try:
        config_dict = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a valid JSON file ({error}); fix it or pass a preset name.") from None
    if not isinstance(config_dict, dict):
        raise ValueError(f"{path} holds a JSON {type(config_dict).__name__}, not an object of config fields.")
    model_type = config_dict.pop("model_type", MoEAudioConfig.model_type)
    if model_type != MoEAudioConfig.model_type:
        raise ValueError(
            f"{path} is a {model_type!r} config, not a moe-audio one (model_type {MoEAudioConfig.model_type!r}); pass "
            f"it as the text or audio part instead (`init --llm` / `--audio_encoder`), or a moe-audio preset."
        )
    config = MoEAudioConfig.from_dict(config_dict)
    fields = [field.name for field in dataclasses.fields(config)]
    for key, value in overrides.items():
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            raise ValueError(f"{key!r} is not a MoEAudioConfig field" + (f"; did you mean {near[0]!r}?" if near else "."))
        setattr(config, key, value)
    if overrides:
        config.validate_architecture()
    return config
