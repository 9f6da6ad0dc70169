"""A built-in audio question-answering corpus, generated procedurally, that needs no download and no system package.

Training and testing the audio path end to end needs audio whose answers can only be heard, not read: each clip is
synthesised from a seed (speech-like vowels, melodies, environmental sounds), and each question text is asked of
many clips with different answers, so a model that ignores the audio scores at chance.

Only numpy (soundfile to write WAVs, tqdm for the progress bar) is used; this module imports neither torch nor
transformers, so the corpus can be built in a data-preparation step or a worker without the model stack.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm


SAMPLE_RATE = 16_000
CATEGORIES = ("speech", "music", "sound")
SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {"train": 1200, "validation": 150, "test": 300}

MIN_CLIP_SECONDS = 1.0
MAX_CLIP_SECONDS = 3.0


# ----------------------------------------------------------------------------------------------------------------
# Questions and their closed answer sets
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One question, asked verbatim of many clips; the text lists its answers so exact-match scoring is fair."""

    name: str
    question: str
    answers: tuple[str, ...]


CATEGORY_TASK = Task(
    "category", "What kind of audio is this? Answer with one word: speech, music or sound.", CATEGORIES
)

ATTRIBUTE_TASKS: dict[str, tuple[Task, ...]] = {
    "speech": (
        Task("pitch", "Is the voice high or low? Answer with one word: high or low.", ("high", "low")),
        Task("vowel", "Which vowel does the voice say? Answer with one word: a, i or u.", ("a", "i", "u")),
        Task(
            "syllables",
            "How many syllables does the voice say? Answer with one word: one, two or three.",
            ("one", "two", "three"),
        ),
    ),
    "music": (
        Task(
            "instrument",
            "Which instrument is playing? Answer with one word: flute, organ or bell.",
            ("flute", "organ", "bell"),
        ),
        Task("tempo", "Is the tempo fast or slow? Answer with one word: fast or slow.", ("fast", "slow")),
        Task(
            "melody",
            "Is the melody rising or falling? Answer with one word: rising or falling.",
            ("rising", "falling"),
        ),
    ),
    "sound": (
        Task(
            "source",
            "What is making this sound? Answer with one word: rain, wind, siren, knock or engine.",
            ("rain", "wind", "siren", "knock", "engine"),
        ),
        Task("loudness", "Is the sound loud or quiet? Answer with one word: loud or quiet.", ("loud", "quiet")),
        Task(
            "events",
            "How many separate sounds do you hear? Answer with one word: one, two or three.",
            ("one", "two", "three"),
        ),
    ),
}

COUNT_WORDS = {"one": 1, "two": 2, "three": 3}

# The "conflict" variant: the same speech clips are asked what is said (content: a two-vowel word, whose answer lies
# in the order of the formants over time) and how and over what it is said (pitch and loudness: paralinguistic;
# the background sound: acoustic), beside music and sound clips asked their acoustic properties. One adapter must
# keep both kinds of feature, the setting in which the paper locates gradient conflict (its section 5).
WORDS = ("ai", "ia", "au", "ua", "iu", "ui")
LOUDNESS_TASK = Task("loudness", "Is it loud or quiet? Answer with one word: loud or quiet.", ("loud", "quiet"))
CONFLICT_TASKS: dict[str, tuple[Task, ...]] = {
    "speech": (
        Task("word", f"Which word does the voice say? Answer with one word: {', '.join(WORDS[:-1])} or {WORDS[-1]}.",
             WORDS),
        ATTRIBUTE_TASKS["speech"][0],  # pitch
        LOUDNESS_TASK,
        Task("background", "What is heard behind the voice? Answer with one word: nothing, rain or engine.",
             ("nothing", "rain", "engine")),
    ),
    "music": (ATTRIBUTE_TASKS["music"][0], LOUDNESS_TASK),  # instrument
    "sound": (ATTRIBUTE_TASKS["sound"][0], LOUDNESS_TASK),  # source
}
# The category each question of the conflict variant is scored and analysed under.
CONFLICT_GROUPS = {("speech", "word"): "content", ("speech", "pitch"): "paralinguistic",
                   ("speech", "loudness"): "paralinguistic", ("speech", "background"): "acoustic",
                   ("music", "instrument"): "acoustic", ("music", "loudness"): "acoustic",
                   ("sound", "source"): "acoustic", ("sound", "loudness"): "acoustic"}
