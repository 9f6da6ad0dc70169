"""The second (discrete semantic) stream end to end: ids carried by data rows and benchmark items, the codebook that
`moe-audio semantic-fit` fits and the model applies, saving and loading (also as remote code), training, evaluation.

Bad ids (counts, types, files, vocabulary) are in test_bad_input.py ("The second stream's semantic ids")."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor

from modeling_moe_audio import MoEAudioForCausalLM
from modeling_moe_audio.checkpoints.files import CODE_FILES, PACKAGE_DIR
from modeling_moe_audio.checkpoints.loading import load_checkpoint
from modeling_moe_audio.checkpoints.semantic_codebook import (
    fit_codebook, layer_features_of_rows, stacked_layer_features, with_codebook,
)
from modeling_moe_audio.data.audio import decode_audio_item
from modeling_moe_audio.data.collator import MoEAudioDataCollator
from modeling_moe_audio.data.manifest import load_manifest
from modeling_moe_audio.presets import load_config

from helpers import moe_audio, moe_audio_result, parse_train_args
from remote_code import run_without_package


CODEBOOK_SIZE, LAYER, SEED = 8, 1, 3  # the tiny encoder has one layer: hidden_states[1] is its (normed) output


@pytest.fixture(scope="module")
def corpus(make_corpus):
    return make_corpus(seed=7, sizes={"train": 6, "validation": 2, "test": 4})


@pytest.fixture(scope="module")
def fitted(tiny_checkpoint, corpus, tmp_path_factory):
    """`moe-audio semantic-fit` of the tiny checkpoint on the corpus's training rows. Read-only."""
    output = tmp_path_factory.mktemp("semantic-fit") / "fitted"
    moe_audio("semantic-fit", tiny_checkpoint, corpus["train"], "--codebook-size", CODEBOOK_SIZE, "--layer", LAYER,
              "--output_dir", output, "--seed", SEED, "--no_progress")
    return output


@pytest.fixture(scope="module")
def with_stream(tmp_path_factory):
    """A tiny checkpoint with a semantic stream of 16 ids and no codebook (ids from an external tokenizer), as
    `moe-audio init --semantic_vocab_size` writes it."""
    folder = tmp_path_factory.mktemp("with-stream") / "tiny"
    moe_audio("init", "--config", "tiny-4s", "--semantic_vocab_size", 16, "--output_dir", folder, "--no_progress")
    config = json.loads((folder / "config.json").read_text())
    assert config["semantic_vocab_size"] == 16 and config.get("semantic_codebook_layer") is None
    return folder


def rows_of(manifest, processor=None, seed=None, vocab_size=16):
    """The manifest's rows; with a `processor`, each carrying random ids (one per audio token of each clip)."""
    rows = list(load_manifest(manifest)[0])
    if processor is None:
        return rows
    generator = np.random.default_rng(seed)
    return [{**row, "semantic_ids": [generator.integers(0, vocab_size, processor.audio_token_count(
        decode_audio_item(item).shape[0])).tolist() for item in row["audio"]]} for row in rows]


def ids_entering_the_frontend(model, batch) -> torch.Tensor:
    """The semantic ids the model's frontend receives for `batch` (a forward hook reads its second argument)."""
    seen = []
    hook = model.model.frontend.register_forward_hook(lambda module, args, output: seen.append(args[1]))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        hook.remove()
    return seen[0]


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


# --- moe-audio semantic-fit ------------------------------------------------------------------------------------------


def test_semantic_fit_help(capsys):
    result = moe_audio_result(capsys, "semantic-fit", "--help")
    assert result.returncode == 0
    for option in ("--codebook_size", "--layer", "--output_dir", "--limit", "--batch_size", "--seed", "--overwrite",
                   "--no_progress"):
        assert option in result.stdout
    assert "not one" in " ".join(result.stdout.split())  # the limit, stated: a stand-in for a trained tokenizer


