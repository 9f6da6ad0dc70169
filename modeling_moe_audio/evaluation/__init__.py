"""Evaluation: multiple-choice audio QA (the paper's section 4: MMAU, VoiceBench MMSU / OpenBookQA, the modality
gap) and the scoring of the built-in corpus's one-word answers. Everything reads local files; nothing is downloaded.

- `benchmarks`: benchmark files (their formats are documented there) read into `QAItem`s: `load_mmau`,
  `load_voicebench`, `load_items`, `detect_format`;
- `answers`: the option a free-form answer picks (`extract_choice`, None rather than a guess), options written
  into a question (`parse_options`), the normalisations answers are compared on (`normalize_text`, `first_word`)
  (a corpus row's reference is `data.conversation.reference_answer`);
- `answer_parsing`: the modes that map answers to options: ours (`strict`) or the rules of MMAU's reference
  evaluator (`mmau`) and of lmms-eval's audio tasks (`lmms-eval`), for figures comparable with published ones
  (`ANSWER_PARSING_MODES`, `AnswerParser`, `ParsedAnswer`, `mmau_string_match`);
- `prompts`: the user turn asking an item, with its audio or text-only (`build_prompt`, `build_conversation`,
  `PROMPT_STYLES`);
- `generation`: greedy answers (`greedy_generate`, and `generate_answers` for corpus rows);
- `accuracy`: `GroupedAccuracy`, the one local `evaluate.Metric` every score goes through (accuracy overall and per
  group, with the counts), `compute_accuracy` and `score_answers` (the demo's and ablate's scores);
- `scoring`: `evaluate_model`, `modality_gap` (audio accuracy - text accuracy) and `run_evaluation` (a checkpoint on
  a benchmark file: what `moe-audio evaluate` runs);
- `reports`: `render_markdown`, `write_report` (`results.json` and `results.md`);
- `lmms_eval_model`: this model for lmms-eval (`MoEAudioLmms`, registered as "moe_audio" by the entry point
  `lmms_eval.models`); it imports lmms-eval, so only lmms-eval imports it and nothing below exports it.

The command itself is `modeling_moe_audio.commands.evaluate`. Importing this package imports none of its modules:
each name below is loaded on first use (PEP 562), so that `evaluate`, `datasets` and torch load only when needed.
"""

import importlib


_EXPORTS = {
    "QAItem": "benchmarks",
    "detect_format": "benchmarks",
    "load_items": "benchmarks",
    "load_mmau": "benchmarks",
    "load_voicebench": "benchmarks",
    "LETTERS": "answers",
    "extract_choice": "answers",
    "first_word": "answers",
    "normalize_text": "answers",
    "parse_options": "answers",
    "ANSWER_PARSING_MODES": "answer_parsing",
    "AnswerParser": "answer_parsing",
    "ParsedAnswer": "answer_parsing",
    "mmau_string_match": "answer_parsing",
    "PROMPT_STYLES": "prompts",
    "build_conversation": "prompts",
    "build_prompt": "prompts",
    "generate_answers": "generation",
    "greedy_generate": "generation",
    "GroupedAccuracy": "accuracy",
    "compute_accuracy": "accuracy",
    "score_answers": "accuracy",
    "evaluate_model": "scoring",
    "modality_gap": "scoring",
    "run_evaluation": "scoring",
    "render_markdown": "reports",
    "write_report": "reports",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
