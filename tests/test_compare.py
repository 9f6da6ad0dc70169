"""Comparisons over seeds: paired differences, their intervals, verdicts that name a winner only when they may, and
`moe-audio compare` end to end on the quick budget."""

import json
import math

import pytest

from modeling_moe_audio.experiments.comparison import check_plan, format_tables, summarise
from modeling_moe_audio.experiments.statistics import paired_difference, spread, verdict

from helpers import moe_audio_process


# Student's t quantile t(0.975, df=2), from printed tables (e.g. NIST/SEMATECH e-Handbook, Table 1.4.2).
T_975_DF2 = 4.303


def test_paired_difference_is_students_t_over_the_pairs():
    a, b = [0.91, 0.93, 0.92], [0.90, 0.90, 0.90]  # differences 0.01, 0.03, 0.02: mean 0.02, sd 0.01
    difference = paired_difference(a, b)
    assert difference["n"] == 3
    assert difference["mean"] == pytest.approx(0.02)
    assert difference["std"] == pytest.approx(0.01)
    half_width = T_975_DF2 * 0.01 / math.sqrt(3)
    assert difference["ci_low"] == pytest.approx(0.02 - half_width, abs=1e-4)
    assert difference["ci_high"] == pytest.approx(0.02 + half_width, abs=1e-4)
    # t = 0.02 / (0.01 / sqrt(3)) = 3.46 with 2 degrees of freedom: two-sided p between 0.05 and 0.1.
    assert 0.05 < difference["p_value"] < 0.1
    # Pairing matters: the same values paired otherwise give another spread.
    assert paired_difference([0.91, 0.95, 0.93], [0.90, 0.93, 0.92])["std"] < paired_difference(
        [0.91, 0.95, 0.93], [0.93, 0.90, 0.92])["std"]


def test_paired_difference_edge_cases():
    single = paired_difference([0.9], [0.8])
    assert single["mean"] == pytest.approx(0.1) and single["ci_low"] is None and single["p_value"] is None
    constant = paired_difference([1.0, 1.0], [0.0, 0.0])
    assert (constant["ci_low"], constant["ci_high"], constant["p_value"]) == (1.0, 1.0, 0.0)
    assert paired_difference([0.5, 0.5], [0.5, 0.5])["p_value"] == 1.0
    with pytest.raises(ValueError, match="same count"):
        paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="No pairs"):
        paired_difference([], [])
    assert spread([0.8, 0.9, 1.0]) == pytest.approx({"n": 3, "mean": 0.9, "std": 0.1, "min": 0.8, "max": 1.0})


def test_verdicts_name_a_winner_only_when_the_interval_excludes_zero():
    ahead = paired_difference([0.91, 0.93, 0.92], [0.90, 0.90, 0.90])  # CI [-0.005, 0.045]: covers zero
    assert verdict("moe", "dense", ahead).startswith("No winner")
    clear = paired_difference([0.95, 0.96, 0.97, 0.95], [0.90, 0.90, 0.91, 0.90])
    assert clear["ci_low"] > 0
    assert verdict("moe", "dense", clear).startswith("moe beats dense")
    assert verdict("dense", "moe", paired_difference([0.90, 0.90, 0.91, 0.90], [0.95, 0.96, 0.97, 0.95])).startswith(
        "moe beats dense")
    assert verdict("moe", "dense", paired_difference([0.9], [0.8])).startswith("No winner can be named")
    # One seed, paired over its test questions: even an interval that excludes zero names no winner, because it
    # leaves out the variation from seed to seed; the sentence says so and what to run.
    questions = paired_difference([1.0] * 30 + [0.0] * 90, [0.0] * 15 + [1.0] * 0 + [0.0] * 105)
    assert questions["ci_low"] > 0
    sentence = verdict("MoE", "dense", questions, "overall test accuracy", "questions")
    assert "One seed names no winner" in sentence and "beats" not in sentence and "moe-audio compare" in sentence


def _run(config, seed, accuracy, hits):
    return {"config": config, "seed": seed, "hits": hits,
            "accuracy": {"overall": accuracy, "speech": accuracy, "music": accuracy, "sound": accuracy}}


def test_summary_pairs_runs_by_seed():
    runs = [_run("moe", 0, 0.90, []), _run("dense", 0, 0.80, []), _run("dense", 1, 0.85, []), _run("moe", 1, 0.96, []),
            _run("moe", 2, 0.93, []), _run("dense", 2, 0.82, [])]
    summary = summarise(runs, ["moe", "dense"], [0, 1, 2], "dense")
    overall = summary["differences"]["moe"]["per_category"]["overall"]
    assert overall["mean"] == pytest.approx((0.10 + 0.11 + 0.11) / 3)
    assert summary["configs"]["dense"]["overall"]["mean"] == pytest.approx(0.8233333)
    assert summary["differences"]["moe"]["verdict"].startswith("moe beats dense")
    table = format_tables(summary)
    assert "| moe - dense |" in table and "over 3 seeds" in table


def test_single_seed_summary_pairs_the_test_questions():
    runs = [_run("moe", 0, 0.5, [True, False, True, True]), _run("dense", 0, 0.5, [True, True, False, False])]
    summary = summarise(runs, ["moe", "dense"], [0], "dense")
    difference = summary["differences"]["moe"]
    assert difference["per_category"]["overall"]["n"] == 4
    assert difference["per_category"]["overall"]["mean"] == pytest.approx(0.25)
    assert "One seed names no winner" in difference["verdict"]


@pytest.mark.parametrize(("configs", "seeds", "baseline", "message"), [
    (["moe", "desne"], [0, 1], "dense", "Unknown configurations"),
    (["moe", "moe"], [0, 1], "moe", "given once"),
    (["moe", "dense"], [0, 0], "dense", "given once"),
    (["moe", "dense"], [], "dense", "at least one seed"),
    (["moe", "8-choose-1"], [0, 1], "dense", "baseline 'dense' must be one of"),
])
def test_a_bad_plan_is_refused_before_any_training(configs, seeds, baseline, message):
    with pytest.raises(ValueError, match=message):
        check_plan(configs, seeds, baseline)


@pytest.mark.slow
def test_compare_quick_two_seeds_writes_tables_plot_and_resumes(tmp_path):
    command = ["compare", "--quick", "--seeds", "0", "1", "--output_dir", tmp_path]
    first = moe_audio_process(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "comparison.json").read_text())
    assert {(r["config"], r["seed"]) for r in summary["runs"]} == {("moe", 0), ("moe", 1), ("dense", 0), ("dense", 1)}
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| moe - dense |" in (tmp_path / "comparison.md").read_text()
    overall = summary["differences"]["moe"]["per_category"]["overall"]
    assert overall["n"] == 2 and overall["ci_low"] <= overall["mean"] <= overall["ci_high"]
    assert summary["differences"]["moe"]["verdict"] in first.stdout
    trained = (tmp_path / "moe" / "seed-1" / "model.safetensors").stat().st_mtime
    second = moe_audio_process(*command)  # resumed: nothing trained again
    assert second.returncode == 0 and (tmp_path / "moe" / "seed-1" / "model.safetensors").stat().st_mtime == trained
