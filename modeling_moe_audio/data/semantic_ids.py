"""The second stream's data: each clip's discrete semantic ids, read from a row and checked against the clip.

A row (a manifest's object or a dataset's row) may carry `semantic_ids`: for each of its audio clips, in the order
the audio is heard, either a list of integers or the path of a `.npy` file of integers (relative to the data's
folder, as audio paths are). A row with one clip may give that clip's list or path directly. Each clip needs exactly
one id per 12.5 Hz audio token (`audio_token_count` of its duration): a 4 s clip 50 ids.

`row_semantic_ids` puts them in one form, a list of ints per clip (so a dataset column has one type), after the
checks; `SemanticIdsRule` adds what the model takes (its vocabulary size, whether it has a codebook) when the model is
known (training, evaluation).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..processing_moe_audio import audio_token_count
from .audio import BadRowError, resolve_audio_path


SEMANTIC_IDS = "semantic_ids"  # the row key (and dataset column)


@dataclass(frozen=True)
class SemanticIdsRule:
    """How clips are counted in audio tokens (Whisper's 30 s windows, 10 ms hop, 4 frames stacked by default) and,
    when the model is known, what it takes: `vocab_size` (0: no second stream; None: model not known) and whether it
    has a codebook that computes the ids of rows without them."""

    vocab_size: int | None = None
    has_codebook: bool = False
    window_samples: int = 480000
    hop_length: int = 160
    frame_stacking_factor: int = 4

    @classmethod
    def for_model(cls, config, processor=None) -> "SemanticIdsRule":
        counting = {}
        if processor is not None:
            counting = {"window_samples": processor.window_samples,
                        "hop_length": processor.feature_extractor.hop_length}
        # A checkpoint written before the codebook existed carries config code without `semantic_codebook_layer`.
        codebook_layer = getattr(config, "semantic_codebook_layer", None)
        return cls(vocab_size=config.semantic_vocab_size, has_codebook=codebook_layer is not None,
                   frame_stacking_factor=config.frame_stacking_factor, **counting)

    def expected_ids(self, num_samples: int) -> int:
        """Semantic ids (= audio tokens) of a clip of `num_samples` samples at 16 kHz."""
        return audio_token_count(num_samples, self.window_samples, self.hop_length, self.frame_stacking_factor)

    def check_against_model(self, ids_per_clip: list[list[int]] | None) -> None:
        """Raise `BadRowError` when the model is known and cannot take these ids (or their absence)."""
        if self.vocab_size is None:
            return
        if ids_per_clip is not None and not self.vocab_size:
            raise BadRowError("it carries semantic_ids but the model has no semantic stream (semantic_vocab_size=0); "
                              "leave them out, or use a model with one (moe-audio init --semantic_vocab_size N, or "
                              "moe-audio semantic-fit)")
        if ids_per_clip is None and self.vocab_size and not self.has_codebook:
            raise BadRowError(f"it has no semantic_ids, which the model needs (semantic_vocab_size={self.vocab_size}, "
                              "and no codebook to compute them); give each clip's ids, or fit a codebook with "
                              "moe-audio semantic-fit")
        for clip, ids in enumerate(ids_per_clip or []):
            if ids and max(ids) >= self.vocab_size:
                raise BadRowError(f"clip {clip + 1}'s semantic_ids hold the id {max(ids)}, outside the model's semantic "
                                  f"vocabulary (0 to {self.vocab_size - 1}); use the semantic tokenizer the model was "
                                  "made for, or a model whose semantic_vocab_size is that tokenizer's codebook size")


def _is_clip_value(value) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and not any(isinstance(v, (list, str)) for v in value))


def _clip_ids(value, folder: Path | None, clip: int) -> list[int]:
    """One clip's ids as a list of ints: the list itself, or the `.npy` file a path names."""
    if isinstance(value, str):
        path = Path(resolve_audio_path(value, folder))
        if not path.is_file():
            raise BadRowError(f"clip {clip}'s semantic_ids file {path} does not exist; give the .npy file's path "
                              "(relative to the data's folder) or the ids themselves as a list")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise BadRowError(f"clip {clip}'s semantic_ids file {path} is not a .npy array of integers ({error}); "
                              "write it with numpy.save(path, ids)") from None
        if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
            raise BadRowError(f"clip {clip}'s semantic_ids file {path} holds a {array.ndim}-D {array.dtype} array; "
                              "it must be 1-D integers, one id per audio token")
        value = array.tolist()
    bad = next((v for v in value if isinstance(v, bool) or not isinstance(v, int)), None)
    if bad is not None:
        raise BadRowError(f"clip {clip}'s semantic_ids hold {bad!r}, which is not an integer; semantic ids are codebook "
                          "indices (0, 1, 2, ...)")
    if value and min(value) < 0:
        raise BadRowError(f"clip {clip}'s semantic_ids hold the negative id {min(value)}; semantic ids are codebook "
                          "indices, 0 or more")
    return value


def row_semantic_ids(value, num_samples: list[int | None], folder: Path | None,
                     rule: SemanticIdsRule = SemanticIdsRule()) -> list[list[int]] | None:
    """A row's `semantic_ids` (None: the row has none) as one list of ints per clip, checked: one entry per clip, each
    a list of non-negative ints or a `.npy` file of them, with exactly one id per audio token of the clip
    (`num_samples`: each clip's length at 16 kHz, None where not known: no count check), and what the model takes
    (`rule`). A bad value raises `BadRowError` naming the clip, what it expected and the fix."""
    num_clips = len(num_samples)
    if value is not None:
        if _is_clip_value(value) and num_clips == 1:
            value = [value]
        if not isinstance(value, list) or len(value) != num_clips or not all(_is_clip_value(v) for v in value):
            raise BadRowError(f"'semantic_ids' must hold one entry per audio clip ({num_clips} here), each a list of "
                              "integers or the path of a .npy file of them (a row with one clip may give its list or "
                              "path directly)")
        value = [_clip_ids(ids, folder, clip) for clip, ids in enumerate(value, start=1)]
        for clip, (ids, samples) in enumerate(zip(value, num_samples), start=1):
            if samples is None:
                continue
            expected = rule.expected_ids(samples)
            if len(ids) != expected:
                raise BadRowError(
                    f"clip {clip} lasts {samples / 16000:.3f} s, which is {expected} audio tokens at "
                    f"{16000 / (rule.hop_length * 2 * rule.frame_stacking_factor):g} Hz, but its semantic_ids hold "
                    f"{len(ids)}; give exactly one id per audio token ({expected}), from a tokenizer at that rate"
                )
    rule.check_against_model(value)
    return value


def check_all_or_none(has_ids: list[bool], name: str) -> None:
    """Batches take semantic ids for every clip or for none: a data source gives them for every row or for none."""
    if any(has_ids) and not all(has_ids):
        first = has_ids.index(False)
        raise ValueError(f"{name}: {sum(has_ids)} of {len(has_ids)} rows carry semantic_ids, but not all (the first "
                         f"without is row {first}, 0-based); give them for every row or for none.")
