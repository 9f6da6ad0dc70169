"""Reports: an evaluation's results as markdown tables, and `results.json` + `results.md` on disk."""

from __future__ import annotations

import json
from pathlib import Path


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _accuracy_table(title: str, table: dict) -> list[str]:
    lines = [f"| {title} | items | answered | accuracy (%) |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['num_items']} | {r['answered']} | {_pct(r['accuracy'])} |" for name, r in table.items()]
    return lines


def _gap_lines(title: str, table: dict) -> list[str]:
    lines = [f"| {title} | items | text accuracy (%) | audio accuracy (%) | modality gap (audio - text) |",
             "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {name} | {r['num_items']} | {_pct(r['text_accuracy'])} | {_pct(r['audio_accuracy'])} | "
        f"{100 * r['gap']:+.2f} |"
        for name, r in table.items()
    ]
    return lines


def _parsing_line(parsing: dict) -> str:
    beyond = parsing.get("beyond_options", 0)
    return (f"Answers parsed by the `{parsing['mode']}` rules (seed {parsing['seed']}): {parsing['extracted']} "
            f"extracted, {parsing['ambiguous']} ambiguous, {parsing['guessed']} guessed at random, "
            f"{parsing['unanswered']} unanswered" + (f", {beyond} letters beyond the options" if beyond else "") + ".")


def render_markdown(results: dict) -> str:
    """The report as markdown: audio accuracy overall / per task / per category, and the modality gap table."""
    lines = ["# Multiple-choice audio QA evaluation", ""]
    for key in ("model", "data", "format"):
        if key in results:
            lines.append(f"- {key}: `{results[key]}`")
    evaluation = results.get("evaluation")
    if evaluation is not None:
        style = evaluation.get("prompt_style", "lettered")
        lines += ["", f"## Accuracy ({evaluation['mode']} input, {style} prompt)", ""]
        parsing = evaluation.get("answer_parsing")
        if parsing is not None:
            lines += [_parsing_line(parsing), ""]
        overall = {"overall": {k: evaluation[k] for k in ("num_items", "answered", "accuracy")}}
        lines += _accuracy_table("", overall) + [""]
        lines += _accuracy_table("task", evaluation["per_task"]) + [""]
        lines += _accuracy_table("category", evaluation["per_category"])
    gap = results.get("modality_gap")
    if gap is not None:
        lines += ["", "## Modality gap (audio accuracy - text accuracy, percentage points)", ""]
        overall = {"overall": {k: gap[k] for k in ("num_items", "text_accuracy", "audio_accuracy", "gap")}}
        lines += _gap_lines("", overall) + [""]
        lines += _gap_lines("task", gap["per_task"]) + [""]
        lines += _gap_lines("category", gap["per_category"])
        if gap.get("skipped"):
            lines += ["", f"{gap['skipped']} item(s) without a text form of their audio are not in the gap."]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write `results.json` (everything, predictions included) and `results.md` (tables) to `out_dir`.

    `results`: {"evaluation": an `evaluate_model` result, "modality_gap": a `modality_gap` result (optional), and
    any of "model", "data", "format"}; a bare `evaluate_model` or `modality_gap` result is accepted too.
    Returns {"json": path, "markdown": path}.
    """
    if "predictions" in results:
        results = {"evaluation": results}
    elif "gap" in results and "audio" in results:
        results = {"evaluation": results["audio"], "modality_gap": results}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(results), encoding="utf-8")
    return paths
