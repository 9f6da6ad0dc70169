"""Multiple-choice audio QA evaluation (`modeling_moe_audio.evaluation`): answer extraction, benchmark loaders, the
accuracy metric (`evaluate`), scoring, the modality gap, the text-only path (no audio reaches the model) and the
`moe-audio evaluate` entry point (`modeling_moe_audio.commands.evaluate`)."""

import importlib
import json
import os
import random

import numpy as np
import pytest
import soundfile
import torch

from modeling_moe_audio.commands.evaluate import main
from modeling_moe_audio.data.audio import BadRowError
from modeling_moe_audio.evaluation import (
    GroupedAccuracy,
    QAItem,
    build_conversation,
    build_prompt,
    evaluate_model,
    extract_choice,
    load_items,
    load_mmau,
    load_voicebench,
    modality_gap,
    parse_options,
    write_report,
)


RATE = 16000
ANIMALS = ["cat", "dog", "bird", "car horn"]

# (model answer, options, expected option index or None)
EXTRACTION_TABLE = [
    ("B", ANIMALS, 1),
    ("b", ANIMALS, 1),
    ("(B)", ANIMALS, 1),
    ("B.", ANIMALS, 1),
    ("B)", ANIMALS, 1),
    ("**B**", ANIMALS, 1),
    ("Answer: B", ANIMALS, 1),
    ("The answer is (b)", ANIMALS, 1),
    ("The answer is B.", ANIMALS, 1),
    ("Final answer: **C**", ANIMALS, 2),
    ("The correct answer is C: bird.", ANIMALS, 2),
    ("The answer to the question is C.", ANIMALS, 2),
    ("The correct answer here is C", ANIMALS, 2),
    ("I think the answer is D, the car horn.", ANIMALS, 3),
    ("I would choose option D because it honks.", ANIMALS, 3),
    ("Option B is correct.", ANIMALS, 1),
    ("\\boxed{A}", ANIMALS, 0),
    ("B. dog", ANIMALS, 1),
    ("A. cat", ANIMALS, 0),
    ("Answer: (A) cat", ANIMALS, 0),
    ("B\nThe dog barks twice.", ANIMALS, 1),
    ("I think it's (b) here", ANIMALS, 1),
    ("It is **B** for sure", ANIMALS, 1),
    ("Answer: B\nExplanation: the dog barks, unlike the cat.", ANIMALS, 1),  # explicit letter beats mentions
    ("The answer is b because dogs bark", ANIMALS, 1),
    ("A", ANIMALS, 0),
    ("a", ANIMALS, 0),  # a lone "a" is the answer A
    ("dog", ANIMALS, 1),
    ("Dog.", ANIMALS, 1),
    ("The sound is a dog barking.", ANIMALS, 1),
    ("A dog is barking", ANIMALS, 1),  # the article "A" is not the letter A
    ("The answer is a bird.", ANIMALS, 2),  # nor here
    ("A car horn honks twice", ANIMALS, 3),
    ("I hear a car horn.", ANIMALS, 3),
    ("Option 2", ANIMALS, 1),
    ("2", ANIMALS, 1),
    # nothing, or ambiguity: no guess
    ("", ANIMALS, None),
    ("I'm not sure.", ANIMALS, None),
    ("It could be a cat or a dog.", ANIMALS, None),
    ("Neither a cat nor a dog", ANIMALS, None),
    ("The answer is B or C.", ANIMALS, None),
    ("B. cat", ANIMALS, None),  # the letter says dog, the text says cat
    ("E", ANIMALS, None),  # beyond the four options
    ("Answer: E", ANIMALS, None),
    ("5", ANIMALS, None),
    ("Option 7", ANIMALS, None),
    # options that are numbers: "2" is the option "2", "option 2" the second option
    ("2", ["3", "1", "2", "4"], 2),
    ("The answer is 2", ["3", "1", "2", "4"], 2),
    ("Option 2", ["3", "1", "2", "4"], 1),
    # options that look like letters or start with one
    ("C", ["E", "C", "G", "A"], None),  # letter C (third) or the note C (second)?
    ("C major", ["A minor", "C major", "G major", "E minor"], 1),
    ("It's in A minor.", ["A minor", "C major", "G major", "E minor"], 0),
    ("It is a hot dog", ["dog", "hot dog", "cat"], 1),  # "dog" only inside "hot dog"
]


@pytest.mark.parametrize("answer, options, expected", EXTRACTION_TABLE)
def test_extract_choice(answer, options, expected):
    assert extract_choice(answer, options) == expected


def test_the_extraction_table_is_broad():
    assert len(EXTRACTION_TABLE) >= 25
    assert sum(expected is None for _, _, expected in EXTRACTION_TABLE) >= 8


def test_parse_options_from_question_text():
    assert parse_options("Which gas do plants absorb? A. oxygen B. carbon dioxide C. nitrogen D. helium") == (
        "Which gas do plants absorb?", ["oxygen", "carbon dioxide", "nitrogen", "helium"]
    )
    # a letter mark inside the question does not split it; "or" and commas between options go
    assert parse_options("What does vitamin A. do? A. helps vision, B. builds bone, or C. nothing.") == (
        "What does vitamin A. do?", ["helps vision", "builds bone", "nothing"]
    )
    assert parse_options("Pick one.\n(A) red\n(B) blue") == ("Pick one.", ["red", "blue"])
    assert parse_options("A question without options?") is None


# ------------------------------------------------------------------------------------------------ files and loaders


def write_wav(path, seconds, frequency=440.0):
    t = np.arange(int(seconds * RATE)) / RATE
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), RATE)
    return path


MMAU_ROWS = [
    {"id": "m1", "audio_id": "./clips/m1.wav", "question": "What makes the sound?", "choices": ANIMALS,
     "answer": "dog", "task": "sound", "category": "Sound Source", "sub-category": None, "difficulty": "easy"},
    {"id": "m2", "audio_id": "./clips/m2.wav", "question": "Which instrument plays?",
     "choices": ["Piano", "Violin", "Drums"], "answer": "Violin", "task": "music", "category": "Instrument",
     "difficulty": "medium"},
    {"id": "m3", "audio_id": "./clips/m3.wav", "question": "How does the speaker feel?",
     "choices": ["happy", "sad"], "answer": "Sad ", "task": "speech", "category": "Emotion", "difficulty": "hard"},
]


