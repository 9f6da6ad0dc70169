"""Building checkpoints: a fresh model (and its processor) written as a `trust_remote_code` checkpoint."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperConfig, WhisperFeatureExtractor, WhisperModel

# Through the package, which registers the classes: save_pretrained then copies the code files.
from .. import MoEAudioConfig, MoEAudioForCausalLM, MoEAudioProcessor
from .model_card import write_model_card
from ..output_dirs import check_output_dir
from ..presets import load_config, shipped_tokenizer
from ..progress import announce

# Whisper's encoder frames per second of audio: 100 log-mel frames (10 ms hop at 16 kHz), halved by its stride-2 conv.
ENCODER_FRAMES_PER_SECOND = 50


def set_audio_window(config: MoEAudioConfig, seconds: int) -> None:
    """Encode audio in windows of `seconds` instead of the Whisper encoder's own (30 s), in place.

    Every clip is padded to a full window, so with 30 s windows a 5 s clip costs as much encoder time as a 30 s one;
    with windows near the clips' length it costs its share. The price: a pretrained Whisper encoder was trained on 30 s
    windows only (short clips padded with silence to 30 s), so a shorter window is an input it never saw: its first
    positions without the padded tail, which attention no longer reaches. Training with the encoder (stage `full`)
    adapts it; benchmarks/RESULTS.md reports the speed-up and the accuracy change measured on the demo corpus.
    """
    stacking = config.frame_stacking_factor
    longest = config.audio_config.max_source_positions // ENCODER_FRAMES_PER_SECOND
    valid = [s for s in range(1, longest + 1) if s * ENCODER_FRAMES_PER_SECOND % stacking == 0]
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds not in valid:
        raise ValueError(
            f"window_seconds={seconds!r} cannot be used: the window must be a whole number of seconds, at most the "
            f"encoder's {longest} s (it has position embeddings for that long), and its {ENCODER_FRAMES_PER_SECOND} "
            f"encoder frames per second must stack by frame_stacking_factor={stacking}; choose one of "
            f"{', '.join(map(str, valid))}."
        )
    config.audio_config.max_source_positions = seconds * ENCODER_FRAMES_PER_SECOND
    config.validate_architecture()


def new_processor(config: MoEAudioConfig, tokenizer) -> MoEAudioProcessor:
    """A processor whose feature extractor matches the config's Whisper encoder; adds missing audio tokens."""
    audio_config = config.audio_config
    feature_extractor = WhisperFeatureExtractor(
        feature_size=audio_config.num_mel_bins,
        chunk_length=audio_config.max_source_positions * 2 * 160 // 16000,
    )
    return MoEAudioProcessor(feature_extractor, tokenizer, frame_stacking_factor=config.frame_stacking_factor)


def bind_processor(config: MoEAudioConfig, processor: MoEAudioProcessor) -> None:
    """Write the processor's token ids into the config, growing the vocabulary if the tokenizer grew."""
    if len(processor.tokenizer) > config.text_config.vocab_size:
        config.text_config.vocab_size = len(processor.tokenizer)
    for name, token_id in processor.audio_special_token_ids.items():
        setattr(config, name, token_id)
    # Generation and the Trainer read these from the text config; the tokenizer is their source of truth.
    tokenizer = processor.tokenizer
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, name, getattr(tokenizer, name))
    config.validate_architecture()


