"""Accuracy: the one `evaluate` metric every score of the package goes through, overall and per group, with counts.

`GroupedAccuracy` is a local `evaluate.Metric` (the Hub's "accuracy" module cannot be downloaded here): from
predicted and reference labels (ints) and each item's group labels it returns the accuracy, the number of items,
of correct answers and of answered ones, overall and per group, in one computation. Two callers:

- `evaluate_model` (multiple choice): labels are option indices; an answer mapped to no option is -1 or None;
- `score_answers` (the built-in corpus of `moe-audio demo` / `ablate`): one-word answers, compared on
  `first_word(answer) == first_word(reference)`, as {"overall": accuracy, <group>: accuracy, ...}.

This is the only module of the package that imports `evaluate` and `datasets` at import time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import datasets
import evaluate

from ..data.conversation import reference_answer
from .answers import first_word


def _counts(hits: list[bool], answered: list[bool]) -> dict:
    return {"accuracy": sum(hits) / len(hits), "num_items": len(hits), "correct": sum(hits), "answered": sum(answered)}


class GroupedAccuracy(evaluate.Metric):
    """Accuracy of predicted labels, overall and per group, with the counts it is made of.

    `compute(predictions=, references=, groups=, group_names=)`: `predictions`, `references`: one int label per
    item (a prediction of -1 or None is unanswered: never correct; references are labels >= 0); `groups`: per
    item, its list of group labels, one per name in `group_names` (e.g. `[["sound", "Sound Source"], ...]` with
    `group_names=["task", "category"]`; `[[], ...]` and no names for the overall figures only).

    Returns {"accuracy", "num_items", "correct", "answered", "per_<name>": {label: {"accuracy", "num_items",
    "correct", "answered"}} for each group name, labels sorted}. No item at all is a ValueError.
    """

    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of items whose predicted label is the reference's, overall and per group, with "
            "the numbers of items, correct answers and answered items (a prediction of -1 or None is unanswered).",
            citation="",
            inputs_description="predictions, references: labels (int; -1 or None: no answer); groups: per item, "
            "one label (str) per grouping; group_names (keyword): the groupings' names.",
            features=datasets.Features({
                "predictions": datasets.Value("int64"),
                "references": datasets.Value("int64"),
                "groups": datasets.List(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references, groups, group_names: Sequence[str] = ()) -> dict:
        if not references:
            raise ValueError("No predictions to score: accuracy over zero items is undefined.")
        if any(reference is None or reference < 0 for reference in references):
            raise ValueError("Every reference must be a label >= 0 (-1 and None mean 'unanswered' in predictions).")
        group_names = list(group_names)
        if any(len(labels) != len(group_names) for labels in groups):
            raise ValueError(f"Every item needs one group label per group name {group_names}.")
        answered = [prediction is not None and prediction >= 0 for prediction in predictions]
        hits = [ok and prediction == reference for ok, prediction, reference in zip(answered, predictions, references)]
        result = _counts(hits, answered)
        for position, name in enumerate(group_names):
            members = defaultdict(list)
            for item, labels in enumerate(groups):
                members[labels[position]].append(item)
            result[f"per_{name}"] = {
                label: _counts([hits[i] for i in items], [answered[i] for i in items])
                for label, items in sorted(members.items())
            }
        return result


_METRIC = None


def default_metric() -> GroupedAccuracy:
    """The shared in-memory `GroupedAccuracy` (it writes no cache files)."""
    global _METRIC
    if _METRIC is None:
        _METRIC = GroupedAccuracy(keep_in_memory=True)
    return _METRIC


def compute_accuracy(predictions: Sequence, references: Sequence, groups: dict[str, Sequence] | None = None,
                     metric: evaluate.EvaluationModule | None = None) -> dict:
    """`metric.compute` (default `GroupedAccuracy`) with the groups given as {name: one label per item}."""
    groups = groups or {}
    if any(len(labels) != len(references) for labels in groups.values()):
        raise ValueError(f"Every grouping needs one label per item ({len(references)}).")
    per_item = [[str(labels[i]) for labels in groups.values()] for i in range(len(references))]
    metric = default_metric() if metric is None else metric
    return metric.compute(predictions=list(predictions), references=list(references), groups=per_item,
                          group_names=list(groups))


def _answer_labels(rows: list[dict], answers: list[str]) -> tuple[list[int], list[int]]:
    """Predicted and reference labels of one-word answers: the same first word, the same label; no word, -1."""
    if len(rows) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(rows)} rows.")
    words = [first_word(reference_answer(row)) for row in rows]
    if not all(words):
        raise ValueError(f"Row {words.index('')} has a reference answer without a word to score against.")
    labels = {}  # word -> label; a reference and an answer with the same word get the same label
    references = [labels.setdefault(word, len(labels)) for word in words]
    predictions = [labels.setdefault(word, len(labels)) if word else -1 for word in map(first_word, answers)]
    return predictions, references


def answer_hits(rows: list[dict], answers: list[str]) -> list[bool]:
    """Per row, whether its one-word answer is right (as `score_answers` counts it): what pairs two models that
    answered the same questions."""
    predictions, references = _answer_labels(rows, answers)
    return [prediction == reference for prediction, reference in zip(predictions, references)]


def score_answers(rows: list[dict], answers: list[str], group_key: str = "category",
                  metric: evaluate.EvaluationModule | None = None) -> dict[str, float]:
    """Accuracy of one-word answers to corpus rows, overall and per `row[group_key]`, through the metric.

    An answer is right when `first_word(answer) == first_word(reference_answer(row))`; an answer without a word
    is unanswered. Returns {"overall": accuracy, <group>: accuracy, ...} (groups sorted).
    """
    predictions, references = _answer_labels(rows, answers)
    result = compute_accuracy(predictions, references, {group_key: [row[group_key] for row in rows]}, metric)
    return {"overall": result["accuracy"], **{name: r["accuracy"] for name, r in result[f"per_{group_key}"].items()}}