# Half the clips of the conflict variant are speech, so that a sixth of its questions ask for content.
CONFLICT_KINDS = ("speech", "speech", "music", "sound")
VARIANTS = ("default", "conflict")
# The text form of a word question: what the voice says, written out, then the same question. Its twin rows (no
# audio) are in the conflict variant's training split, so the LLM learns to answer from text as a pretrained one
# would, and in `test-text.jsonl`, where the modality gap (audio accuracy - text accuracy, the paper's Table 1) is
# measured on the same test questions.
TEXT_FORM = 'The voice says "{word}". {question}'
TEXT_TEST_MANIFEST = "test-text.jsonl"


def _conflict_attributes() -> dict[str, tuple[Task, ...]]:
    """Every attribute a clip of the conflict variant is rendered from: what is asked, and what the default variant
    draws for rendering (tempo, melody, number of events); a word replaces the vowel and the syllable count."""
    drawn = {}
    for kind, asked in CONFLICT_TASKS.items():
        tasks = {task.name: task for task in (*ATTRIBUTE_TASKS[kind], *asked)}
        drawn[kind] = tuple(task for name, task in tasks.items() if name not in ("vowel", "syllables"))
    return drawn


@dataclass(eq=False)  # numpy audio has no single truth value, so generated `==` would raise; compare fields instead
class CorpusExample:
    """One clip, one question about it, and the one-word answer."""

    clip_id: str
    category: str  # what the question is scored under: the clip's kind, or (conflict variant) the question's group
    attributes: dict
    question: str
    answer: str
    task: str
    audio: np.ndarray
    kind: str = ""  # speech, music or sound (the conflict variant; the default variant's category already says it)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


# ----------------------------------------------------------------------------------------------------------------
# Signal helpers
# ----------------------------------------------------------------------------------------------------------------


def _seconds(n: float) -> int:
    return int(round(n * SAMPLE_RATE))


def _db_to_amplitude(db: float) -> float:
    return 10.0 ** (db / 20.0)


def _filter(signal: np.ndarray, gain) -> np.ndarray:
    """Zero-phase filtering by a magnitude response `gain(frequencies_hz)`.

    Shaping the spectrum directly keeps the module free of scipy and makes formants and bands exact; the padding
    keeps the circular convolution's wrap-around out of the returned samples.
    """
    size = 1 << int(math.ceil(math.log2(len(signal) + 4096)))
    frequencies = np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
    return np.fft.irfft(np.fft.rfft(signal, size) * gain(frequencies), size)[: len(signal)]


def _resonance(frequencies: np.ndarray, centre: float, bandwidth: float) -> np.ndarray:
    """Magnitude of a second-order resonator (a formant, a body mode), 1 at 0 Hz."""
    return centre**2 / np.sqrt((centre**2 - frequencies**2) ** 2 + (bandwidth * frequencies) ** 2)


def _bandpass(frequencies: np.ndarray, centre: float, bandwidth: float) -> np.ndarray:
    """Magnitude of a second-order band-pass, 1 at `centre` and 0 at 0 Hz."""
    return bandwidth * frequencies / np.sqrt((centre**2 - frequencies**2) ** 2 + (bandwidth * frequencies) ** 2)


def _fade(length: int, attack: int, release: int) -> np.ndarray:
    """A gate with raised-cosine edges, so events start and stop without clicks."""
    envelope = np.ones(length)
    attack, release = min(attack, length // 2), min(release, length // 2)
    if attack:
        envelope[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, attack))
    if release:
        envelope[length - release :] = 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, release))
    return envelope


def _sequence(segments: list[np.ndarray], gaps: list[int]) -> np.ndarray:
    """Segments separated by silences; `gaps[i]` samples follow segment i."""
    pieces = []
    for segment, gap in zip(segments, gaps + [0]):
        pieces.extend([segment, np.zeros(gap)])
    return np.concatenate(pieces)


def _max_short_term_rms_db(signal: np.ndarray) -> float:
    """Level of the loudest 50 ms: comparable between a lone knock and a second of rain, unlike whole-clip RMS."""
    frame, hop = _seconds(0.05), _seconds(0.025)
    padded = np.pad(signal, (0, max(0, frame - len(signal))))
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop]
    return 10.0 * math.log10(float(np.max(np.mean(frames**2, axis=1))) + 1e-20)


# ----------------------------------------------------------------------------------------------------------------
# Speech: a glottal pulse train through vowel formants, cut into syllables
# ----------------------------------------------------------------------------------------------------------------

