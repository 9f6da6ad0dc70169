"""Named configuration presets (the JSON files in the repository's `configuration/` folder)."""

from pathlib import Path

from .configuration_moe_audio import MoEAudioConfig


PRESETS_DIR = Path(__file__).resolve().parent.parent / "configuration"


def available_presets() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def load_config(name_or_path: str | Path, **overrides) -> MoEAudioConfig:
    """A `MoEAudioConfig` from a JSON file path or a preset name such as `tiny` or `paper-moe`."""
    path = Path(name_or_path)
    if not path.is_file():
        preset = PRESETS_DIR / f"{path.name.removesuffix('.json')}.json"
        if not preset.is_file():
            raise FileNotFoundError(
                f"No configuration file {str(name_or_path)!r}; pass a JSON file or one of the presets: "
                f"{', '.join(available_presets())}."
            )
        path = preset
    config = MoEAudioConfig.from_json_file(path)
    for key, value in overrides.items():
        setattr(config, key, value)
    if overrides:
        config.validate_architecture()
    return config
