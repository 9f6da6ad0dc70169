"""The model card written into each checkpoint: `model_card.md` (the repository's template) filled from the real
config, parameter counts, training run and evaluation results with `huggingface_hub.ModelCard`."""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .parameters import count_parameters
from ..configuration_moe_audio import MoEAudioConfig
from ..presets import MODEL_CARD_TEMPLATE as TEMPLATE


DEFAULT_LIMITATIONS = (
    "A research model: it answers only as well as its training data allows, in the languages and audio domains "
    "of that data. Clips longer than the processor's `max_audio_seconds` are rejected, not truncated. Outputs "
    "are not checked for facts; do not use them for decisions about people."
)


def _describe_adapter(config: MoEAudioConfig) -> str:
    if config.adapter_type == "dense":
        return f"dense MLP {config.audio_hidden_size} -> {config.dense_intermediate_size} -> LLM width (eq. 1)"
    shared = (
        f", a shared aggregation MLP of width {config.shared_expert_intermediate_size}"
        if config.shared_expert_intermediate_size else ""
    )
    return (
        f"MoE: {config.num_experts} routed SiLU experts of width {config.expert_intermediate_size}, top-"
        f"{config.num_experts_per_tok} per audio token{shared}; balance-loss weight {config.router_aux_loss_coef}"
    )


def _describe_model(sub_config) -> str:
    name = getattr(sub_config, "_name_or_path", "") or ""
    shape = f"{sub_config.model_type}, {getattr(sub_config, 'hidden_size', getattr(sub_config, 'd_model', '?'))}-wide"
    return f"{name} ({shape})" if name else shape


def results_table(results: dict[str, float]) -> str:
    rows = "\n".join(f"| {name} | {value:.3f} |" for name, value in results.items())
    return "| metric | value |\n| --- | --- |\n" + rows


def build_model_card(
    folder: str | Path,
    repo_id: str | None = None,
    base_models: list[str] | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    training_summary: str | None = None,
    eval_results: dict[str, float] | None = None,
    eval_dataset: str = "moe-audio built-in corpus",
) -> ModelCard:
    """The card of the checkpoint in `folder`; `repo_id` goes into the usage snippet (default: the folder)."""
    folder = Path(folder)
    config = MoEAudioConfig.from_pretrained(folder)
    counts = count_parameters(config)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="audio-text-to-text",
        license=license,
        base_model=base_models or None,
        datasets=datasets or None,
        tags=["moe-audio", "mixture-of-experts", "audio", "custom_code", f"{config.adapter_type}-adapter"],
        model_name=repo_id or folder.name,
        eval_results=[
            EvalResult(task_type="audio-question-answering", dataset_type=eval_dataset, dataset_name=eval_dataset,
                       metric_type="accuracy", metric_name=name, metric_value=value)
            for name, value in (eval_results or {}).items()
        ] or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=repo_id or folder.name,
        repo_id=repo_id or str(folder),
        text_model=_describe_model(config.text_config),
        audio_model=_describe_model(config.audio_config),
        adapter_description=_describe_adapter(config),
        adapter_total_params=f"{counts['adapter_total_params']:,}",
        adapter_active_params=f"{counts['adapter_active_params']:,}",
        model_total_params=f"{counts['model_total_params']:,}",
        model_active_params=f"{counts['model_active_params']:,}",
        training_summary=training_summary or "Not trained: the frontend and the adapter are freshly initialised.",
        results_table=results_table(eval_results) if eval_results else "",
        limitations=DEFAULT_LIMITATIONS,
    )


def write_model_card(folder: str | Path, **kwargs) -> Path:
    """Write the card as `folder/README.md` and return its path."""
    path = Path(folder) / "README.md"
    build_model_card(folder, **kwargs).save(path)
    return path