# Peterson & Barney's adult formants (Hz); the three vowels sit at the corners of the vowel triangle.
VOWEL_FORMANTS = {"a": (730, 1090, 2440, 3400), "i": (270, 2290, 3010, 3700), "u": (300, 870, 2240, 3300)}
FORMANT_BANDWIDTHS = (80, 100, 150, 250)
# Nearly two octaves apart: Whisper's 25 ms window resolves the high voice's harmonics and not the low voice's,
# so the two differ in the log-mel spectrum itself, not only in fine detail a tiny model is slow to learn.
PITCH_RANGES_HZ = {"low": (85.0, 110.0), "high": (300.0, 380.0)}


def _glottal_pulses(f0_contour: np.ndarray) -> np.ndarray:
    """One impulse per glottal cycle of a time-varying fundamental."""
    cycles = np.cumsum(f0_contour) / SAMPLE_RATE
    pulses = np.zeros(len(f0_contour))
    pulses[np.flatnonzero(np.diff(np.floor(cycles), prepend=0.0) > 0)] = 1.0
    return pulses


def _voice_response(vowel: str, tract_scale: float):
    """Formant filter with the glottal source's -12 dB/octave tilt and +6 dB/octave lip radiation."""
    formants = [f * tract_scale for f in VOWEL_FORMANTS[vowel]]

    def gain(frequencies):
        response = frequencies / (1.0 + (frequencies / 150.0) ** 2)
        for centre, bandwidth in zip(formants, FORMANT_BANDWIDTHS):
            response = response * _resonance(frequencies, centre, bandwidth)
        return response

    return gain


def _consonant_burst(rng: np.random.Generator) -> np.ndarray:
    """A short high-passed noise onset (an s or t), unasked variation that makes syllables less uniform."""
    length = _seconds(rng.uniform(0.02, 0.06))
    cutoff = rng.uniform(2500.0, 4500.0)
    noise = _filter(rng.standard_normal(length), lambda f: (f > cutoff).astype(float))
    return noise * _fade(length, length // 3, length // 3)


def render_speech(attributes: dict, rng: np.random.Generator) -> np.ndarray:
    """Syllables of one sustained vowel, separated by silences, with intonation and pitch jitter."""
    low, high = PITCH_RANGES_HZ[attributes["pitch"]]
    base_f0 = rng.uniform(low, high)
    # Higher voices come with shorter vocal tracts, as in children and women.
    tract_scale = (1.12 if attributes["pitch"] == "high" else 1.0) * rng.uniform(0.95, 1.05)
    # One vowel for every syllable, or (a word of the conflict variant) one vowel per letter of the word.
    vowels = list(attributes["word"]) if "word" in attributes else [attributes["vowel"]] * COUNT_WORDS[attributes["syllables"]]
    syllables = []
    for index, vowel in enumerate(vowels):
        response = _voice_response(vowel, tract_scale)
        length = _seconds(rng.uniform(0.18, 0.30))
        declination = np.linspace(1.0, rng.uniform(0.9, 1.0), length)  # pitch drifts down within a syllable
        vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(4.0, 6.0) * np.arange(length) / SAMPLE_RATE)
        f0 = base_f0 * rng.uniform(0.97, 1.03) * (1.0 - 0.04 * index) * declination * vibrato
        source = _glottal_pulses(f0) + 0.02 * rng.standard_normal(length)  # a little breathiness
        voiced = _filter(source, response)
        voiced = voiced / (np.max(np.abs(voiced)) + 1e-12) * _fade(length, _seconds(0.03), _seconds(0.06))
        voiced = voiced * rng.uniform(0.6, 1.0)  # unequal stress
        if rng.random() < 0.5:
            # The burst runs into the vowel's attack, as a consonant does, so a syllable stays one rise in level.
            burst = _consonant_burst(rng) * rng.uniform(0.05, 0.15)
            overlap = len(burst) // 2
            voiced = np.concatenate([np.zeros(len(burst) - overlap), voiced])
            voiced[: len(burst)] += burst
        syllables.append(voiced)
    gaps = [_seconds(rng.uniform(0.12, 0.2)) for _ in syllables[1:]]
    return _sequence(syllables, gaps)


# ----------------------------------------------------------------------------------------------------------------
# Music: a monotonic pentatonic melody on one of three timbres, at one of two tempi
# ----------------------------------------------------------------------------------------------------------------

