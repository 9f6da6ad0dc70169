"""Comparisons over seeds: paired differences, their intervals, verdicts that name a winner only when they may, and
`moe-audio compare` end to end on the quick budget."""

import json
import math

import pytest

from modeling_moe_audio.experiments.claims import (
    cosines_during_training,
    format_claims,
    routing_specialisation,
    summarise_claims,
)
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


def test_routing_specialisation_is_the_mean_total_variation_between_categories():
    alike = {"speech": [0.5, 0.5, 0.5, 0.5], "music": [0.5, 0.5, 0.5, 0.5]}  # top-2 of 4 experts: rates sum to 2
    assert routing_specialisation(alike) == pytest.approx(0.0)
    apart = {"speech": [2.0, 2.0, 0.0, 0.0], "music": [0.0, 0.0, 2.0, 2.0]}
    assert routing_specialisation(apart) == pytest.approx(1.0)
    # Three categories: pairs (a, b) 0.5, (a, c) 1, (b, c) 0.5 -> mean 2/3.
    three = {"a": [2.0, 0.0, 0.0], "b": [1.0, 1.0, 0.0], "c": [0.0, 2.0, 0.0]}
    assert routing_specialisation(three) == pytest.approx(2 / 3)
    assert routing_specialisation({**apart, "sound": None}) == pytest.approx(1.0)  # no audio token: left out
    with pytest.raises(ValueError, match="at least two categories"):
        routing_specialisation({"speech": [1.0, 1.0]})


def test_experts_are_put_in_one_order_before_averaging_over_seeds():
    from modeling_moe_audio.experiments.claims import _by_favoured_kind

    # Two seeds whose experts learnt the same split under other numbers average to that split once ordered.
    seed_a = [[0.9, 0.1, 0.5], [0.1, 0.9, 0.5]]  # expert 0 favours speech, 1 music, 2 neither (excess 0: speech)
    seed_b = [[0.1, 0.5, 0.9], [0.9, 0.5, 0.1]]
    assert _by_favoured_kind(seed_a) == _by_favoured_kind(seed_b) == [[0.9, 0.5, 0.1], [0.1, 0.5, 0.9]]


def test_cosines_during_training_come_from_the_trainer_state(tmp_path):
    assert cosines_during_training(tmp_path) == {}
    history = [{"step": 10, "loss": 2.0}, {"step": 20, "grad_cos/a-b": 0.5, "loss": 1.5}, {"step": 40, "grad_cos/a-b": -0.25}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert cosines_during_training(tmp_path) == {"a-b": [(20, 0.5), (40, -0.25)]}


def _claimed_run(config, seed, cosine, gap=None, specialisation=None):
    run = {"config": config, "seed": seed, "claims": {"cosine_during_training": {"a-b": cosine, "a-c": cosine + 0.2},
                                                      "cosine_end": {"a-b": cosine}}}
    if gap is not None:
        run["modality_gap"] = {"gap": gap}
    if specialisation is not None:
        run["claims"]["specialisation"] = {"trained": specialisation, "initial": 0.01}
    return run


def test_claims_are_summarised_over_seeds_and_paired_with_the_baseline():
    runs = [_claimed_run("moe", s, 0.1 + 0.01 * s, gap=-0.2, specialisation=0.3 + 0.01 * s) for s in range(3)]
    runs += [_claimed_run("dense", s, -0.1 - 0.02 * s, gap=-0.3 + 0.01 * s) for s in range(3)]
    summary = summarise_claims(runs, ["moe", "dense"], [0, 1, 2], "dense")
    # Mean over pairs, then over seeds: moe (0.2 + 0.21 + 0.22) / 3 = 0.21; dense (0.0 - 0.02 - 0.04) / 3 = -0.02.
    assert summary["measures"]["cosine_during_training"]["moe"]["mean"] == pytest.approx(0.21)
    assert summary["measures"]["cosine_during_training"]["dense"]["mean"] == pytest.approx(-0.02)
    assert summary["differences"]["cosine_during_training"]["moe"]["mean"] == pytest.approx(0.23)
    assert summary["differences"]["modality_gap"]["moe"]["mean"] == pytest.approx(-0.2 - (-0.29))
    assert "specialisation" not in summary["differences"]  # the dense adapter has no routing to compare
    gain = summary["specialisation_gain"]["moe"]
    assert gain["mean"] == pytest.approx(0.30) and gain["ci_low"] > 0
    assert summary["pairs"]["dense"]["a-c"]["mean"] == pytest.approx(0.08)
    table = format_claims(summary, "dense")
    gap_row = next(line for line in table.splitlines() if line.startswith("| modality gap"))
    assert "| -0.200 ± 0.000 | -0.290 ± 0.010 | moe: +0.090 [" in gap_row
    assert "| a-b | +0.110 ± 0.010 | -0.120 ± 0.020 | moe: +0.230 [" in table
    assert summary["pair_differences"]["moe"]["a-c"]["mean"] == pytest.approx(0.23)
    assert "moe trained - initial: +0.300" in table


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
    command = ["compare", "--quick", "--corpus", "conflict", "--seeds", "0", "1", "--output_dir", tmp_path]
    first = moe_audio_process(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "comparison.json").read_text())
    assert {(r["config"], r["seed"]) for r in summary["runs"]} == {("moe", 0), ("moe", 1), ("dense", 0), ("dense", 1)}
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "comparison.md").read_text()
    assert "| moe - dense |" in table and "| modality gap" in table and "| acoustic-content |" in table
    # Every run measured the claims: cosines logged during training (QUICK probes every 30 of its 90 steps), the
    # end-of-training analyses, the text form of the word questions, and the MoE runs' routing.
    for run in summary["runs"]:
        claims = run["claims"]
        assert [step for step, _ in claims["cosine_history"]["acoustic-content"]] == [30, 60, 90]
        assert set(claims["cosine_end"]) == {"acoustic-content", "acoustic-paralinguistic", "content-paralinguistic"}
        gap = run["modality_gap"]
        assert gap["gap"] == pytest.approx(gap["audio_accuracy"] - gap["text_accuracy"])
        assert gap["audio_accuracy"] == run["accuracy"]["content"]
        assert ("specialisation" in claims) == (run["config"] == "moe")
        assert (tmp_path / run["config"] / f"seed-{run['seed']}" / "analysis" / "analysis.json").is_file()
    for figure in summary["figures"].values():
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(summary["figures"]) >= {"moe experts", "moe cosine", "dense influence", "cosine during training"}
    overall = summary["differences"]["moe"]["per_category"]["overall"]
    assert overall["n"] == 2 and overall["ci_low"] <= overall["mean"] <= overall["ci_high"]
    assert summary["differences"]["moe"]["verdict"] in first.stdout
    trained = (tmp_path / "moe" / "seed-1" / "model.safetensors").stat().st_mtime
    second = moe_audio_process(*command)  # resumed: nothing trained again
    assert second.returncode == 0 and (tmp_path / "moe" / "seed-1" / "model.safetensors").stat().st_mtime == trained
