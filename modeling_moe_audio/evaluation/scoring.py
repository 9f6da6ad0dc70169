"""Scoring: ask every item, extract the chosen options and score them with the metric; the modality gap; and
`run_evaluation`, the whole `moe-audio evaluate` run (load a checkpoint and a benchmark file, evaluate, report)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tqdm.auto import tqdm

from ..output_dirs import check_output_dir
from .answer_parsing import AnswerParser, check_answer_parsing, count_outcomes
from .benchmarks import QAItem, detect_format, load_items
from .generation import greedy_generate
from .prompts import build_conversation, build_prompt, check_prompt_style
from .reports import write_report


if TYPE_CHECKING:
    import evaluate

# What every result is broken down by: the keys "per_task", "per_category", "per_benchmark".
GROUPINGS = ("task", "category", "benchmark")


def evaluate_model(
    model,
    processor,
    items: list[QAItem],
    batch_size: int = 8,
    text_only: bool = False,
    max_new_tokens: int = 16,
    generate_fn: Callable[[list[list[dict]], int], list[str]] | None = None,
    metric: evaluate.EvaluationModule | None = None,
    progress: bool = True,
    prompt_style: str = "lettered",
    answer_parsing: str = "strict",
    seed: int = 0,
) -> dict:
    """Ask every item (greedy, batched), extract the chosen options and score them.

    `text_only=True` asks the text-only prompt (`build_prompt(item, text_only=True)`): no audio is decoded or
    given to the model. `generate_fn(conversations, max_new_tokens) -> answers` replaces the model's greedy
    generation (default: `greedy_generate(model, processor, ...)`). `metric`: an `evaluate` module with the inputs
    and outputs of `GroupedAccuracy` (the default), computed once: every figure below comes from that computation.
    `prompt_style`: "lettered" (default) or "question" (see `build_prompt`). `answer_parsing`: "strict" (default,
    ours), "mmau" or "lmms-eval" (the published evaluators' rules, `answer_parsing` module); `seed` seeds the
    random guesses of lmms-eval's rules (one generator, drawn in item order).

    Returns {"mode": "audio" | "text", "prompt_style", "answer_parsing": {"mode", "seed", "extracted", "ambiguous",
    "guessed", "unanswered", "beyond_options"} (answers counted by how they were parsed), "accuracy", "num_items",
    "correct", "answered" (answers mapped to an option, guesses included), "per_task", "per_category",
    "per_benchmark" (each {name: {"accuracy", "num_items", "correct", "answered"}}), "predictions": one dict per
    item (id, task, category, benchmark, prompt, response, predicted_index, predicted_letter, parse_outcome,
    answer_index, answer_letter, correct)}. Accuracies are fractions in [0, 1].
    """
    if not items:
        raise ValueError("No items to evaluate.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive (got {batch_size}).")
    check_prompt_style(prompt_style)
    check_answer_parsing(answer_parsing)
    parser = AnswerParser(answer_parsing, seed)
    if text_only:
        missing = [item.id for item in items if not item.audio_text]
        if missing:
            raise ValueError(f"{len(missing)} item(s) have no text form of their audio (first: {missing[0]}): "
                             "they cannot be asked text-only.")
    if generate_fn is None:
        if model is None or processor is None:
            raise ValueError("Give a model and a processor, or a generate_fn.")
        model.eval()

        def generate_fn(conversations, max_new_tokens):
            return greedy_generate(model, processor, conversations, max_new_tokens)

    mode = "text" if text_only else "audio"
    rows, parsed_answers = [], []
    benchmarks = "/".join(sorted({item.benchmark for item in items}))
    with tqdm(total=len(items), desc=f"{benchmarks} ({mode})", unit="item", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            conversations = [build_conversation(item, text_only, style=prompt_style) for item in batch]
            answers = generate_fn(conversations, max_new_tokens)
            if len(answers) != len(batch):
                raise RuntimeError(f"The generator returned {len(answers)} answers for {len(batch)} questions.")
            for item, answer in zip(batch, answers):
                parsed = parser.parse(answer, item.options, item.benchmark)
                parsed_answers.append(parsed)
                correct = parsed.is_correct(item.answer_index)
                rows.append({
                    "id": item.id, "task": item.task, "category": item.category, "benchmark": item.benchmark,
                    "prompt": build_prompt(item, text_only, prompt_style), "response": answer,
                    "predicted_index": parsed.index, "predicted_letter": parsed.letter,
                    "parse_outcome": parsed.outcome, "answer_index": item.answer_index,
                    "answer_letter": item.answer_letter, "correct": correct,
                })
            bar.update(len(batch))
    from .accuracy import compute_accuracy  # evaluate and datasets: imported when first scoring

    # The metric's label: the reference's when the mode's rule counts the answer correct (mmau accepts any of
    # several choices with the same words), else the option chosen, None when there is none
    labels = [row["answer_index"] if row["correct"] else row["predicted_index"] for row in rows]
    scores = compute_accuracy(
        predictions=labels,
        references=[row["answer_index"] for row in rows],
        groups={key: [row[key] for row in rows] for key in GROUPINGS},
        metric=metric,
    )
    counts = {"mode": answer_parsing, "seed": seed, **count_outcomes(parsed_answers)}
    return {"mode": mode, "prompt_style": prompt_style, "answer_parsing": counts, **scores, "predictions": rows}


def _gap_table(audio: dict, text: dict) -> dict:
    return {
        name: {
            "num_items": audio[name]["num_items"],
            "text_accuracy": text[name]["accuracy"],
            "audio_accuracy": audio[name]["accuracy"],
            "gap": audio[name]["accuracy"] - text[name]["accuracy"],
        }
        for name in audio
    }


def modality_gap(
    model,
    processor,
    items: list[QAItem],
    batch_size: int = 8,
    max_new_tokens: int = 16,
    generate_fn: Callable[[list[list[dict]], int], list[str]] | None = None,
    audio_results: dict | None = None,
    metric: evaluate.EvaluationModule | None = None,
    progress: bool = True,
    prompt_style: str = "lettered",
    answer_parsing: str = "strict",
    seed: int = 0,
) -> dict:
    """Audio and text-only accuracy on the items that carry a text form of their audio, and gap = audio - text.

    Items without one (MMAU) are left out and counted in "skipped"; none at all is an error. `audio_results`: an
    `evaluate_model` result for exactly these `items` (same order), reused instead of asking the audio again.
    Returns {"num_items", "skipped", "text_accuracy", "audio_accuracy", "gap", "per_task", "per_category",
    "per_benchmark" (each {name: {"num_items", "text_accuracy", "audio_accuracy", "gap"}}), "audio", "text"
    (the two `evaluate_model` results)}. Fractions; a negative gap means audio does worse than text.
    """
    with_text = [item for item in items if item.audio_text]
    if not with_text:
        raise ValueError("No item carries a text form of its audio, so there is no text-only baseline "
                         "(MMAU has none; VoiceBench rows do).")
    kwargs = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, generate_fn=generate_fn, metric=metric,
                  progress=progress, prompt_style=prompt_style, answer_parsing=answer_parsing, seed=seed)
    reuse = audio_results is not None and len(with_text) == len(items) and [
        p["id"] for p in audio_results["predictions"]] == [item.id for item in items] and audio_results.get(
        "prompt_style", "lettered") == prompt_style and audio_results.get("answer_parsing", {}).get(
        "mode", "strict") == answer_parsing
    audio = audio_results if reuse else evaluate_model(model, processor, with_text, **kwargs)
    text = evaluate_model(model, processor, with_text, text_only=True, **kwargs)
    return {
        "num_items": len(with_text),
        "skipped": len(items) - len(with_text),
        "text_accuracy": text["accuracy"],
        "audio_accuracy": audio["accuracy"],
        "gap": audio["accuracy"] - text["accuracy"],
        **{f"per_{key}": _gap_table(audio[f"per_{key}"], text[f"per_{key}"]) for key in GROUPINGS},
        "audio": audio,
        "text": text,
    }


def check_semantic_ids(items: list[QAItem], config, processor, data) -> None:
    """Before any question is asked: the items' semantic ids are what the model takes (all or none, within its
    vocabulary; none only for a model without a second stream or with a codebook)."""
    from ..data.audio import BadRowError
    from ..data.semantic_ids import SemanticIdsRule, check_all_or_none

    check_all_or_none([item.semantic_ids is not None for item in items], f"Benchmark data {data}")
    rule = SemanticIdsRule.for_model(config, processor)
    for item in items:
        try:
            rule.check_against_model(None if item.semantic_ids is None else [item.semantic_ids])
        except BadRowError as error:
            raise BadRowError(f"{data}, item {item.id}: {error}.") from None


def run_evaluation(
    model: str | Path,
    data: str | Path,
    output_dir: str | Path | None = None,
    format: str = "auto",
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    prompt_style: str = "lettered",
    answer_parsing: str = "strict",
    seed: int = 0,
    text_only_gap: bool = False,
    device: str | None = None,
    dtype: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    split: str | None = None,
) -> dict:
    """Load the checkpoint `model` (trust_remote_code) and the benchmark file or dataset `data` (`split`: its split), evaluate, and write the report
    (`write_report`) into `output_dir` when one is given.

    `format`: mmau, voicebench or auto (from the first row); `limit`: the first N items; `answer_parsing`: strict,
    mmau or lmms-eval (`evaluate_model`), `seed` its guesses' seed; `text_only_gap`: also the
    modality gap (an error when no item carries a text form of its audio); `device`: default cuda when available,
    else cpu; `dtype`: auto (the checkpoint's), float32, bfloat16 or float16. Returns {"model", "data", "format",
    "evaluation": the `evaluate_model` result, "modality_gap": the `modality_gap` result (with `text_only_gap`)},
    what `write_report` takes. A non-empty `output_dir` is refused before anything runs, unless `overwrite`.
    """
    import torch
    from ..checkpoints.loading import load_checkpoint

    if output_dir is not None:
        output_dir = check_output_dir(output_dir, overwrite)  # before the long part: a finished report is kept
    check_answer_parsing(answer_parsing)  # before loading anything
    if batch_size < 1 or (limit is not None and limit < 1):
        raise ValueError(f"The batch size and the limit must be positive (got {batch_size} and {limit}).")
    format = detect_format(data, split) if format == "auto" else format
    items = load_items(data, format, limit=limit, split=split)
    if text_only_gap and not any(item.audio_text for item in items):
        raise ValueError(f"text-only gap: no item of {data} carries a text form of its audio "
                         "(MMAU has none; VoiceBench rows do).")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    loaded, processor = load_checkpoint(model, dtype=dtype, device=device)
    check_semantic_ids(items, loaded.config, processor, data)
    settings = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress,
                    prompt_style=prompt_style, answer_parsing=answer_parsing, seed=seed)
    results = {"model": str(model), "data": str(data), "format": format}
    results["evaluation"] = evaluate_model(loaded, processor, items, **settings)
    if text_only_gap:
        gap_items = [item for item in items if item.audio_text]
        reuse = results["evaluation"] if len(gap_items) == len(items) else None
        results["modality_gap"] = modality_gap(loaded, processor, gap_items, audio_results=reuse, **settings)
    if output_dir is not None:
        write_report(results, output_dir)
    return results
