"""Processor of the MoE-Adapter audio language model: audio and conversations in, model inputs out.

This file travels with checkpoints (``trust_remote_code``): it imports only third-party packages and
`configuration_moe_audio`.
"""

import os

import numpy as np
import torch
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import load_audio as _transformers_load_audio
from transformers.processing_utils import ProcessorMixin

from .configuration_moe_audio import num_audio_tokens


SAMPLING_RATE = 16000
MAX_CHANNELS = 8  # an axis this short is a channel axis, not time

# ChatML, with one audio placeholder per audio block; `{% generation %}` marks what the assistant says, so
# `return_assistant_tokens_mask` (and `return_labels`) cover exactly the assistant's tokens and its end of turn.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'text' -%}{{- block['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'audio' -%}{{- audio_token -}}"
    "{%- elif block['type'] == 'text' -%}{{- block['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def check_audio_path(path: str | os.PathLike, where: str = "") -> str:
    """`path` as a string, if it names an existing file; otherwise an error that says what it names."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"Audio path {path!r}{where} is a folder, not an audio file; give the file's path.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Audio file {path!r}{where} does not exist.")
    return path


def is_remote_audio(source) -> bool:
    """A URL or a data URI, which transformers' loaders fetch; anything else given as a string is a local file."""
    return isinstance(source, str) and ("://" in source or source.startswith("data:"))