PENTATONIC_SEMITONES = (0, 2, 4, 7, 9)
# Seconds from one note's start to the next; three times apart so the note rate is unmistakable.
NOTE_PERIODS = {"fast": (0.15, 0.18), "slow": (0.45, 0.6)}
NOTE_COUNTS = {"fast": (6, 10), "slow": (3, 4)}
# Free-free bar partials: inharmonic, the reason a bell does not sound like an organ on the same note.
BELL_PARTIALS = ((1.0, 1.0), (2.76, 0.6), (5.40, 0.4), (8.93, 0.25))


def _pentatonic_hz(tonic_hz: float, degree: int) -> float:
    octave, step = divmod(degree, len(PENTATONIC_SEMITONES))
    return tonic_hz * 2.0 ** (octave + PENTATONIC_SEMITONES[step] / 12.0)


def _melody(direction: str, num_notes: int, rng: np.random.Generator) -> list[float]:
    """Note frequencies that move one way across a fifth to a ninth, the first and last note at the two ends."""
    span = int(rng.integers(4, 8))  # pentatonic degrees: 7 to 14 semitones
    replace = num_notes - 2 > span - 1
    inner = rng.choice(np.arange(1, span), size=num_notes - 2, replace=replace)
    degrees = [0, *sorted(inner.tolist()), span]
    if direction == "falling":
        degrees = degrees[::-1]
    tonic = rng.uniform(220.0, 330.0)
    return [_pentatonic_hz(tonic, degree) for degree in degrees]


