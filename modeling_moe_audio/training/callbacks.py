"""Trainer callbacks: the MoE aux-loss schedule and routing statistics, the gradient conflicts between
categories during training, and the loss-curve figure beside the TensorBoard logs.

A `TrainerCallback`'s metrics reach TensorBoard and `state.log_history` only if it runs before the reporting
callbacks, so each of ours is installed first in line (`install`).
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..analysis.figures import loss_curve_figure, save_png
from ..analysis.gradients import category_gradients, gradient_cosine
from ..analysis.routing import load_statistics
from ..modeling_moe_audio import MoEAudioRouter, load_balancing_loss_func
from ..unwrap import unwrap_moe_model


logger = logging.getLogger(__name__)


class FirstInLineCallback(TrainerCallback):
    """A callback whose logged metrics must reach every reporting integration and `state.log_history`."""

    @classmethod
    def install(cls, trainer, **kwargs):
        """Create the callback and put it first in `trainer`'s callbacks, ahead of TensorBoard and the others."""
        callback = cls(**kwargs)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    @staticmethod
    def publish(metrics: dict, logs: dict, state) -> None:
        # Reporting callbacks after this one read `logs`; the Trainer copied `logs` into `log_history` just before.
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)


@dataclass
class AuxLossSchedule:
    """lambda of eq. 6 over training: linear warm-up from 0, constant, then an optional linear decay.

    Constant: `warmup_steps=0, decay_to=None`. With `decay_to`, lambda goes linearly from `coef` at the end of the
    warm-up to `decay_to` at the last training step.
    """

    coef: float
    warmup_steps: int = 0
    decay_to: float | None = None

    def __post_init__(self):
        if not all(math.isfinite(value) and value >= 0 for value in (self.coef, self.decay_to or 0.0)):
            raise ValueError(f"aux-loss coefficients must be >= 0, got coef={self.coef}, decay_to={self.decay_to}.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0.")

    def __call__(self, step: int, max_steps: int) -> float:
        if step < self.warmup_steps:
            return self.coef * step / self.warmup_steps
        if self.decay_to is None or max_steps <= self.warmup_steps:
            return self.coef
        progress = min(1.0, (step - self.warmup_steps) / max(1, max_steps - self.warmup_steps))
        return self.coef + (self.decay_to - self.coef) * progress


