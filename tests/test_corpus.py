"""The built-in corpus: deterministic, balanced, disjoint splits whose answers are in the audio, not in the text."""

import hashlib
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile

from modeling_moe_audio.data import corpus
from modeling_moe_audio.data.corpus import (
    ATTRIBUTE_TASKS,
    CATEGORIES,
    CATEGORY_TASK,
    SAMPLE_RATE,
    SPLITS,
    build_corpus,
    generate_split,
    write_corpus,
)


SMALL_SIZES = {"train": 40, "validation": 12, "test": 22}
TASKS = {CATEGORY_TASK.name: CATEGORY_TASK} | {task.name: task for tasks in ATTRIBUTE_TASKS.values() for task in tasks}
# Enough clips per attribute value (about 45 and 22 per value of a three-way task) for a classifier to be measured.
PROBE_TRAIN_EXAMPLES, PROBE_TEST_EXAMPLES = 1600, 800


@pytest.fixture(scope="module")
def small_corpus():
    return build_corpus(seed=3, sizes=SMALL_SIZES)


@pytest.fixture(scope="module")
def probe_train():
    return generate_split("train", PROBE_TRAIN_EXAMPLES, seed=0)


@pytest.fixture(scope="module")
def probe_test():
    return generate_split("test", PROBE_TEST_EXAMPLES, seed=0)


def audio_digest(audio: np.ndarray) -> str:
    return hashlib.sha256(audio.tobytes()).hexdigest()


def example_fields(example) -> tuple:
    return (example.clip_id, example.category, example.attributes, example.question, example.answer, example.task)


def assert_same_examples(first, second):
    assert [example_fields(e) for e in first] == [example_fields(e) for e in second]
    assert [audio_digest(e.audio) for e in first] == [audio_digest(e.audio) for e in second]


# ----------------------------------------------------------------------------------------------------------------
# The module itself
# ----------------------------------------------------------------------------------------------------------------


def test_corpus_module_loads_without_torch_or_transformers():
    """Data preparation must not pay for (or depend on) the model stack: load corpus.py alone in a fresh Python."""
    path = Path(corpus.__file__)
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('corpus_alone', {str(path)!r})\n"
        "module = sys.modules['corpus_alone'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.generate_split('train', 8)\n"
        "loaded = [name for name in ('torch', 'transformers', 'modeling_moe_audio') if name in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# ----------------------------------------------------------------------------------------------------------------
# Determinism, shape and splits
# ----------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_corpus(small_corpus):
    again = build_corpus(seed=3, sizes=SMALL_SIZES)
    for split in SPLITS:
        assert_same_examples(small_corpus[split], again[split])


def test_different_seeds_give_different_corpora(small_corpus):
    other = build_corpus(seed=4, sizes=SMALL_SIZES)
    for split in SPLITS:
        ours = {audio_digest(e.audio) for e in small_corpus[split]}
        theirs = {audio_digest(e.audio) for e in other[split]}
        assert not ours & theirs
        assert [e.answer for e in small_corpus[split]] != [e.answer for e in other[split]]


def test_a_smaller_split_is_a_prefix_of_a_larger_one(probe_train):
    """Each clip depends only on its index, so growing a split never changes the clips already in it."""
    assert_same_examples(generate_split("train", 37, seed=0), probe_train[:37])


def test_examples_are_well_formed(small_corpus):
    for split, examples in small_corpus.items():
        assert len(examples) == SMALL_SIZES[split]
        for example in examples:
            task = TASKS[example.task]
            assert example.clip_id.startswith(f"{split}-")
            assert example.category in CATEGORIES
            assert example.question == task.question
            assert example.answer in task.answers and f" {example.answer}" in example.question
            assert example.answer == example.answer.lower() and " " not in example.answer
            expected = example.category if task is CATEGORY_TASK else example.attributes[example.task]
            assert example.answer == expected
            assert set(example.attributes) == {t.name for t in ATTRIBUTE_TASKS[example.category]}
            audio = example.audio
            assert audio.dtype == np.float32 and audio.ndim == 1
            assert 1.0 <= len(audio) / SAMPLE_RATE <= 3.0
            assert 0.0 < np.max(np.abs(audio)) <= 1.0


def test_each_clip_is_asked_its_category_and_every_attribute(probe_train):
    by_clip = defaultdict(list)
    for example in probe_train:
        by_clip[example.clip_id].append(example)
    *complete, _ = by_clip.values()  # the last clip may be cut short by the example count
    for examples in complete:
        assert [e.task for e in examples] == ["category"] + [t.name for t in ATTRIBUTE_TASKS[examples[0].category]]
        assert len({audio_digest(e.audio) for e in examples}) == 1