def test_semantic_fit_writes_a_new_checkpoint_with_the_codebook(fitted, tiny_checkpoint):
    config = json.loads((fitted / "config.json").read_text())
    assert config["semantic_vocab_size"] == CODEBOOK_SIZE and config["semantic_codebook_layer"] == LAYER
    assert json.loads((tiny_checkpoint / "config.json").read_text()).get("semantic_vocab_size", 0) == 0
    weights = load_file(fitted / "model.safetensors")
    codebook = weights["model.frontend.semantic_codebook"]
    width = 4 * load_config("tiny-4s").audio_config.d_model
    assert codebook.shape == (CODEBOOK_SIZE, width)
    assert len({tuple(row.tolist()) for row in codebook}) == CODEBOOK_SIZE  # k distinct centres, not the zeros
    assert torch.count_nonzero(weights["model.frontend.semantic_embeddings.weight"]) == 0
    for name in CODE_FILES:  # the checkpoint carries the code that computes the ids
        assert (fitted / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()
    assert (fitted / "processor_config.json").is_file() and (fitted / "README.md").is_file()


def test_semantic_fit_refuses_what_it_cannot_do(capsys, tiny_checkpoint, corpus, tmp_path):
    args = ["semantic-fit", tiny_checkpoint, corpus["train"], "--layer", LAYER]
    assert "is the checkpoint itself" in moe_audio_result(
        capsys, *args, "--codebook_size", 4, "--output_dir", tiny_checkpoint, "--overwrite").stderr
    assert "--layer 5 is not an encoder layer" in moe_audio_result(
        capsys, *args[:3], "--layer", 5, "--codebook_size", 4, "--output_dir", tmp_path / "a").stderr
    assert "fewer than the 100000 codebook entries" in moe_audio_result(
        capsys, *args, "--codebook_size", 100000, "--output_dir", tmp_path / "b", "--no_progress").stderr


# --- the codebook in the model -----------------------------------------------------------------------------------


def test_model_ids_are_kmeans_predict_of_the_fitted_codebook(fitted, corpus):
    """(a) The ids the model computes, from the same encoder pass, are what scikit-learn's `KMeans.predict` gives on
    the stacked layer-L features; refitting as semantic-fit did gives its codebook back."""
    model, processor = MoEAudioForCausalLM.from_pretrained(fitted).eval(), load_checkpoint(fitted)[1]
    train_rows = rows_of(corpus["train"])
    kmeans = fit_codebook(layer_features_of_rows(model, processor, train_rows, LAYER, len(train_rows)), CODEBOOK_SIZE,
                          SEED)
    np.testing.assert_allclose(kmeans.cluster_centers_, model.model.frontend.semantic_codebook.numpy(), rtol=1e-6)

    test_rows = rows_of(corpus["test"])
    computed = ids_entering_the_frontend(model, MoEAudioDataCollator(processor)(test_rows))
    clips = [decode_audio_item(item) for row in test_rows for item in row["audio"]]
    expected = kmeans.predict(stacked_layer_features(model, processor, clips, LAYER).numpy())
    assert computed.tolist() == expected.tolist()
    assert len(set(expected.tolist())) > 1  # not one id for everything


def test_ids_given_or_computed_save_load_and_load_as_remote_code_alike(fitted, corpus, tmp_path):
    """(b) A dual-stream checkpoint round-trips through save/load and through trust_remote_code with identical
    logits, with the ids given and with the ids computed by its codebook."""
    model, processor = MoEAudioForCausalLM.from_pretrained(fitted).eval(), load_checkpoint(fitted)[1]
    with torch.no_grad():  # as if trained: zero embeddings would hide which ids the model used
        model.model.frontend.semantic_embeddings.weight.normal_(generator=torch.Generator().manual_seed(0))
    collate = MoEAudioDataCollator(processor)
    computed_batch = collate(rows_of(corpus["test"]))
    given_batch = collate(rows_of(corpus["test"], processor, seed=0, vocab_size=CODEBOOK_SIZE))
    assert "semantic_audio_ids" not in computed_batch and "semantic_audio_ids" in given_batch

    model.save_pretrained(tmp_path / "resaved")
    reloaded = MoEAudioForCausalLM.from_pretrained(tmp_path / "resaved").eval()
    torch.testing.assert_close(reloaded.model.frontend.semantic_codebook, model.model.frontend.semantic_codebook,
                               rtol=0, atol=0)
    batches = {"computed": dict(computed_batch), "given": dict(given_batch)}
    expected = {name: logits(model, batch) for name, batch in batches.items()}
    for name, batch in batches.items():
        torch.testing.assert_close(logits(reloaded, batch), expected[name], rtol=0, atol=0)
    # The remote-code client, in a process where this package cannot be imported: only the checkpoint's code runs.
    torch.save({"batches": batches, "logits": expected}, tmp_path / "expected.pt")
    output = run_without_package(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "resaved")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            for name, batch in expected["batches"].items():
                torch.testing.assert_close(model(**batch).logits, expected["logits"][name], rtol=0, atol=0)
        print("OK")
        """,
        cwd=tmp_path,
    )
    assert output.strip().endswith("OK")
    # The given ids are used: other ids, other logits; the codebook's own ids given, the logits of computing them.
    assert not torch.equal(logits(model, computed_batch), logits(model, given_batch))
    padded = torch.zeros_like(given_batch["semantic_audio_ids"])
    _, _, token_mask, _ = model.model.encode_audio(computed_batch["input_features"],
                                                   computed_batch["input_features_mask"])
    padded[token_mask] = ids_entering_the_frontend(model, computed_batch)
    torch.testing.assert_close(logits(model, {**computed_batch, "semantic_audio_ids": padded}),
                               logits(model, computed_batch), rtol=0, atol=0)


def test_a_fitted_checkpoint_answers_as_the_old_one_until_trained(fitted, tiny_checkpoint, with_stream, corpus):
    """(d) Zero-initialised semantic embeddings: the new checkpoint's outputs equal the old one's exactly; an old
    stream of the same size keeps its embeddings, one of another size starts at zero."""
    old, processor = load_checkpoint(tiny_checkpoint)
    new = MoEAudioForCausalLM.from_pretrained(fitted).eval()
    batch = MoEAudioDataCollator(processor)(rows_of(corpus["test"]))
    torch.testing.assert_close(logits(new, batch), logits(old.eval(), batch), rtol=0, atol=0)
    assert len(set(ids_entering_the_frontend(new, batch).tolist())) > 1  # the ids are there, their embeddings zero

    streamed = load_checkpoint(with_stream, with_processor=False)[0]
    embeddings = streamed.model.frontend.semantic_embeddings.weight
    assert torch.equal(with_codebook(streamed, 16, LAYER).model.frontend.semantic_embeddings.weight, embeddings)
    assert torch.count_nonzero(with_codebook(streamed, 32, LAYER).model.frontend.semantic_embeddings.weight) == 0


# --- training and evaluation with ids in the data -----------------------------------------------------------------


def test_training_on_rows_with_inline_and_npy_ids_moves_the_semantic_embeddings(with_stream, corpus, tmp_path):
    """(c) The real Trainer (`moe-audio train`'s `train`) on a manifest whose rows carry ids inline and in .npy
    files: the ids reach the model (which refuses to run without them) and its semantic embeddings learn."""
    from modeling_moe_audio.training.trainer import train

    data = shutil.copytree(corpus["train"].parent, tmp_path / "corpus")
    processor = AutoProcessor.from_pretrained(with_stream, trust_remote_code=True)
    lines = []
    for index, row in enumerate(rows_of(corpus["train"], processor, seed=1)):
        raw = json.loads(corpus["train"].read_text().splitlines()[index])
        ids = row["semantic_ids"][0]
        if index % 2:
            np.save(data / f"ids-{index}.npy", np.asarray(ids, dtype=np.int32))
            ids = f"ids-{index}.npy"
        lines.append(json.dumps({**raw, "semantic_ids": ids}))
    manifest = data / "with-ids.jsonl"
    manifest.write_text("\n".join(lines) + "\n")

    script_args, training_args = parse_train_args(with_stream, {"train": manifest}, tmp_path / "run", "--max_steps",
                                                  "2", "--per_device_train_batch_size", "3", "--learning_rate", "0.01")
    train(script_args, training_args)
    key = "model.frontend.semantic_embeddings.weight"
    before, after = load_file(with_stream / "model.safetensors")[key], load_file(tmp_path / "run" / "model.safetensors")[key]
    assert before.shape == after.shape == (16, load_config("tiny-4s").audio_hidden_size)
    assert not torch.equal(before, after)


def test_evaluate_passes_each_items_ids_to_the_model(with_stream, corpus, tmp_path):
    """`moe-audio evaluate`'s run on benchmark items carrying ids: a model without a codebook answers only if they
    reach it. And ids outside its vocabulary are refused before any question is asked."""
    from modeling_moe_audio.evaluation.scoring import run_evaluation

    processor = AutoProcessor.from_pretrained(with_stream, trust_remote_code=True)
    rows = rows_of(corpus["test"], processor, seed=2)[:2]
    items = [{"audio_id": row["audio"][0], "question": "Which?", "choices": ["speech", "music"], "answer": "music",
              "semantic_ids": row["semantic_ids"][0]} for row in rows]
    (tmp_path / "mmau.json").write_text(json.dumps(items))
    results = run_evaluation(with_stream, tmp_path / "mmau.json", max_new_tokens=2, progress=False)
    assert results["evaluation"]["num_items"] == 2

    (tmp_path / "big.json").write_text(json.dumps([{**item, "semantic_ids": [16] * len(item["semantic_ids"])}
                                                   for item in items]))
    with pytest.raises(ValueError, match=r"outside the model's semantic vocabulary \(0 to 15\)"):
        run_evaluation(with_stream, tmp_path / "big.json", max_new_tokens=2, progress=False)


def test_generate_answers_passes_each_rows_ids(with_stream, corpus):
    from modeling_moe_audio.evaluation.generation import generate_answers

    model, processor = load_checkpoint(with_stream)
    rows = rows_of(corpus["test"], processor, seed=4)[:2]
    assert len(generate_answers(model, processor, rows, max_new_tokens=2)) == 2
    with pytest.raises(ValueError, match="no codebook to compute them"):
        generate_answers(model, processor, rows_of(corpus["test"])[:1], max_new_tokens=2)


def test_the_pipeline_passes_ids_in_audio_blocks_and_a_codebook_model_needs_none(with_stream, fitted, corpus):
    """`pipeline("any-to-any")`: a block's `semantic_ids` reach the model's frontend; a model with a codebook computes
    its own ids from the audio alone."""
    from transformers import pipeline

    clip = rows_of(corpus["test"])[0]["audio"][0]
    processor = AutoProcessor.from_pretrained(with_stream, trust_remote_code=True)
    count = processor.audio_token_count(decode_audio_item(clip).shape[0])

    def chat(**ids):
        return [{"role": "user", "content": [{"type": "audio", "path": clip, **ids},
                                             {"type": "text", "text": "What is said?"}]}]

    pipe = pipeline("any-to-any", model=str(with_stream), trust_remote_code=True)
    seen = []
    hook = pipe.model.model.frontend.register_forward_hook(lambda module, args, output: seen.append(args[1]))
    try:
        for value in (3, 11):
            pipe(text=chat(semantic_ids=[value] * count), max_new_tokens=2)
    finally:
        hook.remove()
    assert seen[0].tolist() == [3] * count and seen[-1].tolist() == [11] * count
    with pytest.raises(ValueError, match="no codebook to compute them"):
        pipe(text=chat(), max_new_tokens=2)

    fitted_pipe = pipeline("any-to-any", model=str(fitted), trust_remote_code=True)
    computed = []
    hook = fitted_pipe.model.model.frontend.register_forward_hook(lambda module, args, output: computed.append(args[1]))
    try:
        answer = fitted_pipe(text=chat(), max_new_tokens=2, return_full_text=False)[0]["generated_text"]
    finally:
        hook.remove()
    assert isinstance(answer, str) and computed[0].shape == (count,)
    assert int(computed[0].max()) < CODEBOOK_SIZE
