"""The JSON presets, installed as `modeling_moe_audio.configuration` (see setup.cfg); not meant to be imported."""