def test_clips_vary_in_what_is_not_asked(probe_train):
    """Level, length and onset vary at random, so no clip can be recognised by anything but what is asked."""
    clips = {e.clip_id: e for e in probe_train if e.category != "sound"}.values()
    peaks_db = [20 * np.log10(np.max(np.abs(e.audio))) for e in clips]
    durations = [e.duration for e in clips]
    assert np.ptp(peaks_db) > 15.0 and np.ptp(durations) > 1.0
    assert len({audio_digest(e.audio) for e in clips}) == len(clips)


def test_splits_share_no_clip_and_no_audio(small_corpus):
    ids = {split: {e.clip_id for e in examples} for split, examples in small_corpus.items()}
    digests = {split: {audio_digest(e.audio) for e in examples} for split, examples in small_corpus.items()}
    for first, second in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not ids[first] & ids[second]
        assert not digests[first] & digests[second]


def test_categories_and_answers_are_balanced(probe_train):
    clips = {e.clip_id: e for e in probe_train}.values()
    categories = Counter(e.category for e in clips)
    assert set(categories) == set(CATEGORIES)
    assert max(categories.values()) - min(categories.values()) <= 2
    for name, task in TASKS.items():
        answers = Counter(e.answer for e in probe_train if e.task == name)
        assert set(answers) == set(task.answers), name
        assert max(answers.values()) - min(answers.values()) <= 2, (name, answers)


def test_the_question_text_alone_cannot_answer(probe_train):
    by_question = defaultdict(list)
    for example in probe_train:
        by_question[example.question].append(example.answer)
    assert len(by_question) == len(TASKS)
    for question, answers in by_question.items():
        most_common_share = Counter(answers).most_common(1)[0][1] / len(answers)
        assert len(answers) >= 100 and most_common_share <= 0.6, question


# ----------------------------------------------------------------------------------------------------------------
# The answers are in the audio: a nearest-centroid classifier on log-mel statistics
# ----------------------------------------------------------------------------------------------------------------