def write_mmau(folder, rows=MMAU_ROWS, jsonl=False, name=None):
    (folder / "clips").mkdir(exist_ok=True)
    for n, row in enumerate(rows):
        if isinstance(row, dict) and "audio_id" in row and not (folder / row["audio_id"]).exists():
            if "missing" not in row["audio_id"]:
                write_wav(folder / row["audio_id"], 0.2 + 0.1 * n, 300 + 100 * n)
    path = folder / (name or ("mmau.jsonl" if jsonl else "mmau-test-mini.json"))
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" if jsonl else json.dumps(rows, indent=1))
    return path


def voicebench_rows():
    return [
        {"audio": "audio/q1.wav", "prompt": "Which gas do plants absorb? A. oxygen B. carbon dioxide C. nitrogen "
         "D. helium", "reference": "B", "subject": "biology"},
        {"audio_path": "audio/q2.wav", "question": "Which organ pumps blood?", "choices": ["lung", "heart", "liver"],
         "answer": "(b)", "category": "health", "id": "custom-2"},
        {"audio": {"path": "audio/q3.wav"}, "text": "Which is a metal?\nA) wood\nB) glass\nC) iron",
         "reference": "C", "subject": "chemistry"},
    ]


def write_voicebench(folder, rows, name="mmsu-sample.jsonl"):
    (folder / "audio").mkdir(exist_ok=True)
    for n, row in enumerate(rows):
        audio = row.get("audio", row.get("audio_path"))
        audio = audio["path"] if isinstance(audio, dict) else audio
        if audio and "missing" not in audio and not (folder / audio).exists():
            write_wav(folder / audio, 0.2 + 0.1 * n, 200 + 50 * n)
    path = folder / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_load_mmau_json_list_and_jsonl_alike(tmp_path):
    items = load_mmau(write_mmau(tmp_path))
    assert [(i.id, i.answer_index, i.answer_letter, i.task, i.category, i.benchmark) for i in items] == [
        ("m1", 1, "B", "sound", "Sound Source", "mmau"),
        ("m2", 1, "B", "music", "Instrument", "mmau"),
        ("m3", 1, "B", "speech", "Emotion", "mmau"),  # "Sad " matches "sad" up to case and spaces
    ]
    assert items[0].audio == str((tmp_path / "clips" / "m1.wav").resolve())
    assert items[0].options == ANIMALS and items[0].question == "What makes the sound?"
    assert items[1].difficulty == "medium" and all(i.audio_text is None for i in items)
    assert not items[0].question_in_audio and not items[0].options_in_audio
    assert load_mmau(write_mmau(tmp_path, jsonl=True)) == items
    assert load_items(tmp_path / "mmau.jsonl") == items  # auto-detected
    assert len(load_mmau(tmp_path / "mmau.jsonl", limit=2)) == 2


def test_load_voicebench_options_in_text_or_listed(tmp_path):
    items = load_voicebench(write_voicebench(tmp_path, voicebench_rows()))
    first, second, third = items
    assert first.options == ["oxygen", "carbon dioxide", "nitrogen", "helium"]
    assert (first.answer_index, first.question, first.category) == (1, "Which gas do plants absorb?", "biology")
    assert first.audio_text.startswith("Which gas") and "D. helium" in first.audio_text
    assert first.question_in_audio and first.options_in_audio
    assert (first.benchmark, first.task, first.id) == ("mmsu", "mmsu", "mmsu-1")  # from the file name
    assert (second.options, second.answer_index, second.id, second.category) == (
        ["lung", "heart", "liver"], 1, "custom-2", "health")
    assert second.question_in_audio and not second.options_in_audio
    assert (third.options, third.answer_index, third.audio) == (
        ["wood", "glass", "iron"], 2, str((tmp_path / "audio" / "q3.wav").resolve()))
    assert load_items(tmp_path / "mmsu-sample.jsonl") == items
    obqa = load_voicebench(write_voicebench(tmp_path, voicebench_rows()[:1], name="openbookqa.jsonl"))
    assert obqa[0].benchmark == "openbookqa"
    assert load_voicebench(tmp_path / "openbookqa.jsonl", benchmark="obqa-dev")[0].task == "obqa-dev"


def test_prompts_audio_and_text_only():
    mmau = QAItem("m", "/x.wav", "What makes the sound?", ["cat", "dog"], 1, "Sound", "sound", "mmau")
    assert build_prompt(mmau) == (
        "What makes the sound?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly."
    )
    with pytest.raises(ValueError, match="no text form"):
        build_prompt(mmau, text_only=True)
    spoken = QAItem("v", "/x.wav", "Which gas?", ["oxygen", "carbon dioxide"], 1, "bio", "mmsu", "mmsu",
                    audio_text="Which gas? A. oxygen B. carbon dioxide", question_in_audio=True, options_in_audio=True)
    assert build_prompt(spoken) == (
        "Answer the question in the audio.\nAnswer with the option's letter from the given choices directly."
    )
    assert build_prompt(spoken, text_only=True) == (
        "Which gas? A. oxygen B. carbon dioxide\nAnswer the question.\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert build_conversation(spoken, text_only=True) == [
        {"role": "user", "content": [{"type": "text", "text": build_prompt(spoken, text_only=True)}]}
    ]
    assert build_prompt(mmau, style="question") == "What makes the sound?"
    assert build_prompt(spoken, text_only=True, style="question") == (
        "Which gas? A. oxygen B. carbon dioxide\nAnswer the question.")
    with pytest.raises(ValueError, match="Unknown prompt style 'letters': use one of lettered, question"):
        build_prompt(mmau, style="letters")