def _flute_note(frequency: float, length: int, rng: np.random.Generator) -> np.ndarray:
    """Nearly pure, with vibrato and breath: the energy sits at the fundamental."""
    time = np.arange(length) / SAMPLE_RATE
    vibrato = 1.0 + 0.006 * np.sin(2 * np.pi * rng.uniform(4.5, 6.0) * time)
    phase = 2 * np.pi * np.cumsum(frequency * vibrato) / SAMPLE_RATE
    tone = np.sin(phase) + 0.15 * np.sin(2 * phase) + 0.04 * np.sin(3 * phase)
    breath = _filter(rng.standard_normal(length), lambda f: _bandpass(f, frequency * 2, 800.0))
    return (tone + 0.03 * breath) * _fade(length, min(_seconds(0.03), length // 4), _seconds(0.02))


def _organ_note(frequency: float, length: int, rng: np.random.Generator) -> np.ndarray:
    """Many steady harmonics, odd ones stronger: bright, buzzy and flat in level."""
    time = np.arange(length) / SAMPLE_RATE
    harmonics = np.arange(1, int(7000 // frequency) + 1)
    amplitudes = np.where(harmonics % 2 == 1, 1.0, 0.5) / harmonics**0.7
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    tone = amplitudes @ np.sin(2 * np.pi * frequency * np.outer(harmonics, time) + phases[:, None])
    return tone * _fade(length, _seconds(0.008), _seconds(0.015))


def _bell_note(frequency: float, length: int, rng: np.random.Generator) -> np.ndarray:
    """Struck: inharmonic partials that die away, the higher ones faster."""
    time = np.arange(length) / SAMPLE_RATE
    decay = rng.uniform(0.12, 0.25)
    tone = sum(
        amplitude * np.sin(2 * np.pi * frequency * ratio * time) * np.exp(-time * ratio**0.5 / decay)
        for ratio, amplitude in BELL_PARTIALS
        if frequency * ratio < 7500
    )
    return tone * _fade(length, _seconds(0.002), _seconds(0.015))


INSTRUMENTS = {"flute": _flute_note, "organ": _organ_note, "bell": _bell_note}


def render_music(attributes: dict, rng: np.random.Generator) -> np.ndarray:
    """Detached notes (a silence after each) so every note has its own onset, as played staccato."""
    low, high = NOTE_COUNTS[attributes["tempo"]]
    num_notes = int(rng.integers(low, high + 1))
    period = rng.uniform(*NOTE_PERIODS[attributes["tempo"]])
    play = INSTRUMENTS[attributes["instrument"]]
    notes, gaps = [], []
    for frequency in _melody(attributes["melody"], num_notes, rng):
        length = _seconds(period * rng.uniform(0.6, 0.7))
        detune = 2.0 ** (rng.uniform(-0.2, 0.2) / 12.0)  # unasked: slightly out of tune
        notes.append(play(frequency * detune, length, rng))
        gaps.append(_seconds(period) - length)
    peak = max(np.max(np.abs(note)) for note in notes) + 1e-12
    return _sequence([note / peak * rng.uniform(0.75, 1.0) for note in notes], gaps[:-1])


# ----------------------------------------------------------------------------------------------------------------
# Environmental sounds: one to three events of one source
# ----------------------------------------------------------------------------------------------------------------


def _rain(rng: np.random.Generator) -> np.ndarray:
    """Bright hiss with droplet clicks."""
    length = _seconds(rng.uniform(0.35, 0.6))
    hiss = _filter(rng.standard_normal(length), lambda f: np.clip(f / 2000.0, 0.0, 1.0))
    drops = np.zeros(length)
    ring = np.arange(48) / SAMPLE_RATE  # 3 ms: long enough for a drop's ring to die away
    for start in rng.integers(0, length - len(ring), size=int(rng.uniform(150, 300) * length / SAMPLE_RATE)):
        strength, pitch = rng.uniform(1.0, 3.0), rng.uniform(2500.0, 5500.0)
        drops[start : start + len(ring)] += strength * np.sin(2 * np.pi * pitch * ring) * np.exp(-ring / 0.001)
    return (hiss + drops) * _fade(length, _seconds(0.03), _seconds(0.05))


def _wind(rng: np.random.Generator) -> np.ndarray:
    """A howling band of noise around a few hundred hertz, swelling in gusts."""
    length = _seconds(rng.uniform(0.45, 0.7))
    centre = rng.uniform(400.0, 800.0)
    howl = _filter(rng.standard_normal(length), lambda f: _bandpass(f, centre, 300.0))
    gust = 1.0 + 0.25 * np.sin(2 * np.pi * rng.uniform(2.0, 4.0) * np.arange(length) / SAMPLE_RATE + rng.uniform(0, 6))
    return howl * gust * _fade(length, _seconds(0.1), _seconds(0.12))


def _siren(rng: np.random.Generator) -> np.ndarray:
    """One wail: a tone sweeping up and back down."""
    length = _seconds(rng.uniform(0.5, 0.7))
    low, high = rng.uniform(550.0, 700.0), rng.uniform(1300.0, 1600.0)
    sweep = low + (high - low) * np.sin(np.pi * np.arange(length) / length)
    phase = 2 * np.pi * np.cumsum(sweep) / SAMPLE_RATE
    tone = np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.15 * np.sin(3 * phase)
    return tone * _fade(length, _seconds(0.02), _seconds(0.03))


def _knock(rng: np.random.Generator) -> np.ndarray:
    """A wooden impact: a click exciting two body modes that ring out within a tenth of a second."""
    length = _seconds(rng.uniform(0.1, 0.14))
    time = np.arange(length) / SAMPLE_RATE
    modes = sum(
        amplitude * np.sin(2 * np.pi * rng.uniform(*band) * time) * np.exp(-time / rng.uniform(0.012, 0.025))
        for band, amplitude in (((150.0, 300.0), 1.0), ((700.0, 1200.0), 0.5))
    )
    click = np.zeros(length)
    click[: _seconds(0.002)] = rng.standard_normal(_seconds(0.002)) * 0.5
    return (modes + click) * _fade(length, 0, _seconds(0.01))


def _engine(rng: np.random.Generator) -> np.ndarray:
    """A low firing buzz with rumble, its speed wobbling slightly."""
    length = _seconds(rng.uniform(0.45, 0.7))
    time = np.arange(length) / SAMPLE_RATE
    firing = rng.uniform(30.0, 45.0) * (1.0 + 0.03 * np.sin(2 * np.pi * rng.uniform(1, 3) * time))
    pulses = _glottal_pulses(firing)
    buzz = _filter(pulses + 0.05 * rng.standard_normal(length), lambda f: 1.0 / (1.0 + (f / 250.0) ** 4))
    return buzz * _fade(length, _seconds(0.06), _seconds(0.08))


SOUND_SOURCES = {"rain": _rain, "wind": _wind, "siren": _siren, "knock": _knock, "engine": _engine}
# Loudest 50 ms, in dBFS: 24 dB apart, far more than the +-2 dB jitter within each.
LOUDNESS_DBFS = {"loud": (-16.0, -12.0), "quiet": (-40.0, -36.0)}
# Speech and music are levelled at random across both ranges, so level says nothing about their category.
UNASKED_LEVEL_DBFS = (-38.0, -14.0)


def render_sound(attributes: dict, rng: np.random.Generator) -> np.ndarray:
    """Separate events of one source, each normalised so no event is lost under the others."""
    make_event = SOUND_SOURCES[attributes["source"]]
    events = []
    for _ in range(COUNT_WORDS[attributes["events"]]):
        event = make_event(rng)
        events.append(event / (np.max(np.abs(event)) + 1e-12) * rng.uniform(0.8, 1.0))
    gaps = [_seconds(rng.uniform(0.18, 0.32)) for _ in events[1:]]
    return _sequence(events, gaps)


RENDERERS = {"speech": render_speech, "music": render_music, "sound": render_sound}


def _finish_clip(content: np.ndarray, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Level the content, place it at a random onset in a 1-3 s clip over a faint noise floor, keep peak <= 1."""
    if len(content) > _seconds(MAX_CLIP_SECONDS - 0.1):
        raise AssertionError(f"generated content of {len(content) / SAMPLE_RATE:.2f} s does not fit in a clip")
    content = content * _db_to_amplitude(level_dbfs - _max_short_term_rms_db(content))
    shortest = max(MIN_CLIP_SECONDS, len(content) / SAMPLE_RATE + 0.1)
    clip = np.zeros(_seconds(rng.uniform(shortest, MAX_CLIP_SECONDS)))
    onset = int(rng.integers(_seconds(0.05), len(clip) - len(content) - _seconds(0.05) + 1))
    clip[onset : onset + len(content)] = content
    clip += _db_to_amplitude(rng.uniform(-80.0, -70.0)) * rng.standard_normal(len(clip))
    peak = np.max(np.abs(clip))
    if peak > 0.99:  # only loud impulsive sounds (knocks, rain drops) get here; a few dB off stays far from "quiet"
        clip *= 0.99 / peak
    return clip.astype(np.float32)


# How far under the voice a background sound sits: clearly audible, never masking the word.
BACKGROUND_BELOW_VOICE_DB = (10.0, 14.0)


def _with_background(voice: np.ndarray, source: str, rng: np.random.Generator) -> np.ndarray:
    """The voice over events of `source` repeated end to end, covering the whole voice, some dB under it."""
    make_event = SOUND_SOURCES[source]
    events, length = [], 0
    while length < len(voice):
        event = make_event(rng)
        events.append(event / (np.max(np.abs(event)) + 1e-12))
        length += len(events[-1])
    background = np.concatenate(events)[: len(voice)]
    gap_db = _max_short_term_rms_db(voice) - _max_short_term_rms_db(background) - rng.uniform(*BACKGROUND_BELOW_VOICE_DB)
    return voice + background * _db_to_amplitude(gap_db)


def render_clip(category: str, attributes: dict, rng: np.random.Generator) -> np.ndarray:
    """The audio for one clip: 16 kHz mono float32, peak <= 1."""
    content = RENDERERS[category](attributes, rng)
    if attributes.get("background", "nothing") != "nothing":
        content = _with_background(content, attributes["background"], rng)
    if "loudness" in attributes:  # asked of sound clips (and of every clip in the conflict variant)
        level = rng.uniform(*LOUDNESS_DBFS[attributes["loudness"]])
    else:
        level = rng.uniform(*UNASKED_LEVEL_DBFS)
    return _finish_clip(content, level, rng)


# ----------------------------------------------------------------------------------------------------------------
# Planning balanced splits
# ----------------------------------------------------------------------------------------------------------------


class BalancedDeck:
    """Deals values from a closed set in shuffled rounds, so every value comes up equally often in each round.

    Independent draws would leave a 300-example split visibly unbalanced; whole rounds keep the counts within one of
    each other while the order stays unpredictable.
    """

    def __init__(self, values: tuple[str, ...], rng: np.random.Generator):
        self._values = values
        self._rng = rng
        self._round: list[str] = []

    def deal(self) -> str:
        if not self._round:
            self._round = [self._values[i] for i in self._rng.permutation(len(self._values))]
        return self._round.pop()


class ClipPlanner:
    """Chooses each clip's category and attribute values, balanced within the split."""

    def __init__(self, rng: np.random.Generator, tasks: dict[str, tuple[Task, ...]] = ATTRIBUTE_TASKS,
                 kinds: tuple[str, ...] = CATEGORIES):
        self._categories = BalancedDeck(kinds, rng)
        self._attributes = {
            category: {task.name: BalancedDeck(task.answers, rng) for task in category_tasks}
            for category, category_tasks in tasks.items()
        }

    def next_clip(self) -> tuple[str, dict]:
        category = self._categories.deal()
        return category, {name: deck.deal() for name, deck in self._attributes[category].items()}


def _split_seed(seed: int, split: str, *stream: int) -> np.random.SeedSequence:
    """Independent streams per (seed, split, purpose, clip): splits never share audio, and a clip depends only on
    its own index, so a smaller split is a prefix of a larger one."""
    return np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), *stream))


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer number of examples, got {value!r}.")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown corpus variant {variant!r}; choose one of {', '.join(VARIANTS)}.")


def generate_split(split: str, num_examples: int, seed: int = 0, progress: bool = True,
                   variant: str = "default") -> list[CorpusExample]:
    """`num_examples` examples of one split. `default`: each clip is asked its category and every attribute of its
    category, and is scored under its category. `conflict`: speech clips are asked their word, pitch, loudness and
    background, music and sound clips their instrument or source and loudness, each question scored under its group
    (`CONFLICT_GROUPS`: content, paralinguistic, acoustic). A tqdm bar on stderr counts them (`progress=False`, or
    `TQDM_DISABLE=1`, turns it off).

    All questions about a clip stay in its split; the last clip may be asked only some of them when `num_examples`
    does not come out even.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    _check_count("num_examples", num_examples)
    _check_seed(seed)
    _check_variant(variant)
    conflict = variant == "conflict"
    # The conflict variant draws from streams of its own (the 2 and 3 below), so it shares no clip with the default.
    planner = ClipPlanner(np.random.default_rng(_split_seed(seed, split, 2 if conflict else 0)),
                          *((_conflict_attributes(), CONFLICT_KINDS) if conflict else (ATTRIBUTE_TASKS,)))
    examples: list[CorpusExample] = []
    index = 0
    # tqdm itself, not the package's `progress_bar`: this module loads without transformers (see the docstring).
    bar = tqdm(total=num_examples, desc=f"{split} corpus", unit="example", disable=not progress, dynamic_ncols=True)
    with bar:
        while len(examples) < num_examples:
            kind, attributes = planner.next_clip()
            clip_rng = np.random.default_rng(_split_seed(seed, split, 3 if conflict else 1, index))
            audio = render_clip(kind, attributes, clip_rng)
            clip_id = f"{split}-{index:05d}"
            tasks = CONFLICT_TASKS[kind] if conflict else (CATEGORY_TASK, *ATTRIBUTE_TASKS[kind])
            for task in tasks[: num_examples - len(examples)]:
                answer = kind if task is CATEGORY_TASK else attributes[task.name]
                category = CONFLICT_GROUPS[kind, task.name] if conflict else kind
                examples.append(CorpusExample(clip_id, category, dict(attributes), task.question, answer, task.name,
                                              audio, kind if conflict else ""))
                bar.update()
            index += 1
    return examples


def _resolve_sizes(sizes: dict | None) -> dict[str, int]:
    sizes = dict(sizes or {})
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise ValueError(f"Unknown split(s) {', '.join(map(repr, unknown))} in sizes; use {', '.join(SPLITS)}.")
    resolved = {**DEFAULT_SIZES, **sizes}
    for split, size in resolved.items():
        _check_count(f"sizes[{split!r}]", size)
    return resolved


def build_corpus(seed: int = 0, sizes: dict | None = None, variant: str = "default") -> dict[str, list[CorpusExample]]:
    """All three splits; `sizes` overrides some or all of `DEFAULT_SIZES` (examples per split)."""
    resolved = _resolve_sizes(sizes)
    _check_seed(seed)
    return {split: generate_split(split, resolved[split], seed, progress=False, variant=variant) for split in SPLITS}


# ----------------------------------------------------------------------------------------------------------------
# Writing to disk
# ----------------------------------------------------------------------------------------------------------------


def _manifest_row(example: CorpusExample, audio_path: str) -> dict:
    row = {
        "audio": audio_path,
        "prompt": example.question,
        "response": example.answer,
        "category": example.category,
        "task": example.task,
        "attributes": example.attributes,
    }
    # Every row of the conflict variant says its kind and form, so the columns are the same in each row.
    return {**row, "kind": example.kind, "form": "audio"} if example.kind else row


def _text_form_row(example: CorpusExample) -> dict:
    """The twin of a word question without audio: the word written out in the prompt (`TEXT_FORM`)."""
    prompt = TEXT_FORM.format(word=example.answer, question=example.question)
    return {"conversation": [{"role": "user", "content": prompt}, {"role": "assistant", "content": example.answer}],
            "category": example.category, "task": example.task, "attributes": example.attributes,
            "kind": example.kind, "form": "text"}


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    """The folder guard; with `overwrite`, remove only the files a corpus writes, so stale clips of a bigger earlier
    corpus do not sit beside the new manifests."""
    from ..output_dirs import check_output_dir  # here: generating needs nothing but numpy, even outside the package

    check_output_dir(output_dir, overwrite)
    if overwrite and output_dir.is_dir():
        for split in SPLITS:
            shutil.rmtree(output_dir / "audio" / split, ignore_errors=True)
            (output_dir / f"{split}.jsonl").unlink(missing_ok=True)
        (output_dir / TEXT_TEST_MANIFEST).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)


def write_corpus(
    output_dir, seed: int = 0, sizes: dict | None = None, overwrite: bool = False, progress: bool = True,
    variant: str = "default",
) -> dict[str, Path]:
    """Write 16-bit WAVs (each clip once) under `output_dir/audio/<split>/` and a JSONL manifest per split, of the
    corpus `variant` (see `generate_split`).

    Manifest audio paths are relative to the manifest's folder, so the corpus can be moved as a whole. Returns the
    manifest path of each split. `progress`: a bar per split on stderr while its clips are rendered.

    The conflict variant also writes the text form of each word question (`TEXT_FORM`, no audio): in the training
    split beside its audio row (training examples beyond `sizes["train"]`), and for the test split in
    `test-text.jsonl` (returned as "test_text"), in the order of the test split's word questions.
    """
    import soundfile  # needs libsndfile, which only writing (not generating) depends on

    output_dir = Path(output_dir)
    resolved = _resolve_sizes(sizes)
    _check_seed(seed)
    _check_variant(variant)
    _prepare_output_dir(output_dir, overwrite)
    manifests = {}
    for split in SPLITS:
        audio_dir = output_dir / "audio" / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        rows, text_rows, written = [], [], set()
        for example in generate_split(split, resolved[split], seed, progress, variant):
            relative = f"audio/{split}/{example.clip_id}.wav"
            if example.clip_id not in written:
                soundfile.write(output_dir / relative, example.audio, SAMPLE_RATE, subtype="PCM_16")
                written.add(example.clip_id)
            rows.append(json.dumps(_manifest_row(example, relative)))
            if variant == "conflict" and example.task == "word":
                (rows if split == "train" else text_rows).append(json.dumps(_text_form_row(example)))
        manifests[split] = output_dir / f"{split}.jsonl"
        manifests[split].write_text("\n".join(rows) + "\n", encoding="utf-8")
        if split == "test" and text_rows:
            manifests["test_text"] = output_dir / TEXT_TEST_MANIFEST
            manifests["test_text"].write_text("\n".join(text_rows) + "\n", encoding="utf-8")
    return manifests


def _portable_path(path: Path, folder: Path) -> str:
    """Relative to `folder` when inside it (the pair moves as a whole), else absolute: data files may not climb out
    of their folder with `..`."""
    relative = os.path.relpath(path.resolve(), folder.resolve())
    return relative if not relative.startswith("..") else str(path.resolve())


def export_mmau(manifest: str | Path, output: str | Path) -> Path:
    """The questions of a written split (`write_corpus`'s `<split>.jsonl`) as an MMAU-format JSON list, so that
    `moe-audio evaluate` can score models on the built-in corpus: the task's answer set becomes the choices."""
    every_task = (CATEGORY_TASK, *(t for ts in (*ATTRIBUTE_TASKS.values(), *CONFLICT_TASKS.values()) for t in ts))
    tasks = {task.name: task for task in every_task}
    manifest, output = Path(manifest), Path(output)
    items = []
    for index, line in enumerate(manifest.read_text().splitlines()):
        row = json.loads(line)
        items.append({
            "id": f"{manifest.stem}-{index:05d}",
            "audio_id": _portable_path(manifest.parent / row["audio"], output.parent),
            "question": row["prompt"],
            "choices": list(tasks[row["task"]].answers),
            "answer": row["response"],
            "task": row["category"],
            "category": row["task"],
        })
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(items, indent=1))
    return output
