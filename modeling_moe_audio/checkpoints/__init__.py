"""Checkpoints: making them and keeping them usable.

- `build`: a fresh model (random, or from a pretrained LLM and Whisper encoder) written with its processor;
- `upcycle`: a dense-adapter model turned into an MoE-adapter one;
- `semantic_codebook`: a model given a second (semantic) stream whose ids its own k-means codebook computes
  (`moe-audio semantic-fit`);
- `loading`: a checkpoint loaded as model and processor, its mistakes named (`load_checkpoint`);
- `files`: what a checkpoint folder holds (the code files, safetensors weights checked by their header);
- `model_card`: the card (`README.md`) written into every checkpoint;
- `parameters`: total and active parameter counts of a configuration;
- `code_update`: an old checkpoint's code files replaced by the installed ones, the logits checked.
"""