@pytest.mark.parametrize(
    "loader, rows, where, reason",
    [
        ("mmau", [MMAU_ROWS[0], {**MMAU_ROWS[1], "audio_id": "clips/missing.wav"}], "item 2 (id m2)",
         "missing.wav does not exist"),
        ("mmau", [{**MMAU_ROWS[0], "answer": "horse"}], "item 1 (id m1)", "answer 'horse' is not among the choices"),
        ("mmau", [{k: v for k, v in MMAU_ROWS[0].items() if k not in ("question", "choices")}], "item 1 (id m1)",
         "missing MMAU field(s) ['question', 'choices']"),
        ("mmau", [{**MMAU_ROWS[0], "choices": ["dog"]}], "item 1", "at least 2 non-empty strings"),
        ("voicebench", [voicebench_rows()[0], {"audio": "audio/missing.wav", "prompt": "Q? A. x B. y",
                                               "reference": "A"}], "line 2", "missing.wav does not exist"),
        ("voicebench", [{**voicebench_rows()[0], "reference": "E"}], "line 1",
         "reference 'E' is neither a letter A-D nor one of the choices"),
        ("voicebench", [{"audio": "audio/q1.wav", "reference": "A"}], "line 1",
         "missing VoiceBench field(s): prompt, question or text"),
        ("voicebench", [{"audio": "audio/q1.wav", "prompt": "Why is the sky blue?", "reference": "A"}], "line 1",
         "no choices"),
    ],
)
def test_bad_rows_are_named(tmp_path, loader, rows, where, reason):
    if loader == "mmau":
        path, load = write_mmau(tmp_path, rows), load_mmau
    else:
        path, load = write_voicebench(tmp_path, rows), load_voicebench
    with pytest.raises(BadRowError) as error:
        load(path)
    assert f"{path}, {where}" in str(error.value) and reason in str(error.value)