class MoEAuxLossCallback(FirstInLineCallback):
    """Applies the aux-loss schedule, logs routing statistics and warns about collapsing experts.

    Each step it sets lambda as the model's `router_aux_loss_coef` attribute (the model adds lambda * aux loss to
    its loss, weighted so gradient accumulation and DDP do not change it); the config keeps the configured value.
    A forward hook on the router counts the routing decisions of the training batches; at every logging step it
    adds to the logs, for every reporting integration and `state.log_history`:

    - `moe/aux_loss`: eq. 10 averaged over the forward passes since the last log;
    - `moe/aux_loss_coef`: the current lambda;
    - `moe/expert_share/e{i}`: the share of routed (token, expert) pairs that went to expert i;
    - `moe/router_entropy`: mean entropy (nats) of the full softmax of the router logits;
    - `moe/max_mean_load`: the most loaded expert's load over the mean load (1 = perfectly balanced).

    An expert whose share stays below `collapse_threshold / num_experts` for `collapse_patience` logging steps in
    a row gets a warning. Counts are summed over DDP ranks before logging.

    The callback must run before the reporting callbacks to reach them: `install` puts it first.
    """

    def __init__(
        self,
        schedule: AuxLossSchedule | None = None,
        collapse_threshold: float = 0.1,
        collapse_patience: int = 3,
        bias_update_rate: float = 0.0,
    ):
        self.schedule = schedule
        self.collapse_threshold = collapse_threshold
        self.collapse_patience = collapse_patience
        self.bias_update_rate = bias_update_rate
        self._hooks = []
        self._router = None  # the router that last routed a training batch
        self._device = None
        self._reset()
        self._low_share_streak = None

    def _reset(self):
        self._pair_counts = None
        self._step_counts = None
        self._totals = None  # entropy sum, tokens, aux-loss sum, forward passes; kept on the device (no syncs)

    def _record(self, module, inputs, outputs):
        if not module.training:
            return
        self._router = module
        router_logits, _, selected_experts = outputs  # what MoEAudioRouter.forward returns
        if router_logits.shape[0] == 0:
            return
        with torch.no_grad():
            counts = torch.bincount(selected_experts.flatten(), minlength=router_logits.shape[-1]).double()
            self._pair_counts = counts if self._pair_counts is None else self._pair_counts + counts
            self._step_counts = counts if self._step_counts is None else self._step_counts + counts
            probs = torch.softmax(router_logits.double(), dim=-1)
            totals = torch.stack([
                -(probs * probs.clamp_min(1e-12).log()).sum(),
                probs.new_tensor(router_logits.shape[0]),
                load_balancing_loss_func(router_logits.double(), selected_experts.shape[-1], selected_experts),
                probs.new_tensor(1.0),
            ])
            self._totals = totals if self._totals is None else self._totals + totals

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        moe_model = unwrap_moe_model(model)
        # By name: a checkpoint loaded with trust_remote_code brings its own copy of the class. Every copy is hooked:
        # PEFT's modules_to_save keeps the frozen original beside the trained copy, and only the copy runs. (The
        # model's own output recording only reports inside its forward, which a callback never sees.)
        routers = [m for m in moe_model.modules() if type(m).__name__ == MoEAudioRouter.__name__]
        if routers and not self._hooks:
            self._hooks = [router.register_forward_hook(self._record) for router in routers]
            self._device = routers[0].weight.device
            self._low_share_streak = torch.zeros(moe_model.config.num_experts, dtype=torch.long)
        if self.schedule is None:
            self.schedule = AuxLossSchedule(coef=moe_model.config.router_aux_loss_coef)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        coef = self.schedule(state.global_step, state.max_steps)
        unwrap_moe_model(model).router_aux_loss_coef = coef

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.bias_update_rate and self._router is not None and self._step_counts is not None:
            load = _all_reduce_sum(self._step_counts)
            self._router.update_selection_bias(load, self.bias_update_rate)
        self._step_counts = None

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or not self._hooks:
            return
        metrics = self._routing_metrics()
        metrics["moe/aux_loss_coef"] = unwrap_moe_model(model).router_aux_loss_coef
        self.publish(metrics, logs, state)

    def _routing_metrics(self) -> dict[str, float]:
        num_experts = len(self._low_share_streak)
        # Every rank reduces, also one that routed nothing since the last log.
        counts = self._pair_counts if self._pair_counts is not None else torch.zeros(num_experts, device=self._device)
        totals = self._totals if self._totals is not None else torch.zeros(4, device=self._device)
        counts, totals = _all_reduce_sum(counts.double()).cpu(), _all_reduce_sum(totals.double()).cpu()
        entropy_sum, tokens, aux_sum, forwards = totals.tolist()
        self._reset()
        if tokens == 0:
            return {}
        load = load_statistics(counts)
        metrics = {
            "moe/aux_loss": aux_sum / forwards,
            "moe/router_entropy": entropy_sum / tokens,
            "moe/max_mean_load": load["max_mean_load"],
            "moe/load_entropy": load["load_entropy"],
        }
        for expert, share in enumerate(load["shares"]):
            metrics[f"moe/expert_share/e{expert}"] = share
        self._warn_about_collapse(torch.tensor(load["shares"], dtype=torch.float64))
        return metrics

    def _warn_about_collapse(self, shares: torch.Tensor) -> None:
        num_experts = len(shares)
        low = shares < self.collapse_threshold / num_experts
        self._low_share_streak = torch.where(low, self._low_share_streak + 1, torch.zeros_like(self._low_share_streak))
        for expert in torch.nonzero(self._low_share_streak == self.collapse_patience).flatten().tolist():
            logger.warning(
                "Expert %d has received under %.1f%% of the routed tokens for %d logging steps in a row (share now "
                "%.4f): it is collapsing. Raise router_aux_loss_coef, or try bias balancing (bias_update_rate).",
                expert, 100 * self.collapse_threshold / num_experts, self.collapse_patience, shares[expert],
            )

    def on_train_end(self, args, state, control, **kwargs):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
    return tensor