def log_mels(clips: list[np.ndarray]) -> list[np.ndarray]:
    """Whisper's 80-band log-mel (the model's own front end), one (80, frames) array per clip, padding cut off."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80)
    batch = extractor(clips, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="np")["input_features"]
    return [features[:, : len(clip) // extractor.hop_length] for features, clip in zip(batch, clips)]


def clip_descriptor(log_mel: np.ndarray) -> np.ndarray:
    """Statistics a listener would use: the spectrum of the sounding frames (timbre, pitch, vowel, source), how it
    moves from the first to the last third (melody), and the level envelope (onsets: syllables, notes, events;
    loudness)."""
    band_power = 10.0 ** (4.0 * log_mel - 4.0)  # undo Whisper's (log10 + 4) / 4 scaling
    level_db = 10.0 * np.log10(band_power.mean(axis=0))
    sounding = level_db > level_db.max() - 30.0
    frames = log_mel[:, sounding]
    third = max(1, frames.shape[1] // 3)
    spectrum = frames.mean(axis=1)
    movement = frames[:, -third:].mean(axis=1) - frames[:, :third].mean(axis=1)
    smoothed = np.convolve(np.pad(level_db, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    loud = smoothed > smoothed.max() - 15.0
    onsets = int(loud[0]) + np.count_nonzero(loud[1:] & ~loud[:-1])
    first, last = np.flatnonzero(sounding)[[0, -1]]
    span_seconds = (last - first + 1) / 100.0
    envelope = [
        onsets,
        onsets / span_seconds,
        span_seconds,
        level_db.max(),
        level_db[sounding].mean(),
        level_db[sounding].std(),
        sounding.mean(),
    ]
    return np.concatenate([spectrum, movement, envelope])


class NearestCentroid:
    """Nearest class mean under a shrunk within-class (Mahalanobis) metric.

    Plain Euclidean distance lets the many bands that vary for reasons a task does not ask about drown the few
    that answer it; whitening by the within-class spread weighs each feature by how reliable it is, and shrinkage
    toward the identity keeps that estimate stable with fewer clips than features.
    """

    def __init__(self, shrinkage: float = 0.1):
        self.shrinkage = shrinkage

    def fit(self, features: np.ndarray, labels: list[str]) -> "NearestCentroid":
        self.mean, self.scale = features.mean(axis=0), features.std(axis=0) + 1e-6
        standard = (features - self.mean) / self.scale
        labels = np.asarray(labels)
        self.classes = sorted(set(labels))
        self.centroids = np.stack([standard[labels == c].mean(axis=0) for c in self.classes])
        residuals = standard - self.centroids[[self.classes.index(label) for label in labels]]
        within = residuals.T @ residuals / len(standard)
        self.metric = np.linalg.inv((1 - self.shrinkage) * within + self.shrinkage * np.eye(len(within)))
        return self

    def predict(self, features: np.ndarray) -> list[str]:
        offsets = ((features - self.mean) / self.scale)[:, None, :] - self.centroids[None]
        distances = np.einsum("nkd,de,nke->nk", offsets, self.metric, offsets)
        return [self.classes[i] for i in distances.argmin(axis=1)]


def probe(train_examples, test_examples, task_names) -> dict[str, float]:
    """Accuracy per task of a classifier fitted on the train split's clips and scored on the test split's."""
    clips = {e.clip_id: e.audio for e in train_examples + test_examples}
    descriptors = dict(zip(clips, (clip_descriptor(m) for m in log_mels(list(clips.values())))))
    accuracies = {}
    for name in task_names:
        train = [e for e in train_examples if e.task == name]
        test = [e for e in test_examples if e.task == name]
        classifier = NearestCentroid().fit(np.stack([descriptors[e.clip_id] for e in train]), [e.answer for e in train])
        predicted = classifier.predict(np.stack([descriptors[e.clip_id] for e in test]))
        accuracies[name] = float(np.mean([p == e.answer for p, e in zip(predicted, test)]))
    print("log-mel nearest-centroid accuracy per task:", json.dumps(accuracies))
    return accuracies


@pytest.fixture(scope="module")
def probe_accuracies(probe_train, probe_test):
    return probe(probe_train, probe_test, TASKS)


@pytest.mark.parametrize("task", list(TASKS))
def test_the_answers_are_in_the_audio(probe_accuracies, task):
    assert probe_accuracies[task] >= (0.9 if task == CATEGORY_TASK.name else 0.8)


# ----------------------------------------------------------------------------------------------------------------
# Writing to disk
# ----------------------------------------------------------------------------------------------------------------


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_corpus_writes_wavs_and_manifests(tmp_path, small_corpus):
    output = tmp_path / "corpus"
    manifests = write_corpus(output, seed=3, sizes=SMALL_SIZES)
    assert manifests == {split: output / f"{split}.jsonl" for split in SPLITS}
    for split, examples in small_corpus.items():
        rows = read_manifest(manifests[split])
        assert len(rows) == len(examples)
        for row, example in zip(rows, examples):
            assert row == {
                "audio": f"audio/{split}/{example.clip_id}.wav",
                "prompt": example.question,
                "response": example.answer,
                "category": example.category,
                "task": example.task,
                "attributes": example.attributes,
            }
            audio, rate = soundfile.read(manifests[split].parent / row["audio"], dtype="float32")
            assert rate == SAMPLE_RATE and audio.ndim == 1 and len(audio) == len(example.audio)
            np.testing.assert_allclose(audio, example.audio, atol=1.0 / 2**15)
        assert soundfile.info(str(output / rows[0]["audio"])).subtype == "PCM_16"
        clip_ids = {e.clip_id for e in examples}
        assert {p.stem for p in (output / "audio" / split).iterdir()} == clip_ids  # each clip written once


def test_write_corpus_refuses_a_non_empty_folder(tmp_path):
    output = tmp_path / "corpus"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    before = folder_snapshot(output)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_corpus(output, sizes=SMALL_SIZES)
    assert folder_snapshot(output) == before


def test_write_corpus_refuses_a_file_in_place_of_the_folder(tmp_path):
    output = tmp_path / "corpus"
    output.write_text("not a folder")
    with pytest.raises(FileExistsError, match="not a folder"):
        write_corpus(output, sizes=SMALL_SIZES)


def test_overwrite_replaces_the_corpus_and_leaves_other_files(tmp_path):
    output = tmp_path / "corpus"
    write_corpus(output, seed=0, sizes={"train": 16, "validation": 8, "test": 8})
    (output / "notes.txt").write_text("keep me")
    smaller = {"train": 8, "validation": 4, "test": 4}
    manifests = write_corpus(output, seed=5, sizes=smaller, overwrite=True)
    expected = build_corpus(seed=5, sizes=smaller)
    for split in SPLITS:
        assert [row["response"] for row in read_manifest(manifests[split])] == [e.answer for e in expected[split]]
        assert {p.stem for p in (output / "audio" / split).iterdir()} == {e.clip_id for e in expected[split]}
    assert (output / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: generate_split("dev", 8), "Unknown split 'dev'"),
        (lambda: generate_split("train", 0), "num_examples must be a positive integer"),
        (lambda: generate_split("train", -3), "num_examples must be a positive integer"),
        (lambda: generate_split("train", 2.5), "num_examples must be a positive integer"),
        (lambda: generate_split("train", 8, seed=-1), "seed must be a non-negative integer"),
        (lambda: build_corpus(sizes={"dev": 8}), "Unknown split"),
        (lambda: build_corpus(sizes={"train": 0}), r"sizes\['train'\] must be a positive integer"),
        (lambda: build_corpus(seed="0"), "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_write_corpus_checks_arguments_before_touching_the_disk(tmp_path):
    output = tmp_path / "corpus"
    with pytest.raises(ValueError, match="positive integer"):
        write_corpus(output, sizes={"test": -1})
    assert not output.exists()


def test_export_mmau_feeds_the_evaluation_loader(tmp_path):
    from modeling_moe_audio.data.corpus import export_mmau, write_corpus
    from modeling_moe_audio.evaluation import load_items

    manifests = write_corpus(tmp_path / "corpus", seed=2, sizes={"train": 4, "validation": 4, "test": 8})
    path = export_mmau(manifests["test"], tmp_path / "mmau" / "test.json")
    items = load_items(path, format="mmau")
    rows = [json.loads(line) for line in manifests["test"].read_text().splitlines()]
    assert len(items) == len(rows) == 8
    for item, row in zip(items, rows):
        assert item.options[item.answer_index] == row["response"] and item.task == row["category"]
        assert Path(item.audio).resolve() == (manifests["test"].parent / row["audio"]).resolve()


# ----------------------------------------------------------------------------------------------------------------
# The conflict variant: what is said, and how and over what it is said, asked of the same clips
# ----------------------------------------------------------------------------------------------------------------

CONFLICT_TASK_NAMES = sorted({task.name for tasks in corpus.CONFLICT_TASKS.values() for task in tasks})


@pytest.fixture(scope="module")
def conflict_train():
    return generate_split("train", 1200, seed=0, progress=False, variant="conflict")


@pytest.fixture(scope="module")
def conflict_test():
    return generate_split("test", 600, seed=0, progress=False, variant="conflict")


def test_conflict_variant_asks_content_and_properties_of_the_same_speech_clips(conflict_train):
    by_clip = defaultdict(list)
    for example in conflict_train:
        by_clip[example.clip_id].append(example)
    speech = [examples for examples in by_clip.values() if examples[0].kind == "speech"]
    assert len(speech) > len(by_clip) / 3  # half the clips are speech
    for examples in speech[:-1]:  # the last clip may be cut short
        assert [e.category for e in examples] == ["content", "paralinguistic", "paralinguistic", "acoustic"]
        assert examples[0].task == "word" and examples[0].answer == examples[0].attributes["word"]
        assert "vowel" not in examples[0].attributes and "syllables" not in examples[0].attributes
    for name in CONFLICT_TASK_NAMES:  # every answer of every question comes up about equally often
        counts = Counter(e.answer for e in conflict_train if e.task == name)
        assert max(counts.values()) - min(counts.values()) <= 0.1 * max(counts.values()) + 2, (name, counts)
    # The conflict variant is drawn from streams of its own: it shares no audio with the default corpus.
    default_audio = {audio_digest(e.audio) for e in generate_split("train", 60, seed=0, progress=False)}
    assert default_audio.isdisjoint(audio_digest(e.audio) for e in conflict_train[:60])


def test_the_word_is_in_the_order_of_the_vowels():
    """'ia' and 'ai' hold the same two vowels: only their order tells them apart. /i/ has its second formant near
    2.3 kHz and /a/ near 1.1 kHz, so the 2-2.6 kHz band is louder in the first half of 'ia' than in its second half,
    and the other way round for 'ai'."""

    def high_band_share(audio):
        spectrum = np.abs(np.fft.rfft(audio)) ** 2
        frequencies = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
        return spectrum[(frequencies > 2000) & (frequencies < 2600)].sum() / spectrum[frequencies < 4000].sum()

    for word, first_is_i in (("ia", True), ("ai", False)):
        audio = corpus.render_speech({"pitch": "low", "word": word}, np.random.default_rng(7))
        voiced = np.flatnonzero(np.abs(audio) > 0.05 * np.abs(audio).max())
        middle = (voiced[0] + voiced[-1]) // 2
        first, second = high_band_share(audio[voiced[0]:middle]), high_band_share(audio[middle:voiced[-1]])
        assert (first > 2 * second) if first_is_i else (second > 2 * first), (word, first, second)


def test_a_background_sits_under_the_voice():
    attributes = {"pitch": "high", "word": "au", "loudness": "loud"}
    quiet = corpus.render_clip("speech", {**attributes, "background": "nothing"}, np.random.default_rng(3))
    rainy = corpus.render_clip("speech", {**attributes, "background": "rain"}, np.random.default_rng(3))
    assert not np.array_equal(quiet, rainy)
    voice = corpus.render_speech(attributes, np.random.default_rng(0))
    mixed = corpus._with_background(voice, "engine", np.random.default_rng(1))
    below_db = corpus._max_short_term_rms_db(voice) - corpus._max_short_term_rms_db(mixed - voice)
    low, high = corpus.BACKGROUND_BELOW_VOICE_DB
    assert low - 1 <= below_db <= high + 1


@pytest.fixture(scope="module")
def conflict_probe_accuracies(conflict_train, conflict_test):
    return probe(conflict_train, conflict_test, CONFLICT_TASK_NAMES)


@pytest.mark.parametrize("task", CONFLICT_TASK_NAMES)
def test_the_conflict_variants_answers_are_in_the_audio(conflict_probe_accuracies, task):
    assert conflict_probe_accuracies[task] >= 0.8


def test_write_corpus_conflict_variant_and_a_bad_variant(tmp_path):
    manifests = write_corpus(tmp_path / "c", seed=1, sizes={"train": 8, "validation": 4, "test": 4}, progress=False,
                             variant="conflict")
    rows = read_manifest(manifests["train"])
    assert {row["category"] for row in rows} <= {"content", "paralinguistic", "acoustic"}
    assert all(row["kind"] in CATEGORIES for row in rows)
    assert "test_text" not in write_corpus(tmp_path / "default", seed=1, sizes={"train": 4, "validation": 4, "test": 4},
                                           progress=False)
    with pytest.raises(ValueError, match="Unknown corpus variant 'conflcit'; choose one of default, conflict"):
        write_corpus(tmp_path / "d", variant="conflcit")
    assert not (tmp_path / "d").exists()


def test_the_conflict_variant_writes_the_text_form_of_each_word_question(tmp_path):
    """For the modality gap: each word question is also asked with the word written out and no audio, in training
    beside its audio row, and for the test split in its own manifest, in the test split's order."""
    sizes = {"train": 24, "validation": 8, "test": 24}
    manifests = write_corpus(tmp_path / "c", seed=2, sizes=sizes, progress=False, variant="conflict")
    train = read_manifest(manifests["train"])
    audio_rows = [row for row in train if row["form"] == "audio"]
    assert len(audio_rows) == sizes["train"]  # the text rows come on top of the requested size
    for index, row in enumerate(train):
        if row["form"] == "text":
            spoken = train[index - 1]
            assert spoken["task"] == "word" and "audio" in spoken and "audio" not in row
            assert row["conversation"][1]["content"] == spoken["response"] == spoken["attributes"]["word"]
            assert row["conversation"][0]["content"] == corpus.TEXT_FORM.format(word=spoken["response"],
                                                                                 question=spoken["prompt"])
    assert sum(row["form"] == "text" for row in train) == sum(row["task"] == "word" for row in audio_rows) > 0
    test_words = [row for row in read_manifest(manifests["test"]) if row["task"] == "word"]
    text_test = read_manifest(manifests["test_text"])
    assert manifests["test_text"] == tmp_path / "c" / "test-text.jsonl"
    assert [row["attributes"] for row in text_test] == [row["attributes"] for row in test_words]
    assert all(row["form"] == "text" and row["category"] == "content" for row in text_test)
    assert all(row["form"] == "audio" for row in read_manifest(manifests["validation"]))
    # The text rows load as rows without audio, which train and answer like any other.
    from modeling_moe_audio.data.manifest import load_rows

    loaded = load_rows(manifests["test_text"])
    assert all(row["audio"] == [] for row in loaded) and len(loaded) == len(text_test)
    with pytest.raises(ValueError, match="Unknown corpus variant 'conflcit'; choose one of default, conflict"):
        write_corpus(tmp_path / "d", variant="conflcit")
    assert not (tmp_path / "d").exists()