def load_audio(path: str | os.PathLike, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Decode an audio file (wav, flac, ogg, mp3: libsndfile), or a URL or data URI of one, to mono float32 and
    resample it with soxr."""
    if not is_remote_audio(path):
        path = check_audio_path(path)
    return _transformers_load_audio(path, sampling_rate=sampling_rate, backend="soundfile")


def real_mel_frames(window_lengths: torch.Tensor, hop_length: int) -> torch.Tensor:
    """Real log-mel frames of windows holding `window_lengths` samples: frame t covers the samples from t * hop_length
    on, and is real if that sample is (as Whisper's mask says)."""
    return (window_lengths + hop_length - 1) // hop_length


def audio_token_count(num_samples: int, window_samples: int = 480000, hop_length: int = 160,
                      frame_stacking_factor: int = 4) -> int:
    """Audio tokens of a clip of `num_samples` 16 kHz samples, cut into windows of `window_samples` as the processor
    cuts it (defaults: Whisper's 30 s windows and 10 ms hop, 4 frames stacked: 12.5 Hz). It is the number of
    placeholders the clip's text gets, of audio embeddings the model makes, and of semantic ids the clip needs."""
    window_lengths = torch.tensor([min(window_samples, num_samples - start)
                                   for start in range(0, num_samples, window_samples)], dtype=torch.long)
    return int(num_audio_tokens(real_mel_frames(window_lengths, hop_length), frame_stacking_factor).sum())


class MoEAudioFeatureExtractor(WhisperFeatureExtractor):
    """Whisper's feature extractor, whose `fetch_audio` leaves files (paths, URLs, data URIs) to the processor.

    The any-to-any pipeline decodes the files given as `audio=` with `fetch_audio` before it calls the processor, which
    would then get bare arrays of unknown rate (and refuses them: an array needs its `sampling_rate`). Left as they
    are, files are decoded and resampled by the processor's own rules. Saved as a `WhisperFeatureExtractor`, so
    checkpoints load without this class; the processor makes its feature extractor one of these.
    """

    def fetch_audio(self, audio_url_or_urls, sampling_rate: int | None = None):
        if isinstance(audio_url_or_urls, (list, tuple)) and audio_url_or_urls and isinstance(
            audio_url_or_urls[0], (str, os.PathLike, list, tuple)
        ):
            return [self.fetch_audio(audio, sampling_rate) for audio in audio_url_or_urls]
        if isinstance(audio_url_or_urls, (str, os.PathLike)):
            return audio_url_or_urls
        return super().fetch_audio(audio_url_or_urls, sampling_rate)

    def to_dict(self):
        # Saved as Whisper's own, padding on the right as audio is padded: whoever reads the file without this class
        # (a plain WhisperFeatureExtractor, the code of an older moe-audio) pads audio as Whisper was trained. The
        # processor turns the loaded extractor back into this class, padding text on the left.
        return {**super().to_dict(), "feature_extractor_type": WhisperFeatureExtractor.__name__, "padding_side": "right"}


def to_mono_float32(clip, index: int) -> np.ndarray:
    """One clip as a 1-D float32 array; integer PCM is scaled to [-1, 1], several channels are averaged."""
    if isinstance(clip, torch.Tensor):
        clip = clip.detach().cpu().numpy()
    clip = np.asarray(clip)
    if clip.dtype == np.int16:
        clip = clip.astype(np.float32) / 32768.0
    elif clip.dtype == np.int32:
        clip = clip.astype(np.float32) / 2147483648.0
    elif clip.dtype in (np.float32, np.float64, np.float16):
        clip = clip.astype(np.float32)
    else:
        raise TypeError(f"Audio {index} has dtype {clip.dtype}; pass float32, float64 or int16/int32 PCM samples.")
    if clip.ndim == 2:
        channel_axes = [axis for axis in (0, 1) if clip.shape[axis] <= MAX_CHANNELS]
        if len(channel_axes) != 1:
            raise ValueError(
                f"Audio {index} has shape {clip.shape}, which is not (samples,), (channels, samples) or "
                f"(samples, channels) with at most {MAX_CHANNELS} channels; pass one 1-D array per clip."
            )
        clip = clip.mean(axis=channel_axes[0])
    elif clip.ndim != 1:
        raise ValueError(f"Audio {index} has {clip.ndim} dimensions; pass one 1-D (or 2-D multi-channel) array per clip.")
    if clip.size == 0:
        raise ValueError(f"Audio {index} is empty (0 samples).")
    if not np.isfinite(clip).all():
        raise ValueError(f"Audio {index} contains NaN or infinite samples; clean or drop it before processing.")
    return clip


class MoEAudioProcessor(ProcessorMixin):
    r"""
    Turns text (or conversations) and audio into inputs of [`MoEAudioForCausalLM`].

    Each `audio_token` in the text stands for one audio clip and is expanded to `audio_start_token`, as many
    `audio_token`s as the model makes audio embeddings for that clip, and `audio_end_token`. Clips longer than
    30 s are cut into 30 s windows that the model encodes separately and joins; clips longer than
    `max_audio_seconds` are rejected. Several channels are averaged to mono.

    Args:
        feature_extractor ([`WhisperFeatureExtractor`]): computes the log-mel windows.
        tokenizer: any tokenizer; missing audio special tokens are added to it.
        chat_template (`str`, *optional*): defaults to a ChatML template with `{% generation %}` marks.
        audio_token / audio_start_token / audio_end_token (`str`): the placeholder and the tokens around it.
        frame_stacking_factor (`int`): encoder frames per audio token; must equal the model's.
        max_audio_seconds (`float`): the longest clip accepted.
    """

    audio_kwargs = {"return_attention_mask": True, "padding": "max_length"}
    text_kwargs = {"padding": True, "padding_side": "left"}

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        chat_template: str | None = None,
        audio_token: str = "<|audio_pad|>",
        audio_start_token: str | None = "<|audio_start|>",
        audio_end_token: str | None = "<|audio_end|>",
        frame_stacking_factor: int = 4,
        max_audio_seconds: float = 600.0,
    ):
        special = [token for token in (audio_start_token, audio_token, audio_end_token) if token]
        missing = [token for token in special if token not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        if max_audio_seconds <= 0:
            raise ValueError(f"max_audio_seconds={max_audio_seconds} must be positive.")
        self.audio_token = audio_token
        self.audio_start_token = audio_start_token
        self.audio_end_token = audio_end_token
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        self.frame_stacking_factor = frame_stacking_factor
        self.max_audio_seconds = max_audio_seconds
        # A tokenizer called once with padding_side="right" (as for training) saves that side into tokenizer.json and
        # comes back padding on the right, which breaks batched `generate`; this processor pads on the left unless a
        # call asks otherwise.
        tokenizer.padding_side = "left"
        # Pipelines batch the rows they processed one by one, padding the text on the feature extractor's side (and
        # refusing a tokenizer that disagrees): left, as for `generate`. Audio windows are padded on the right by
        # `_process_audio` itself, whatever this says.
        if type(feature_extractor) is WhisperFeatureExtractor:
            feature_extractor = MoEAudioFeatureExtractor(**feature_extractor.to_dict())
        feature_extractor.padding_side = "left"
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE)

    @property
    def audio_special_token_ids(self) -> dict[str, int | None]:
        """The ids to write into the model config (`audio_token_id`, `audio_start_token_id`, `audio_end_token_id`)."""
        to_id = lambda token: self.tokenizer.convert_tokens_to_ids(token) if token else None
        return {
            "audio_token_id": self.audio_token_id,
            "audio_start_token_id": to_id(self.audio_start_token),
            "audio_end_token_id": to_id(self.audio_end_token),
        }

    @property
    def window_samples(self) -> int:
        return self.feature_extractor.n_samples

    def audio_token_count(self, num_samples: int) -> int:
        """Audio tokens (placeholders, embeddings, semantic ids) of a clip of `num_samples` samples at 16 kHz."""
        return audio_token_count(num_samples, self.window_samples, self.feature_extractor.hop_length,
                                 self.frame_stacking_factor)

    def __call__(self, text=None, audio=None, sampling_rate: int | None = None, semantic_audio_ids=None, **kwargs):
        """Tokenize `text` with each `audio_token` expanded, and compute the log-mel windows of `audio`.

        Args:
            text (`str` or `list[str]`): one prompt per batch row; write `audio_token` once per clip.
            audio: a clip or a list of clips (in the order of the placeholders across the batch): arrays or
                tensors of float or int16 samples, or paths (or URLs, data URIs) of audio files (decoded and
                resampled here).
            sampling_rate (`int`): the rate of the arrays; must be 16000 (files are resampled for you).
                semantic_audio_ids: per clip, the discrete semantic token ids at 12.5 Hz (one per audio token: as many as
                `audio_token_count(clip samples)`), non-negative integers; all clips or none.

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask`, `input_features` (`(windows, mels, 3000)`),
            `input_features_mask` (`(windows, 3000)`) and, with `semantic_audio_ids`, `semantic_audio_ids`.
        """
        if audio is not None:
            audio = self._prepare_audio(audio, sampling_rate)
            kwargs["sampling_rate"] = self.feature_extractor.sampling_rate
        elif semantic_audio_ids is not None:
            raise ValueError("semantic_audio_ids were given without audio; pass the clips they belong to.")
        outputs = super().__call__(text=text, audio=audio, **{"return_tensors": "pt", **kwargs})
        if semantic_audio_ids is not None:
            windows_per_clip = [-(-clip.shape[0] // self.window_samples) for clip in audio]
            outputs["semantic_audio_ids"] = self._split_semantic_ids(
                semantic_audio_ids, outputs["input_features_mask"], windows_per_clip
            )
        return outputs

    def _prepare_audio(self, audio, sampling_rate: int | None) -> list[np.ndarray]:
        if sampling_rate is not None and (
            isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer, float))
            or float(sampling_rate) != int(sampling_rate)
        ):
            raise TypeError(f"sampling_rate must be a whole number of Hz, e.g. 16000 (got {sampling_rate!r}, a "
                            f"{type(sampling_rate).__name__}).")
        if isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 2:
            raise ValueError(
                f"`audio` is one 2-D array of shape {tuple(audio.shape)}: pass a list of 1-D arrays for a batch, "
                "or [array] for one multi-channel clip."
            )
        clips = [audio] if isinstance(audio, (str, os.PathLike, np.ndarray, torch.Tensor)) else list(audio)
        has_arrays = any(not isinstance(clip, (str, os.PathLike)) for clip in clips)
        expected_rate = self.feature_extractor.sampling_rate
        if has_arrays and sampling_rate is None:
            raise ValueError(
                f"Pass `sampling_rate` with audio arrays (the model expects {expected_rate} Hz), e.g. "
                f"processor(text=..., audio=..., sampling_rate={expected_rate})."
            )
        if has_arrays and sampling_rate != expected_rate:
            raise ValueError(
                f"The audio is sampled at {sampling_rate} Hz but the model expects {expected_rate} Hz: resample it, "
                f"e.g. soxr.resample(audio, {sampling_rate}, {expected_rate}), or load files with "
                f"load_audio(path, sampling_rate={expected_rate})."
            )
        prepared = []
        for index, clip in enumerate(clips):
            if isinstance(clip, (str, os.PathLike)):
                clip = load_audio(clip, expected_rate)
            clip = to_mono_float32(clip, index)
            seconds = clip.shape[0] / expected_rate
            if seconds > self.max_audio_seconds:
                raise ValueError(
                    f"Audio {index} lasts {seconds:.1f} s, longer than max_audio_seconds={self.max_audio_seconds}; "
                    "cut it, or raise max_audio_seconds (the model encodes it in "
                    f"{self.feature_extractor.chunk_length} s windows)."
                )
            prepared.append(clip)
        return prepared

    def _process_audio(self, audio: list[np.ndarray], **kwargs):
        windows, window_lengths, windows_per_clip = [], [], []
        padding_value = self.feature_extractor.padding_value
        for clip in audio:
            starts = range(0, clip.shape[0], self.window_samples)
            for start in starts:
                window = clip[start : start + self.window_samples]
                window_lengths.append(window.shape[0])
                # Whisper takes full windows, padded on the right; the mask marks the real frames.
                padding = (0, self.window_samples - window.shape[0])
                windows.append(np.pad(window, padding, constant_values=padding_value))
            windows_per_clip.append(len(starts))
        # The windows are full already: `padding=True` (meant for the text) or a text `max_length` must not shorten them.
        full_windows = {"padding": "max_length", "max_length": self.window_samples, "pad_to_multiple_of": None}
        features = self.feature_extractor(
            windows, **{**kwargs, **full_windows, "return_attention_mask": False, "return_tensors": "pt"}
        )
        real_frames = real_mel_frames(torch.tensor(window_lengths), self.feature_extractor.hop_length)  # (windows,)
        mask = (torch.arange(features["input_features"].shape[-1])[None, :] < real_frames[:, None]).to(torch.int32)
        finite = torch.isfinite(features["input_features"]).flatten(1).all(-1)  # (windows,)
        if not finite.all():
            clip = int(np.searchsorted(np.cumsum(windows_per_clip), int((~finite).nonzero()[0, 0]), side="right"))
            raise ValueError(
                f"Audio {clip} gives non-finite log-mel features: its samples are too large (up to "
                f"{float(np.abs(audio[clip]).max()):.3g}); scale float audio to [-1, 1]."
            )
        tokens_per_window = num_audio_tokens(mask.sum(-1), self.frame_stacking_factor)
        tokens_per_clip = [int(n.sum()) for n in torch.split(tokens_per_window, windows_per_clip)]
        processed = {"input_features": features["input_features"], "input_features_mask": mask}
        replacements = [self._expanded_placeholder(count) for count in tokens_per_clip]
        return processed, replacements

    def _split_semantic_ids(self, semantic_audio_ids, mask, windows_per_clip) -> torch.Tensor:
        """Cut each clip's 12.5 Hz semantic ids at the window borders and pad each window to a full window."""
        ids_per_clip = list(semantic_audio_ids)
        tokens_per_window = num_audio_tokens(mask.sum(-1), self.frame_stacking_factor)
        if len(ids_per_clip) != len(windows_per_clip):
            raise ValueError(
                f"Got semantic_audio_ids for {len(ids_per_clip)} clips but {len(windows_per_clip)} audio clips."
            )
        full_window = num_audio_tokens(mask.shape[-1], self.frame_stacking_factor)
        rows = torch.zeros(len(tokens_per_window), full_window, dtype=torch.long)
        window = 0
        for clip, (ids, count) in enumerate(zip(ids_per_clip, windows_per_clip)):
            ids = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids).flatten()
            if ids.numel() and (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
                raise TypeError(f"Clip {clip}'s semantic_audio_ids are {ids.dtype} values; give integer ids (the "
                                "semantic tokenizer's codes).")
            ids = ids.to(torch.long)
            if ids.numel() and int(ids.min()) < 0:
                raise ValueError(f"Clip {clip}'s semantic_audio_ids hold the negative id {int(ids.min())}; semantic "
                                 "ids are codebook indices, 0 or more.")
            clip_tokens = int(tokens_per_window[window : window + count].sum())
            if ids.numel() != clip_tokens:
                raise ValueError(
                    f"Clip {clip} has {clip_tokens} audio tokens at 12.5 Hz but {ids.numel()} semantic_audio_ids; "
                    "give exactly one semantic id per audio token."
                )
            for piece in torch.split(ids, tokens_per_window[window : window + count].tolist()):
                rows[window, : piece.numel()] = piece
                window += 1
        return rows

    def _expanded_placeholder(self, count: int) -> str:
        return (self.audio_start_token or "") + self.audio_token * count + (self.audio_end_token or "")

    def apply_chat_template(self, conversation, chat_template=None, return_labels: bool = False, **kwargs):
        """The library's `apply_chat_template`, with `{"type": "audio", "audio": array | "path": file}` blocks.

        `return_labels=True` (with `tokenize=True`) adds `labels`: the input ids on the assistant's tokens and -100
        everywhere else (prompt, audio placeholders, padding), ready for training. An audio block may carry its
        clip's `"semantic_ids"` (the second stream's ids, one per audio token): given for every audio block or none,
        they become `semantic_audio_ids`.
        """
        conversations = conversation if conversation and isinstance(conversation[0], list) else [conversation]
        expected_rate = self.feature_extractor.sampling_rate
        semantic_ids = []  # (one per audio block, in the order the clips are processed)
        for messages in conversations:
            if not messages:
                raise ValueError("A conversation is empty: give at least one message, e.g. "
                                 "[{'role': 'user', 'content': [{'type': 'audio', 'path': 'a.wav'}, ...]}].")
            for message in messages:
                for block in message["content"] if isinstance(message["content"], list) else []:
                    if block.get("type") == "audio" and kwargs.get("tokenize"):
                        call_rate = kwargs.get("sampling_rate", (kwargs.get("processor_kwargs") or {}).get("sampling_rate"))
                        self._check_audio_block(block, call_rate, expected_rate)
                        semantic_ids.append(block.get("semantic_ids"))
        given = [ids is not None for ids in semantic_ids]
        if any(given) and not all(given):
            raise ValueError(
                f"{sum(given)} of {len(given)} audio blocks carry semantic_ids: give them for every clip of the batch "
                "or for none (a model with a semantic codebook computes them itself)."
            )
        if any(given):
            kwargs["processor_kwargs"] = {**(kwargs.get("processor_kwargs") or {}), "semantic_audio_ids": semantic_ids}
        if return_labels:
            if not kwargs.get("tokenize"):
                raise ValueError("return_labels=True needs tokenize=True (labels are token ids).")
            kwargs["return_assistant_tokens_mask"] = True
            kwargs["return_dict"] = True
        kwargs.setdefault("audio_token", self.audio_token)
        outputs = super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)
        if return_labels:
            assistant_mask = torch.as_tensor(outputs.pop("assistant_masks"))
            input_ids = torch.as_tensor(outputs["input_ids"])
            outputs["labels"] = input_ids.masked_fill(assistant_mask == 0, -100)
        return outputs

    @staticmethod
    def _check_audio_block(block: dict, call_rate, expected_rate: int) -> None:
        """A file must exist; an array needs its sampling rate (in the block or the call), which must be the model's.
        Checked where audio is processed (`tokenize=True`)."""
        source = block.get("path", block.get("audio", block.get("url")))
        if isinstance(source, (str, os.PathLike)):
            if not is_remote_audio(os.fspath(source)):
                check_audio_path(source, " in the conversation")
            return
        rate = block.get("sampling_rate", call_rate)
        if rate is None:
            raise ValueError(
                f"An audio block holds an array but no sampling rate: add \"sampling_rate\": {expected_rate} to the "
                f"block, or pass processor_kwargs={{'sampling_rate': {expected_rate}}} to apply_chat_template (resample other "
                "rates first)."
            )
        if rate != expected_rate:
            raise ValueError(
                f"An audio block's array is sampled at {rate} Hz but the model expects {expected_rate} Hz: resample it, "
                f"e.g. soxr.resample(audio, {rate}, {expected_rate})."
            )

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + ["input_features", "input_features_mask", "semantic_audio_ids"]
        return list(dict.fromkeys(names))


__all__ = ["MoEAudioFeatureExtractor", "MoEAudioProcessor", "audio_token_count", "load_audio"]