class GradientConflictCallback(FirstInLineCallback):
    """Logs the gradient cosine similarity between categories (eq. 11) every `every_steps` optimizer steps.

    The gradients are those of each category's mean next-token loss on `rows` (a fixed probe set) with respect to
    the adapter. Metrics `grad_cos/<a>-<b>` go to the logs, TensorBoard and `log_history`.
    """

    def __init__(self, processor, rows: list[dict], every_steps: int = 50, category_key: str = "category"):
        self.processor, self.rows, self.every_steps, self.category_key = processor, rows, every_steps, category_key

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or "train_runtime" in logs or state.global_step == 0 or state.global_step % self.every_steps:
            return  # the end-of-training summary is not a new step
        categories, matrix = gradient_cosine(
            category_gradients(model, self.processor, self.rows, category_key=self.category_key)
        )
        metrics = {
            f"grad_cos/{a}-{b}": float(matrix[i, j])
            for i, a in enumerate(categories) for j, b in enumerate(categories) if i < j
        }
        self.publish(metrics, logs, state)


LOSS_CURVES = "runs/loss_curves.png"  # under output_dir, beside TensorBoard's runs/<date>_<host>/; never pushed


class LossCurveCallback(TrainerCallback):
    """Draws `output_dir/runs/loss_curves.png` (`loss_curve_figure`): train and eval loss against the step, and the
    load-balancing loss `moe/aux_loss` that `MoEAuxLossCallback` logs on its own axis (a dense adapter has none: the
    panel says so). Redrawn at every evaluation and at the end of training, by the main process only.

    `drawn` records the last figure as it was saved: its path and, per panel, the title, axis labels, the plotted
    series (label and number of points) and any text in place of a curve.
    """

    def __init__(self, base_model: str | None = None):
        self.base_model = base_model  # named in the title
        self.title = None
        self.no_aux_reason = None
        self.drawn = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        adapter_type = getattr(unwrap_moe_model(model).config, "adapter_type", None) if model is not None else None
        about = [f"{adapter_type} adapter"] if adapter_type else []
        about += [f"from {self.base_model}"] if self.base_model else []
        self.title = f"{Path(args.output_dir).name}" + (f" ({', '.join(about)})" if about else "") + ": training losses"
        if adapter_type == "dense":
            self.no_aux_reason = "dense adapter:\nno load-balancing loss"

    def on_evaluate(self, args, state, control, **kwargs):
        self.draw(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self.draw(args, state)

    def draw(self, args, state) -> Path | None:
        if not state.is_world_process_zero or not state.log_history:
            return None
        title = self.title or f"{Path(args.output_dir).name}: training losses"
        figure = loss_curve_figure(state.log_history, title, self.no_aux_reason)
        path = Path(args.output_dir) / LOSS_CURVES
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(figure, path)
        self.drawn = {"path": path, "title": title, "panels": [_describe(axes) for axes in figure.axes]}
        return path


def _describe(axes) -> dict:
    return {
        "title": axes.get_title(),
        "xlabel": axes.get_xlabel(),
        "ylabel": axes.get_ylabel(),
        "series": {line.get_label(): len(line.get_xdata()) for line in axes.get_lines()},
        "texts": [text.get_text() for text in axes.texts],
    }