def test_bad_json_line_and_unknown_format(tmp_path):
    path = write_voicebench(tmp_path, voicebench_rows()[:1])
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(BadRowError, match="line 2: is not valid JSON"):
        load_voicebench(path)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"wav": "a.wav", "label": 1}) + "\n")
    with pytest.raises(ValueError, match="Cannot tell the format"):
        load_items(other)
    with pytest.raises(FileNotFoundError):
        load_items(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------------------------- the metric

# (prediction, reference, task, category): option indices; -1 and None are unanswered
METRIC_TABLE = [
    (1, 1, "sound", "Source"),
    (0, 1, "sound", "Source"),
    (None, 2, "sound", "Events"),
    (2, 2, "music", "Genre"),
    (-1, 0, "music", "Genre"),
    (3, 3, "speech", "Emotion"),
    (1, 0, "speech", "Emotion"),
]


def hand_counts(rows):
    correct = sum(p is not None and p == r for p, r, *_ in rows)
    answered = sum(p is not None and p != -1 for p, *_ in rows)
    return {"accuracy": correct / len(rows), "num_items": len(rows), "correct": correct, "answered": answered}


def test_metric_gives_accuracy_and_counts_overall_and_per_group_as_counted_by_hand():
    predictions, references, tasks, categories = (list(column) for column in zip(*METRIC_TABLE))
    result = GroupedAccuracy(keep_in_memory=True).compute(
        predictions=predictions, references=references, groups=[list(pair) for pair in zip(tasks, categories)],
        group_names=["task", "category"],
    )
    assert {key: result[key] for key in ("accuracy", "num_items", "correct", "answered")} == hand_counts(METRIC_TABLE)
    assert (result["correct"], result["answered"], result["num_items"]) == (3, 5, 7)
    for position, name in ((2, "task"), (3, "category")):
        labels = sorted({row[position] for row in METRIC_TABLE})
        assert list(result[f"per_{name}"]) == labels
        for label in labels:
            assert result[f"per_{name}"][label] == hand_counts([r for r in METRIC_TABLE if r[position] == label])
    assert result["per_task"]["music"] == {"accuracy": 0.5, "num_items": 2, "correct": 1, "answered": 1}


def test_metric_never_counts_an_unanswered_prediction_as_correct():
    metric = GroupedAccuracy(keep_in_memory=True)
    # -1 or None against every reference, including a reference the unanswered marker could be confused with
    for unanswered in (-1, None):
        result = metric.compute(predictions=[unanswered, unanswered], references=[0, 1], groups=[[], []])
        assert (result["accuracy"], result["correct"], result["answered"]) == (0.0, 0, 0)
    with pytest.raises(ValueError, match="reference must be a label >= 0"):
        metric.compute(predictions=[-1], references=[-1], groups=[[]])


def test_metric_on_no_items_is_a_clear_value_error():
    from modeling_moe_audio.evaluation import compute_accuracy

    with pytest.raises(ValueError, match="No predictions to score"):
        GroupedAccuracy(keep_in_memory=True).compute(predictions=[], references=[], groups=[])
    with pytest.raises(ValueError, match="No predictions to score"):
        compute_accuracy([], [], {"task": []})
    with pytest.raises(ValueError, match="one label per item"):
        compute_accuracy([0, 1], [0, 1], {"task": ["sound"]})


def corpus_row(category, answer):
    return {"category": category, "conversation": [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]}


def test_score_answers_compares_first_words_through_the_metric():
    from modeling_moe_audio.evaluation import first_word, normalize_text, score_answers

    assert normalize_text("The Car-Horn, twice!") == "the car horn twice" and first_word("Speech, I think.") == "speech"
    assert first_word("...") == "" and normalize_text("") == ""
    rows = [corpus_row("speech", "male"), corpus_row("speech", "female"), corpus_row("music", "piano"),
            corpus_row("sound", "dog"), corpus_row("sound", "rain")]
    answers = ["Male.", "male voice", "PIANO, surely", "", "rain falling"]
    metric = RecordingAccuracy(keep_in_memory=True)
    scores = score_answers(rows, answers, group_key="category", metric=metric)
    assert scores == {"overall": 3 / 5, "music": 1.0, "sound": 0.5, "speech": 0.5}
    assert len(metric.calls) == 1 and metric.calls[0]["group_names"] == ["category"]
    assert metric.calls[0]["predictions"][3] == -1  # no word: unanswered
    with pytest.raises(ValueError, match="2 answers for 5 rows"):
        score_answers(rows, answers[:2])


# ------------------------------------------------------------------------------------- scoring with a test double


class ScriptedGenerator:
    """Test double for the model's generation: answers each question with a scripted string.

    It recognises an item by the length of its clip (audio prompts: every clip has its own length) or by the text
    form of its audio (text-only prompts), and records what it was given.
    """

    def __init__(self, items, audio_answers, text_answers):
        self.by_length = {len(soundfile.read(item.audio)[0]): a for item, a in zip(items, audio_answers)}
        self.by_text = {item.audio_text: a for item, a in zip(items, text_answers) if item.audio_text}
        self.calls = []

    def __call__(self, conversations, max_new_tokens):
        answers = []
        for conversation in conversations:
            blocks = conversation[0]["content"]
            audio = [b["audio"] for b in blocks if b["type"] == "audio"]
            text = "\n".join(b["text"] for b in blocks if b["type"] == "text")
            self.calls.append({"audio": len(audio), "text": text})
            if audio:
                answers.append(self.by_length[len(audio[0])])
            else:
                answers.append(next(a for t, a in self.by_text.items() if text.startswith(t)))
        return answers


class RecordingAccuracy(GroupedAccuracy):
    """Test double of the metric: GroupedAccuracy that records the inputs of its `_compute` calls (reached only
    through `evaluate`'s `compute`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def _compute(self, predictions, references, groups, group_names=()):
        self.calls.append({"predictions": predictions, "references": references, "group_names": list(group_names)})
        return super()._compute(predictions, references, groups, group_names)


def gap_items(tmp_path):
    rows = [
        {"audio": f"audio/{name}.wav", "prompt": f"{question} A. {a} B. {b}", "reference": ref, "subject": subject,
         "benchmark": benchmark}
        for name, question, a, b, ref, subject, benchmark in [
            ("s1", "Which is a mammal?", "whale", "shark", "A", "biology", "mmsu"),
            ("s2", "Which is a planet?", "moon", "mars", "B", "physics", "mmsu"),
            ("s3", "Which is a noble gas?", "neon", "iron", "A", "chemistry", "mmsu"),
            ("s4", "Which is a verb?", "run", "table", "A", "other", "mmsu"),
            ("o1", "What melts ice?", "heat", "cold", "A", "science", "openbookqa"),
            ("o2", "What do plants need?", "salt", "light", "B", "science", "openbookqa"),
        ]
    ]
    return load_voicebench(write_voicebench(tmp_path, rows, name="mixed.jsonl"))


def test_accuracy_per_task_and_category_and_the_gap_with_scripted_answers(tmp_path):
    items = gap_items(tmp_path)
    # mmsu: audio right 1 of 4, text right 3 of 4 -> gap -50 points; openbookqa: audio 2/2, text 1/2 -> +50
    audio_answers = ["The answer is (A)", "A", "I don't know", "B. table", "A. heat", "light"]
    text_answers = ["A", "mars", "Answer: A", "B", "heat", "salt"]
    generator = ScriptedGenerator(items, audio_answers, text_answers)
    metric = RecordingAccuracy(keep_in_memory=True)
    gap = modality_gap(None, None, items, batch_size=4, generate_fn=generator, metric=metric, progress=False)

    audio, text = gap["audio"], gap["text"]
    assert (audio["mode"], text["mode"]) == ("audio", "text")
    assert audio["accuracy"] == pytest.approx(3 / 6) and text["accuracy"] == pytest.approx(4 / 6)
    assert (audio["correct"], audio["answered"], audio["num_items"]) == (3, 5, 6)  # "I don't know" is unanswered
    assert [p["predicted_letter"] for p in audio["predictions"]] == ["A", "A", None, "B", "A", "B"]
    assert audio["per_task"]["mmsu"]["accuracy"] == pytest.approx(1 / 4)
    assert audio["per_task"]["openbookqa"]["accuracy"] == pytest.approx(1.0)
    assert text["per_task"]["mmsu"]["accuracy"] == pytest.approx(3 / 4)
    assert audio["per_category"]["biology"] == {"accuracy": 1.0, "num_items": 1, "correct": 1, "answered": 1}
    assert audio["per_category"]["science"]["num_items"] == 2
    assert gap["gap"] == pytest.approx(3 / 6 - 4 / 6) and gap["gap"] < 0
    assert gap["per_task"]["mmsu"]["gap"] == pytest.approx(-0.5)
    assert gap["per_task"]["openbookqa"]["gap"] == pytest.approx(+0.5)
    assert (gap["text_accuracy"], gap["audio_accuracy"]) == (text["accuracy"], audio["accuracy"])
    # accuracy went through evaluate's compute: one computation per mode gives the overall figures and every
    # breakdown (2 tasks, 5 categories, 2 benchmarks); no second count beside it
    assert len(metric.calls) == 2
    assert [call["group_names"] for call in metric.calls] == [["task", "category", "benchmark"]] * 2
    assert metric.calls[0]["predictions"] == [0, 0, None, 1, 0, 1] and metric.calls[0]["references"] == [
        0, 1, 0, 0, 0, 1]
    # the double saw the clip with the instruction in audio mode, and the spoken text without audio in text mode
    audio_calls, text_calls = generator.calls[:6], generator.calls[6:]
    assert all(c["audio"] == 1 and c["text"].startswith("Answer the question in the audio.") for c in audio_calls)
    assert all(c["audio"] == 0 and "A. " in c["text"] for c in text_calls)

    paths = write_report({"data": "mixed.jsonl", "evaluation": audio, "modality_gap": gap}, tmp_path / "report")
    markdown = paths["markdown"].read_text()
    assert "| mmsu | 4 | 75.00 | 25.00 | -50.00 |" in markdown
    assert "| openbookqa | 2 | 50.00 | 100.00 | +50.00 |" in markdown
    assert json.loads(paths["json"].read_text())["modality_gap"]["gap"] == pytest.approx(-1 / 6)


def test_mmau_breakdown_per_task_and_no_gap(tmp_path):
    items = load_mmau(write_mmau(tmp_path))
    generator = ScriptedGenerator(items, ["dog", "A", "(B)"], [None] * 3)
    results = evaluate_model(None, None, items, generate_fn=generator, progress=False)
    assert {task: r["accuracy"] for task, r in results["per_task"].items()} == {"music": 0.0, "sound": 1.0,
                                                                                "speech": 1.0}
    assert "A. cat\nB. dog\nC. bird\nD. car horn" in generator.calls[0]["text"]
    with pytest.raises(ValueError, match="No item carries a text form"):
        modality_gap(None, None, items, generate_fn=generator, progress=False)
    with pytest.raises(ValueError, match="cannot be asked text-only"):
        evaluate_model(None, None, items, text_only=True, generate_fn=generator, progress=False)


def test_question_style_asks_the_bare_question_and_scores_option_words(tmp_path):
    items = load_mmau(write_mmau(tmp_path))
    generator = ScriptedGenerator(items, ["dog", "a violin", "Sad."], [None] * 3)
    results = evaluate_model(None, None, items, generate_fn=generator, progress=False, prompt_style="question")
    assert [call["text"] for call in generator.calls] == [item.question for item in items]
    assert results["prompt_style"] == "question"
    assert [row["predicted_index"] for row in results["predictions"]] == [1, 1, 1]
    assert results["accuracy"] == 1.0
    markdown = write_report(results, tmp_path / "report")["markdown"].read_text()
    assert "## Accuracy (audio input, question prompt)" in markdown


def test_the_package_and_the_command_help_import_nothing_heavy(tmp_path):
    import subprocess
    import sys

    code = """
import sys
import modeling_moe_audio.evaluation
from modeling_moe_audio.commands.main import main
try:
    main(["evaluate", "--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print(sorted(name for name in ("torch", "transformers", "evaluate", "datasets") if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--text_only_gap" in result.stdout and "--output_dir" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------- answer parsing modes
# Each expected value below follows from the rule of the evaluator it names, worked out by hand:
# - mmau: MMAU's evaluation.py `string_match` (Sakshi113/MMAU @ 110127f): correct when the answer's words hold every
#   word of the correct choice and none that other choices have and it lacks; no letters, no guess;
# - lmms-eval on MMAU items: lmms_eval/tasks/mmau/utils.py (@ 75571cf): "(X)", else " X ", else "X." for X in A-D;
#   none: random letter of A-D; several: the last " X " (the first in A-D order when none is between spaces);
# - lmms-eval on MMSU items: lmms_eval/tasks/mmsu/utils.py (MMMU's parser): "(X)", else "X " (no space before),
#   else "X.", else (more than 5 words) the choice texts found; none: random letter; several: the last found.

from modeling_moe_audio.evaluation.answer_parsing import (  # noqa: E402
    AMBIGUOUS,
    EXTRACTED,
    GUESSED,
    UNANSWERED,
    AnswerParser,
    check_answer_parsing,
    mmau_string_match,
    parse_lmms_eval_mmau,
    parse_lmms_eval_mmsu,
    parse_mmau,
    parse_strict,
)


class NoGuess:
    """Test double of the random generator: fails when a rule draws a guess it should not draw."""

    def choice(self, letters):
        raise AssertionError(f"a guess was drawn from {letters}")


# (answer, strict, mmau, lmms-eval MMAU rule, lmms-eval MMSU rule): each (option index or None, outcome);
# "guess" where the lmms-eval rule draws a random letter. Options: ANIMALS = cat, dog, bird, car horn.
PARSING_TABLE = [
    # a bare letter: a letter for strict and lmms-eval; for MMAU's word match "b" is no choice's word
    ("B", (1, EXTRACTED), (None, UNANSWERED), (1, EXTRACTED), (1, EXTRACTED)),
    # the option's text without a letter: found by strict and mmau; lmms-eval's MMAU rule guesses; its MMSU rule
    # reads text only in answers of more than 5 words, so it guesses too
    ("dog", (1, EXTRACTED), (1, EXTRACTED), "guess", "guess"),
    ("The dog is barking", (1, EXTRACTED), (1, EXTRACTED), "guess", "guess"),
    # more than 5 words: the MMSU rule finds the option's text
    ("I am fairly sure that it is the dog", (1, EXTRACTED), (1, EXTRACTED), "guess", (1, EXTRACTED)),
    # several letters: strict reads no letter in it (a bare letter needs punctuation); lmms-eval takes the last " X "
    ("A or B", (None, UNANSWERED), (None, UNANSWERED), (1, AMBIGUOUS), (1, AMBIGUOUS)),
    # several bracketed letters: lmms-eval's MMAU rule looks for " B " / " C ", finds neither, takes the first (B);
    # its MMSU rule takes the last "(X)" (C); strict: "B or C" is ambiguous
    ("(B) or (C)", (None, AMBIGUOUS), (None, UNANSWERED), (1, AMBIGUOUS), (2, AMBIGUOUS)),
    # strict: the letter opening the answer decides (rule 2); lmms-eval's MMAU rule: the first in A-D order again
    # (A, not C, though C comes last); its MMSU rule: the last bracket, A in the first answer, C in the second
    ("(C) or maybe (A)", (2, EXTRACTED), (None, UNANSWERED), (0, AMBIGUOUS), (0, AMBIGUOUS)),
    ("(A) no, (C)", (0, EXTRACTED), (None, UNANSWERED), (0, AMBIGUOUS), (2, AMBIGUOUS)),
    # "A dog": the article reads as letter A to lmms-eval (" A " and "A "); strict (a bare letter followed by a
    # word is no letter) and MMAU (the words) read dog
    ("A dog", (1, EXTRACTED), (1, EXTRACTED), (0, EXTRACTED), (0, EXTRACTED)),
    # two options' texts: MMAU's rule rejects both (each has the other's word); strict: ambiguous
    ("dog or cat", (None, AMBIGUOUS), (None, UNANSWERED), "guess", "guess"),
    # punctuation stripped at the ends, one kind after the other: "B.," loses "," then "."
    ("Answer: B.,", (1, EXTRACTED), (None, UNANSWERED), (1, EXTRACTED), (1, EXTRACTED)),
    # "X." inside a word is a letter to lmms-eval: "D." of "BIRD." -> D (both rules); strict and mmau read bird
    ("BIRD. yes", (2, EXTRACTED), (2, EXTRACTED), (3, EXTRACTED), (3, EXTRACTED)),
    # a lowercase letter is no letter to lmms-eval
    ("b", (1, EXTRACTED), (None, UNANSWERED), "guess", "guess"),
    ("", (None, UNANSWERED), (None, UNANSWERED), "guess", "guess"),
]


@pytest.mark.parametrize("answer, strict, mmau, lmms_mmau, lmms_mmsu", PARSING_TABLE)
def test_each_mode_parses_as_its_reference_rule(answer, strict, mmau, lmms_mmau, lmms_mmsu):
    for parse, expected in ((parse_strict, strict), (parse_mmau, mmau)):
        parsed = parse(answer, ANIMALS)
        assert (parsed.index, parsed.outcome) == expected, parse.__name__
    for parse, expected in ((parse_lmms_eval_mmau, lmms_mmau), (parse_lmms_eval_mmsu, lmms_mmsu)):
        if expected == "guess":
            parsed = parse(answer, ANIMALS, random.Random(3))
            assert parsed.outcome == GUESSED and parsed.index == "ABCD".index(random.Random(3).choice("ABCD"))
        else:
            parsed = parse(answer, ANIMALS, NoGuess())
            assert (parsed.index, parsed.outcome) == expected, parse.__name__


def test_mmau_string_match_is_the_reference_word_rule():
    speech = ["male speech", "female speech", "music"]
    assert mmau_string_match("female speech", "It is female speech.", speech)
    assert not mmau_string_match("male speech", "It is female speech.", speech)  # "female" is another choice's
    assert not mmau_string_match("male speech", "speech", speech)  # "male" missing
    assert mmau_string_match("male speech", "male speech, clearly", speech)
    assert not mmau_string_match("music", "", speech)  # no words at all
    # choices with the same words are one answer to the rule: either is counted correct
    parsed = parse_mmau("dog", ["Dog", "dog.", "cat"])
    assert parsed.outcome == AMBIGUOUS and parsed.index is None
    assert parsed.is_correct(0) and parsed.is_correct(1) and not parsed.is_correct(2)


def test_lmms_eval_mmau_rule_letters_are_a_to_d_and_texts_compare_case_insensitively():
    # "E" is never read (letters are A-D whatever the number of choices): the answer is a guess
    five = ["one", "two", "three", "four", "five"]
    assert parse_lmms_eval_mmau("E", five, random.Random(0)).outcome == GUESSED
    # a letter past a 2-choice item's options: lmms-eval raises IndexError; here wrong and counted
    parsed = parse_lmms_eval_mmau("D", ["happy", "sad"], NoGuess())
    assert (parsed.index, parsed.letter, parsed.beyond_options) == (None, "D", True)
    assert not parsed.is_correct(0) and not parsed.is_correct(1)
    # the chosen choice's text is compared with the answer's, stripped and lowercased
    parsed = parse_lmms_eval_mmau("A", ["Dog", "dog ", "cat"], NoGuess())
    assert parsed.is_correct(1) and parsed.is_correct(0) and not parsed.is_correct(2)
    # the MMSU rule compares letters: E is read on a five-choice item
    assert parse_lmms_eval_mmsu("E", five, NoGuess()).index == 4


def test_guesses_are_seeded_and_reproducible():
    answers = ["no idea"] * 20
    parser, again = AnswerParser("lmms-eval", seed=7), AnswerParser("lmms-eval", seed=7)
    run = [parser.parse(a, ANIMALS, "mmau").index for a in answers]
    assert run == [again.parse(a, ANIMALS, "mmau").index for a in answers]
    assert run == ["ABCD".index(letter) for letter in (random.Random(7).choice("ABCD") for _ in range(1))] + run[1:]
    assert len(set(run)) > 1  # they are guesses, not one fixed option
    other = AnswerParser("lmms-eval", seed=8)
    assert [other.parse(a, ANIMALS, "mmau").index for a in answers] != run


def test_an_unknown_parsing_mode_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="Unknown answer parsing mode 'loose': use one of strict, mmau, lmms-eval"):
        check_answer_parsing("loose")
    items = load_mmau(write_mmau(tmp_path))
    with pytest.raises(ValueError, match="Unknown answer parsing mode"):
        evaluate_model(None, None, items, generate_fn=lambda c, n: ["A"] * len(c), answer_parsing="loose",
                       progress=False)
    with pytest.raises(SystemExit):
        main(["ckpt", "data.json", "--answer_parsing", "loose"])
    assert "--answer-parsing: invalid choice: 'loose' (choose from 'strict', 'mmau', 'lmms-eval')" in capsys.readouterr().err


def test_evaluate_model_scores_and_counts_each_mode(tmp_path):
    items = load_mmau(write_mmau(tmp_path))  # answers: dog (of 4), Violin (of 3), sad (of 2)
    answers = ["dog", "(A) or (B)", "D"]
    generator = ScriptedGenerator(items, answers, [None] * 3)
    results = {mode: evaluate_model(None, None, items, generate_fn=generator, progress=False, answer_parsing=mode,
                                    seed=5) for mode in ("strict", "mmau", "lmms-eval")}
    strict, mmau, lmms = results["strict"], results["mmau"], results["lmms-eval"]
    # strict: dog right; "(A) or (B)" ambiguous; "D" beyond a 2-choice item: unanswered
    assert (strict["correct"], strict["answered"]) == (1, 1)
    assert {k: strict["answer_parsing"][k] for k in ("extracted", "ambiguous", "guessed", "unanswered")} == {
        "extracted": 1, "ambiguous": 1, "guessed": 0, "unanswered": 1}
    # mmau: dog right; no words of a choice in "(A) or (B)" nor "D"
    assert (mmau["correct"], mmau["answer_parsing"]["unanswered"]) == (1, 2)
    # lmms-eval: "dog" guessed (seeded); "(A) or (B)": neither " A " nor " B ", so the first, A = Piano (wrong);
    # "D" beyond the options (wrong)
    guess = "ABCD".index(random.Random(5).choice("ABCD"))
    assert lmms["predictions"][0]["parse_outcome"] == GUESSED and lmms["predictions"][0]["predicted_index"] == guess
    assert [p["correct"] for p in lmms["predictions"]] == [guess == 1, False, False]
    assert lmms["answer_parsing"] == {"mode": "lmms-eval", "seed": 5, "extracted": 1, "ambiguous": 1, "guessed": 1,
                                      "unanswered": 0, "beyond_options": 1}
    markdown = write_report(lmms, tmp_path / "report")["markdown"].read_text()
    assert "Answers parsed by the `lmms-eval` rules (seed 5): 1 extracted, 1 ambiguous, 1 guessed at random" in markdown


def lmms_eval_or_skip(module: str):
    """lmms-eval's `module`; without lmms-eval the test skips, or fails under MOE_AUDIO_REQUIRE_LMMS_EVAL=1 (as CI's readme
    leg sets, after installing it as the README says)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = f"lmms-eval is not installed ({error}): see the README's Evaluation section for the install"
        if os.environ.get("MOE_AUDIO_REQUIRE_LMMS_EVAL") == "1":
            pytest.fail(missing + " (MOE_AUDIO_REQUIRE_LMMS_EVAL=1 requires the lmms-eval tests to run)")
        pytest.skip(missing)


def test_lmms_eval_modes_agree_with_lmms_evals_own_functions():
    """Where lmms-eval is installed: its own parsers (lmms_eval/tasks/mmau/utils.py, lmms_eval/tasks/mmsu/utils.py)
    give the letters of PARSING_TABLE, and, from the same generator state, the same guesses as ours."""
    mmau_utils = lmms_eval_or_skip("lmms_eval.tasks.mmau.utils")
    mmsu_utils = lmms_eval_or_skip("lmms_eval.tasks.mmsu.utils")
    index2ans, letters = mmsu_utils.get_multi_choice_info(ANIMALS)
    for answer, *_ in PARSING_TABLE:
        for seed in range(3):
            random.seed(seed)
            theirs = mmau_utils.parse_multi_choice_response(answer, ["A", "B", "C", "D"])
            ours = parse_lmms_eval_mmau(answer, ANIMALS, random.Random(seed))
            assert ours.letter == theirs, answer
            random.seed(seed)
            theirs = mmsu_utils.parse_multi_choice_response(answer, letters, index2ans)
            assert parse_lmms_eval_mmsu(answer, ANIMALS, random.Random(seed)).letter == theirs, answer
    # the MMAU task's score: the letter's choice text against the answer text
    doc = {"choices": json.dumps(["Dog", "dog ", "cat"]), "answer": "dog ", "task": "sound"}
    assert mmau_utils.mmau_process_results(dict(doc), ["A"])["accuracy"]["overall"] == 1.0
    assert parse_lmms_eval_mmau("A", ["Dog", "dog ", "cat"], NoGuess()).is_correct(1)


# --------------------------------------------------------------------------------------- a real tiny checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from modeling_moe_audio.checkpoints.build import init_checkpoint
    from modeling_moe_audio.presets import load_config, shipped_tokenizer

    folder = tmp_path_factory.mktemp("tiny-4s")
    init_checkpoint(load_config("tiny-4s"), folder, tokenizer=shipped_tokenizer("tiny-4s"))
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    return model, processor


class ForwardSpy:
    """Records what the model's forward receives and whether the audio tower runs (it fails when forbidden)."""

    def __init__(self, model, audio_token_ids, forbid_audio):
        self.forbid_audio, self.audio_token_ids = forbid_audio, audio_token_ids
        self.forward_calls, self.tower_calls = [], 0
        tower = next(module for name, module in model.named_modules() if name.endswith("audio_tower"))
        self.handles = [
            model.register_forward_pre_hook(self.on_forward, with_kwargs=True),
            tower.register_forward_pre_hook(self.on_tower),
        ]

    def on_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        self.forward_calls.append({
            "input_features": kwargs.get("input_features") is not None,
            "audio_tokens": ids is not None and bool(torch.isin(ids, self.audio_token_ids).any()),
        })

    def on_tower(self, module, args):
        self.tower_calls += 1
        if self.forbid_audio:
            raise AssertionError("the audio tower ran during a text-only evaluation")

    def remove(self):
        for handle in self.handles:
            handle.remove()


def test_text_only_path_gives_the_model_no_audio_and_the_audio_path_does(tmp_path, tiny):
    model, processor = tiny
    items = load_voicebench(write_voicebench(tmp_path, voicebench_rows()))
    tokens = [processor.audio_token, "<|audio_start|>", "<|audio_end|>"]
    audio_token_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(tokens))

    spy = ForwardSpy(model, audio_token_ids, forbid_audio=True)
    try:
        text = evaluate_model(model, processor, items, batch_size=2, text_only=True, max_new_tokens=2, progress=False)
    finally:
        spy.remove()
    assert spy.forward_calls and spy.tower_calls == 0
    assert not any(call["input_features"] or call["audio_tokens"] for call in spy.forward_calls)
    for item in items:
        rendered = processor.apply_chat_template(build_conversation(item, text_only=True), tokenize=False,
                                                 add_generation_prompt=True)
        rendered = rendered[0] if isinstance(rendered, list) else rendered
        assert item.audio_text in rendered and not any(token in rendered for token in tokens)
    assert text["num_items"] == 3 and len(text["predictions"]) == 3

    spy = ForwardSpy(model, audio_token_ids, forbid_audio=False)
    try:
        audio = evaluate_model(model, processor, items, batch_size=2, max_new_tokens=2, progress=False)
    finally:
        spy.remove()
    assert spy.tower_calls >= 2  # one per batch at least
    assert any(call["input_features"] and call["audio_tokens"] for call in spy.forward_calls)
    assert audio["mode"] == "audio" and 0.0 <= audio["accuracy"] <= 1.0


def test_main_writes_the_json_and_markdown_reports(tmp_path, tiny_checkpoint, capsys):
    data = write_voicebench(tmp_path, voicebench_rows(), name="openbookqa-dev.jsonl")
    out = tmp_path / "out"
    main([str(tiny_checkpoint), str(data), "--output_dir", str(out), "--text_only_gap", "--batch_size", "2",
          "--max_new_tokens", "2", "--limit", "2", "--no_progress"])
    results = json.loads((out / "results.json").read_text())
    assert (results["format"], results["evaluation"]["num_items"]) == ("voicebench", 2)
    assert set(results["evaluation"]["per_task"]) == {"openbookqa"}
    gap = results["modality_gap"]
    assert gap["gap"] == pytest.approx(gap["audio_accuracy"] - gap["text_accuracy"])
    assert [p["id"] for p in gap["text"]["predictions"]] == ["openbookqa-1", "custom-2"]
    markdown = (out / "results.md").read_text()
    assert "## Accuracy (audio input, lettered prompt)" in markdown and "## Modality gap" in markdown
    assert "| openbookqa | 2 |" in markdown
    assert "wrote" in capsys.readouterr().out
    saved = (out / "results.json").read_bytes()
    with pytest.raises(SystemExit, match="is not empty .*--overwrite"):
        main([str(tiny_checkpoint), str(data), "--output_dir", str(out), "--limit", "1", "--no_progress"])
    assert (out / "results.json").read_bytes() == saved
    main([str(tiny_checkpoint), str(data), "--output_dir", str(out), "--limit", "1", "--max_new_tokens", "2",
          "--no_progress", "--overwrite"])
    assert json.loads((out / "results.json").read_text())["evaluation"]["num_items"] == 1

    mmau = write_mmau(tmp_path)
    with pytest.raises(SystemExit, match="no item .* carries a text form"):
        main([str(tiny_checkpoint), str(mmau), "--text_only_gap", "--output_dir", str(tmp_path / "x")])
    bad = write_mmau(tmp_path, [{**MMAU_ROWS[0], "answer": "horse"}], name="bad.json")
    with pytest.raises(SystemExit, match="item 1 .*not among the choices"):
        main([str(tiny_checkpoint), str(bad), "--output_dir", str(tmp_path / "y")])


# ------------------------------------------------------------------------------------ lmms-eval: the model by name

LMMS_TASK_UTILS = """import soundfile
from lmms_eval.tasks.mmau.utils import doc_to_text, mmau_aggregate_results, mmau_process_results  # noqa: F401


def doc_to_audio(doc):
    samples, rate = soundfile.read(doc["audio_path"], dtype="float32")
    return [{"array": samples, "sampling_rate": rate}]


def process_results(doc, results):
    return {"accuracy": mmau_process_results(doc, results)["accuracy"]}
"""

LMMS_TASK_YAML = """task: moe_audio_mmau_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_audio
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  do_sample: false
  until: ["<no stop>"]
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\\\nAnswer with the option's letter from the given choices directly."
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: !function utils.mmau_aggregate_results
    higher_is_better: true
"""


@pytest.mark.slow
def test_lmms_eval_runs_the_model_by_name_on_a_local_mmau_task(tmp_path, tiny_checkpoint, monkeypatch):
    """lmms-eval's own evaluator, in process and offline, loads this model by its registered name ("moe_audio",
    entry point lmms_eval.models) and runs a local task in the MMAU format of lmms-eval's mmau task (choices as a
    JSON string, the answer's text) on real wav files, scored by lmms-eval's mmau functions."""
    lmms_eval_or_skip("lmms_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import lmms_eval.models
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager
    from lmms_eval.tasks.mmau.utils import doc_to_text

    from modeling_moe_audio.data.audio import SAMPLING_RATE
    from modeling_moe_audio.evaluation.generation import greedy_generate
    from modeling_moe_audio.evaluation.lmms_eval_model import MoEAudioLmms

    assert "moe_audio" in lmms_eval.models.list_available_models()
    assert lmms_eval.models.get_model("moe_audio") is MoEAudioLmms

    rows = []
    for n, source in enumerate(MMAU_ROWS):
        clip = write_wav(tmp_path / f"clip{n}.wav", 0.2 + 0.1 * n, 300 + 100 * n)
        rows.append({"id": source["id"], "audio_path": str(clip), "question": source["question"],
                     "choices": json.dumps(source["choices"]), "answer": source["answer"].strip(),
                     "task": source["task"]})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    task_folder = tmp_path / "task"
    task_folder.mkdir()
    (task_folder / "utils.py").write_text(LMMS_TASK_UTILS)
    (task_folder / "moe_audio_mmau_local.yaml").write_text(LMMS_TASK_YAML.format(rows=tmp_path / "rows.jsonl"))

    results = simple_evaluate(model="moe_audio", model_args=f"pretrained={tiny_checkpoint},batch_size=2",
                              tasks=["moe_audio_mmau_local"], task_manager=TaskManager(include_path=str(task_folder)),
                              log_samples=True, device="cpu", random_seed=0)
    accuracy = results["results"]["moe_audio_mmau_local"]["accuracy,none"]
    samples = sorted(results["samples"]["moe_audio_mmau_local"], key=lambda sample: sample["doc_id"])
    assert len(samples) == 3 and 0.0 <= accuracy <= 100.0
    assert accuracy == pytest.approx(100 * sum(s["accuracy"]["overall"] for s in samples) / 3)

    # the wrapper answered what greedy generation answers to the task's prompt and the row's clip (the task's
    # `until` is a string never generated: without one, lmms-eval cuts answers at its default "\n\n")
    model, processor = load_checkpoint_for_test(tiny_checkpoint)
    kwargs = {"pre_prompt": "", "post_prompt": "\nAnswer with the option's letter from the given choices directly."}
    conversations = [[{"role": "user", "content": [
        {"type": "audio", "audio": soundfile.read(row["audio_path"], dtype="float32")[0],
         "sampling_rate": SAMPLING_RATE},
        {"type": "text", "text": doc_to_text(row, kwargs)}]}] for row in rows]
    expected = greedy_generate(model, processor, conversations, max_new_tokens=3)
    assert [sample["resps"][0][0] for sample in samples] == expected


def load_checkpoint_for_test(folder):
    from modeling_moe_audio.checkpoints.loading import load_checkpoint

    model, processor = load_checkpoint(folder, device="cpu")
    return model.eval(), processor
