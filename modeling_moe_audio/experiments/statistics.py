"""When is one configuration better than another? Paired differences, their confidence intervals, and verdicts.

Two configurations trained with the same seeds (same initialisation seed, data order and data) are paired seed by
seed: the difference of their accuracies on each seed, its mean, a 95% confidence interval of the mean (Student's t
over the seeds) and the paired t-test's p-value (`scipy.stats.ttest_rel`). With one seed there is no seed-to-seed
spread to measure; the same test questions still pair the two models question by question, which bounds the
test-set sampling noise of that one run (and only that).

A verdict names a winner only when the interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


CONFIDENCE = 0.95


def paired_difference(values_a: Sequence[float], values_b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """`a - b` over pairs: {"n", "mean", "std", "ci_low", "ci_high", "p_value"}; `ci_*` and `p_value` are None with
    fewer than two pairs. Pairs whose differences are all equal have a zero-width interval (and p 1.0 or 0.0)."""
    if len(values_a) != len(values_b):
        raise ValueError(f"Paired values need the same count: {len(values_a)} and {len(values_b)}.")
    if not values_a:
        raise ValueError("No pairs to compare.")
    differences = [a - b for a, b in zip(values_a, values_b)]
    n = len(differences)
    mean = sum(differences) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1)) if n > 1 else 0.0
    result = {"n": n, "mean": mean, "std": std, "ci_low": None, "ci_high": None, "p_value": None,
              "confidence": confidence}
    if n < 2:
        return result
    if std == 0.0:
        return {**result, "ci_low": mean, "ci_high": mean, "p_value": 1.0 if mean == 0 else 0.0}
    from scipy import stats

    test = stats.ttest_rel(values_a, values_b)
    interval = test.confidence_interval(confidence)
    return {**result, "ci_low": float(interval.low), "ci_high": float(interval.high), "p_value": float(test.pvalue)}


def spread(values: Sequence[float]) -> dict:
    """{"n", "mean", "std", "min", "max"} of one configuration's values over seeds."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values)}


def verdict(name_a: str, name_b: str, difference: dict, what: str = "accuracy", over: str = "seeds") -> str:
    """One sentence: who wins, or that the difference is within its uncertainty, with the figures behind it.

    `over` names what the pairs are. Pairs over the test questions of a single seed (`over="questions"`) never name
    a winner: their interval covers the test sampling only, not the seed-to-seed variation that dominates small runs.
    """
    mean = difference["mean"]
    if difference["ci_low"] is None:
        return (f"No winner can be named: {name_a} - {name_b} {what} is {mean:+.3f} from a single pair, whose "
                f"uncertainty is unknown.")
    interval = (f"{mean:+.3f}, {difference['confidence']:.0%} CI [{difference['ci_low']:+.3f}, "
                f"{difference['ci_high']:+.3f}]")
    covers_zero = difference["ci_low"] <= 0 <= difference["ci_high"]
    if over == "questions":
        return (f"One seed names no winner: {name_a} - {name_b} {what} is {interval} over the {difference['n']} test "
                f"questions{', which covers zero' if covers_zero else ''}; that interval is the test sampling alone, and "
                f"the variation from seed to seed (not measured here) adds to it. `moe-audio compare --seeds 0 1 2 3 4` "
                f"measures both.")
    interval += f" over {difference['n']} {over}, p = {difference['p_value']:.2g}"
    if not covers_zero and difference["ci_low"] > 0:
        return f"{name_a} beats {name_b} on {what} ({interval})."
    if not covers_zero:
        return f"{name_b} beats {name_a} on {what} ({interval})."
    return f"No winner: the {what} difference {name_a} - {name_b} is within its uncertainty ({interval})."
