"""A built-in semantic tokenizer for the second stream: k-means on one Whisper encoder layer (`moe-audio semantic-fit`).

The paper's second stream takes discrete semantic tokens at 12.5 Hz from a trained speech tokenizer (GLM-4-Voice's
Whisper-VQ). For users who have none, `semantic_fit` makes a stand-in: it runs the checkpoint's own Whisper encoder
over some audio, takes the output of encoder layer `layer` (`hidden_states[layer]`), stacks its frames exactly as the
model's frontend does (one vector per 12.5 Hz audio token, real tokens only), fits scikit-learn's `MiniBatchKMeans`
with `codebook_size` clusters, and writes a new checkpoint whose model holds the cluster centres as its codebook:
given audio without ids, it computes them itself (nearest centre, as `KMeans.predict`), from the same encoder pass.
It is not GLM-4-Voice's tokenizer: one layer's k-means clusters carry whatever that layer encodes, not a VQ trained
for speech recognition.

The new checkpoint starts with its semantic embeddings at zero (unless the old one had a stream of the same size,
whose embeddings are kept), so it computes what the old one did until it is trained.
"""

from pathlib import Path

import numpy as np
import torch

# Through the package, which registers the classes: save_pretrained then copies the (current) code files.
from .. import MoEAudioConfig, MoEAudioForCausalLM
from ..data.audio import decode_audio_item
from ..output_dirs import check_output_dir
from ..processing_moe_audio import SAMPLING_RATE
from ..progress import announce, progress_bar
from .loading import load_checkpoint
from .model_card import write_model_card


KMEANS_INIT_RUNS = 3  # k-means++ initialisations MiniBatchKMeans tries, keeping the best


@torch.no_grad()
def stacked_layer_features(model, processor, clips: list[np.ndarray], layer: int) -> torch.Tensor:
    """The output of encoder layer `layer` for 16 kHz mono clips, stacked as the frontend stacks the encoder's
    output: `(audio tokens of all clips, stacked_audio_size)`, real tokens only, in order (what the codebook of a
    model with `semantic_codebook_layer=layer` quantises). `model`: a `MoEAudioForCausalLM` of this package."""
    inputs = processor(text=processor.audio_token * len(clips), audio=clips, sampling_rate=SAMPLING_RATE)
    _, _, token_mask, stacked_layer = model.model.encode_audio(
        inputs["input_features"], inputs["input_features_mask"], hidden_layer=layer
    )
    return stacked_layer[token_mask].float()


def layer_features_of_rows(model, processor, rows, layer: int, num_rows: int, batch_size: int = 8) -> np.ndarray:
    """`stacked_layer_features` of every clip of the first `num_rows` rows, `(audio tokens, stacked_audio_size)`
    float32, encoded `batch_size` clips at a time (a row's clips kept together), with a progress bar over the rows."""
    features, pending = [], []  # (tokens, width) arrays; decoded clips waiting for an encoder pass

    def encode_pending():
        features.append(stacked_layer_features(model, processor, pending, layer).numpy())
        pending.clear()

    with progress_bar(total=num_rows, desc="encoding", unit="row") as bar:
        for index in range(num_rows):
            pending.extend(decode_audio_item(item) for item in rows[index]["audio"])
            if len(pending) >= batch_size:
                encode_pending()
            bar.update(1)
        if pending:
            encode_pending()
    return np.concatenate(features)


def fit_codebook(features: np.ndarray, codebook_size: int, seed: int = 0):
    """scikit-learn's `MiniBatchKMeans` with `codebook_size` clusters, fitted on `(points, width)` features."""
    try:
        from sklearn.cluster import MiniBatchKMeans
    except ImportError as error:
        raise ImportError("Fitting a semantic codebook needs scikit-learn: pip install 'moe-audio[semantic]'.") from error

    if features.shape[0] < codebook_size:
        raise ValueError(f"The audio gives {features.shape[0]} audio tokens, fewer than the {codebook_size} codebook "
                         "entries to fit; give more audio (or a higher --limit), or a smaller --codebook_size.")
    kmeans = MiniBatchKMeans(n_clusters=codebook_size, random_state=seed, n_init=KMEANS_INIT_RUNS,
                             batch_size=max(1024, 3 * codebook_size))
    return kmeans.fit(features)


