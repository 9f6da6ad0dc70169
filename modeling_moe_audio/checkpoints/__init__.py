"""Checkpoints: making them and keeping them usable.

- `build`: a fresh model (random, or from a pretrained LLM and Whisper encoder) written with its processor;
- `upcycle`: a dense-adapter model turned into an MoE-adapter one;
- `parameters`: total and active parameter counts of a configuration;
- `code_update`: an old checkpoint's code files replaced by the installed ones, the logits checked.
"""
