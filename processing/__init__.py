"""The tiny tokenizer, installed as `modeling_moe_audio.processing` (see setup.cfg); not meant to be imported."""