def with_codebook(model, codebook_size: int, layer: int) -> MoEAudioForCausalLM:
    """A copy of `model` (any `MoEAudioForCausalLM`, this package's or a checkpoint's remote code) as this package's
    class, with a semantic stream of `codebook_size` and a zero codebook for encoder layer `layer`. Its semantic
    embeddings are the old ones if `model` had a stream of that size, else zero: until trained, it computes what
    `model` computes."""
    old_size = model.config.semantic_vocab_size
    config = MoEAudioConfig.from_dict({
        **model.config.to_dict(), "semantic_vocab_size": codebook_size, "semantic_codebook_layer": layer,
    })
    new = MoEAudioForCausalLM(config).to(model.dtype)
    kept = {key: value for key, value in model.state_dict().items()
            if "semantic_" not in key or (old_size == codebook_size and "semantic_embeddings" in key)}
    missing, unexpected = new.load_state_dict(kept, strict=False)
    if unexpected or any("semantic_" not in key for key in missing):
        raise RuntimeError(f"The checkpoint's weights do not match its config: {unexpected or missing}")
    with torch.no_grad():
        if old_size != codebook_size:
            new.model.frontend.semantic_embeddings.weight.zero_()
    return new.eval()


def semantic_fit(checkpoint: str | Path, data: str | Path, codebook_size: int, layer: int, output: str | Path,
                 limit: int | None = None, batch_size: int = 8, seed: int = 0, overwrite: bool = False,
                 split: str | None = None) -> dict:
    """Fit a `codebook_size`-entry k-means codebook on encoder layer `layer` of `checkpoint`'s Whisper encoder over
    the audio of `data` (a manifest or dataset, as `moe-audio train` takes it; `limit`: its first rows; `batch_size`:
    clips per encoder pass), and write the checkpoint with that codebook to `output` (`checkpoint` is never
    changed). Returns {"rows", "audio_tokens", "inertia"}: what the codebook was fitted on, and k-means' inertia."""
    output = Path(output)
    if output.resolve() == Path(checkpoint).expanduser().resolve():
        raise ValueError(f"--output_dir {output} is the checkpoint itself, which semantic-fit never changes: write the "
                         "new checkpoint to another folder.")
    check_output_dir(output, overwrite)
    if codebook_size < 2 or batch_size < 1 or (limit is not None and limit < 1):
        raise ValueError(f"--codebook_size must be at least 2, and --batch_size and --limit positive (got "
                         f"{codebook_size}, {batch_size}, {limit}).")
    from ..data.sources import load_training_data  # datasets: loaded once the arguments are known to be sound

    announce(f"loading {checkpoint}")
    old, processor = load_checkpoint(checkpoint)
    layers = old.config.audio_config.encoder_layers
    if not 0 <= layer <= layers:
        raise ValueError(f"--layer {layer} is not an encoder layer of {checkpoint}: its Whisper encoder has {layers} "
                         f"layers, so use 0 (the encoder's input) to {layers} (its output).")
    model = with_codebook(old, codebook_size, layer)
    del old
    rows, _ = load_training_data(data, split=split, max_audio_seconds=processor.max_audio_seconds)
    num_rows = len(rows) if limit is None else min(limit, len(rows))
    features = layer_features_of_rows(model, processor, rows, layer, num_rows, batch_size)
    announce(f"fitting {codebook_size} k-means clusters on {features.shape[0]} audio tokens "
             f"({features.shape[1]}-d, encoder layer {layer})")
    kmeans = fit_codebook(features, codebook_size, seed)
    with torch.no_grad():
        model.model.frontend.semantic_codebook.copy_(torch.from_numpy(kmeans.cluster_centers_))
    announce(f"saving the checkpoint to {output}")
    model.save_pretrained(output)
    processor.save_pretrained(output)
    write_model_card(output, training_summary=(
        f"`{Path(checkpoint).name}` with a semantic stream from `moe-audio semantic-fit`: a {codebook_size}-entry "
        f"k-means codebook (scikit-learn MiniBatchKMeans, seed {seed}) on Whisper encoder layer {layer}, fitted on "
        f"{features.shape[0]} audio tokens of {num_rows} rows; the semantic embeddings start at zero until trained."))
    return {"rows": num_rows, "audio_tokens": int(features.shape[0]), "inertia": float(kmeans.inertia_)}