def init_checkpoint(
    config: MoEAudioConfig,
    output: str | Path,
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> MoEAudioForCausalLM:
    """Write a freshly initialised model, and with a tokenizer its processor, to `output`."""
    output = Path(output)
    check_output_dir(output, overwrite)
    processor = None
    if tokenizer is not None:
        processor = new_processor(config, AutoTokenizer.from_pretrained(tokenizer))
        bind_processor(config, processor)
    torch.manual_seed(seed)
    model = MoEAudioForCausalLM(config)
    model.save_pretrained(output)
    if processor is not None:
        processor.save_pretrained(output)
    write_model_card(output)
    return model


def _hub_ids(*sources: str | Path) -> list[str]:
    """The sources that name Hub repositories (local folders are not valid `base_model` metadata)."""
    return [str(source) for source in sources if not Path(source).exists()]


def init_from_pretrained(
    llm: str | Path,
    audio_encoder: str | Path,
    output: str | Path,
    config: MoEAudioConfig,
    overwrite: bool = False,
    seed: int = 0,
    window_seconds: int | None = None,
) -> MoEAudioForCausalLM:
    """A checkpoint from a pretrained causal LM and a pretrained Whisper model; frontend and adapter start fresh.

    `config` gives the adapter (e.g. the `paper-moe` preset); its text and audio configs are replaced by the
    pretrained models' own. The LLM's tokenizer gets the audio tokens it lacks (the embeddings grow when they do
    not fit), its weight tying is kept as it was, and the Whisper encoder's weights are really loaded (a
    `WhisperEncoder.from_pretrained` of a Whisper checkpoint would silently load none). `window_seconds`: encode
    audio in shorter windows than Whisper's 30 s (see `set_audio_window`).
    """
    output = Path(output)
    check_output_dir(output, overwrite)
    if window_seconds is not None:  # refuse a window that cannot be used before loading gigabytes of weights
        audio_config = WhisperConfig.from_pretrained(audio_encoder).to_dict()
        set_audio_window(MoEAudioConfig.from_dict({**config.to_dict(), "audio_config": audio_config}), window_seconds)
    announce(f"loading the language model {llm}")
    language_model = AutoModelForCausalLM.from_pretrained(llm)
    announce(f"loading the Whisper encoder of {audio_encoder}")
    whisper = WhisperModel.from_pretrained(audio_encoder)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(audio_encoder)
    if window_seconds is not None:
        feature_extractor = WhisperFeatureExtractor(**{**feature_extractor.to_dict(), "chunk_length": window_seconds})
    processor = MoEAudioProcessor(
        feature_extractor, AutoTokenizer.from_pretrained(llm), frame_stacking_factor=config.frame_stacking_factor
    )
    config = MoEAudioConfig.from_dict({
        **config.to_dict(),
        **dict.fromkeys(processor.audio_special_token_ids),  # the preset's ids belong to another tokenizer
        "text_config": language_model.config.to_dict(),
        "audio_config": whisper.config.to_dict(),
        "tie_word_embeddings": bool(language_model.config.tie_word_embeddings),
    })
    if window_seconds is not None:
        set_audio_window(config, window_seconds)
    bind_processor(config, processor)
    if config.text_config.vocab_size > language_model.get_input_embeddings().num_embeddings:
        language_model.resize_token_embeddings(config.text_config.vocab_size)

    announce(f"building the model with a fresh {config.adapter_type} adapter")
    torch.manual_seed(seed)
    model = MoEAudioForCausalLM(config)
    model.model.language_model.load_state_dict(language_model.get_decoder().state_dict())
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(language_model.get_output_embeddings().state_dict())
    encoder_weights = whisper.get_encoder().state_dict()
    # A shorter window's frames sit where they would in a 30 s window: keep the first positions.
    positions = encoder_weights["embed_positions.weight"]  # (30 s of frames, d_model)
    encoder_weights["embed_positions.weight"] = positions[: config.audio_config.max_source_positions]
    model.model.audio_tower.load_state_dict(encoder_weights)
    model.to(language_model.dtype)
    announce(f"saving the checkpoint to {output}")
    model.save_pretrained(output)
    processor.save_pretrained(output)
    write_model_card(output, base_models=_hub_ids(llm, audio_encoder))
    return model


def create_checkpoint(
    output: str | Path,
    config: str | Path | None = None,
    llm: str | Path | None = None,
    audio_encoder: str | Path | None = None,
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
    seed: int = 0,
    semantic_vocab_size: int | None = None,
    window_seconds: int | None = None,
) -> str:
    """`moe-audio init`: a random model from `config` (a preset name or JSON file), or with `llm` and
    `audio_encoder` a model built from those pretrained parts with `config`'s adapter. `semantic_vocab_size`: give
    it a second (semantic) stream taking ids of a tokenizer with that many codes (default: as the config says).
    `window_seconds`: encode audio in windows that long rather than the encoder's own (see `set_audio_window`).
    Returns what was written."""
    overrides = {} if semantic_vocab_size is None else {"semantic_vocab_size": semantic_vocab_size}
    if llm or audio_encoder:
        if not (llm and audio_encoder):
            raise ValueError("--llm and --audio_encoder go together: pass both (or neither, for a random model).")
        if tokenizer:
            raise ValueError("--tokenizer does not apply with --llm: the LLM's own tokenizer is used.")
        adapter_config = load_config(config or "paper-moe", **overrides)
        init_from_pretrained(llm, audio_encoder, output, adapter_config, overwrite=overwrite, seed=seed,
                             window_seconds=window_seconds)
        return f"wrote {output}: {llm} + the encoder of {audio_encoder} + a fresh {adapter_config.adapter_type} adapter"
    if not config:
        raise ValueError("--config is required without --llm/--audio_encoder (e.g. --config tiny).")
    tokenizer = tokenizer or shipped_tokenizer(config)
    model_config = load_config(config, **overrides)
    if window_seconds is not None:
        set_audio_window(model_config, window_seconds)
    init_checkpoint(model_config, output, tokenizer=tokenizer, overwrite=overwrite, seed=seed)
    if not tokenizer:
        return (f"wrote a freshly initialised {model_config.adapter_type} model to {output}; no --tokenizer given and "
                "none ships with this config: the checkpoint has no processor")
    return f"wrote a freshly initialised {model_config.adapter_type} model and its processor (tokenizer {tokenizer}) to {output}"
