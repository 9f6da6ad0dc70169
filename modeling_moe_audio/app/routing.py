"""What the MoE adapter did with one clip: the experts each 80 ms audio token was routed to, with their weights,
drawn under the clip's waveform, and the clip's expert shares against the model's average.

The routing comes from the model's own outputs (`output_router_logits=True` gives `router_logits` and
`selected_experts`) in one forward pass on the clip; nothing here re-implements the router's choice.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.figures import new_figure
from ..analysis.routing import expert_activation, load_statistics


@dataclass
class ClipRouting:
    """The routing of one clip's audio tokens, in time order.

    `selected_experts`: `(tokens, top_k)`, the experts each token was routed to; `weights`: `(tokens, num_experts)`,
    the weight each expert's output got for each token (0 where the expert was not chosen; each row sums to 1);
    `token_seconds`: the duration one audio token covers (80 ms at 12.5 Hz).
    """

    selected_experts: np.ndarray
    weights: np.ndarray
    token_seconds: float

    @property
    def num_experts(self) -> int:
        return self.weights.shape[1]

    @property
    def shares(self) -> np.ndarray:
        """Each expert's share of the clip's (token, expert) routing decisions (as `moe/expert_share/e{i}`)."""
        return np.asarray(load_statistics(np.bincount(self.selected_experts.reshape(-1),
                                                      minlength=self.num_experts))["shares"])


@dataclass
class ExpertBaseline:
    """The shares to compare a clip with, and where they come from (the figure's legend says it)."""

    shares: np.ndarray
    label: str


def token_seconds(model, processor) -> float:
    """Seconds per audio token: the mel hop, times 2 (the Whisper encoder's stride), times the frames stacked."""
    extractor = processor.feature_extractor
    return extractor.hop_length / extractor.sampling_rate * 2 * model.config.frame_stacking_factor


def clip_routing(model, processor, inputs) -> ClipRouting | None:
    """The routing of the one clip in `inputs` (the processor's output for one conversation), or None for a dense
    adapter. One forward pass with `output_router_logits=True`; the weights are the softmax over each token's
    chosen logits, which is how the router weighs its chosen experts."""
    with torch.no_grad():
        outputs = model(**inputs, output_router_logits=True, use_cache=False, logits_to_keep=1)
    if outputs.selected_experts is None:
        return None
    router_logits, selected = outputs.router_logits.float().cpu(), outputs.selected_experts.cpu()
    weights = torch.zeros_like(router_logits).scatter(-1, selected, torch.softmax(router_logits.gather(-1, selected), -1))
    return ClipRouting(selected.numpy(), weights.numpy(), token_seconds(model, processor))


def _shares_from_log(entries, num_experts: int, where: str):
    """The last entry of (step, {key: value}) pairs that has every `moe/expert_share/e{i}`, as a baseline."""
    for step, values in reversed(entries):
        shares = [values.get(f"moe/expert_share/e{expert}") for expert in range(num_experts)]
        if None not in shares:
            return ExpertBaseline(np.asarray(shares, dtype=float),
                                  f"training average (last logged shares, step {step}, {where})")
    return None


def recorded_expert_shares(folder, num_experts: int) -> ExpertBaseline | None:
    """The expert shares the training callback logged for a checkpoint folder, if it kept any: its (or its last
    `checkpoint-*`'s) `trainer_state.json`, else the TensorBoard logs under `runs/`. None when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = [folder / "trainer_state.json"] + sorted(
        folder.glob("checkpoint-*/trainer_state.json"), key=lambda path: int(path.parent.name.split("-")[-1])
        if path.parent.name.split("-")[-1].isdigit() else -1, reverse=True)
    for path in candidates:
        if path.is_file():
            try:
                history = json.loads(path.read_text(encoding="utf-8")).get("log_history", [])
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                continue
            found = _shares_from_log([(entry.get("step"), entry) for entry in history if isinstance(entry, dict)],
                                     num_experts, path.relative_to(folder).as_posix())
            if found:
                return found
    events = sorted(folder.glob("runs/**/events.out.tfevents.*"))
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        entries = {}
        for path in events:
            accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
            accumulator.Reload()
            for tag in accumulator.Tags().get("scalars", []):
                key = tag.removeprefix("train/")
                if key.startswith("moe/expert_share/e"):
                    for event in accumulator.Scalars(tag):
                        entries.setdefault(event.step, {})[key] = event.value
        return _shares_from_log(sorted(entries.items()), num_experts, "TensorBoard log")
    return None


def corpus_expert_shares(model, processor, manifest, limit: int | None = None) -> ExpertBaseline:
    """The expert shares over every audio token of a manifest's clips (as `moe-audio analyze` counts them)."""
    from ..data.manifest import load_rows

    rows = load_rows(manifest, limit=limit)
    if not rows:
        raise ValueError(f"{manifest} has no rows to compute routing statistics from.")
    activation = expert_activation(model, processor, [dict(row, _corpus="all") for row in rows], category_key="_corpus")
    shares = np.asarray(load_statistics(activation["counts"]["all"])["shares"])
    return ExpertBaseline(shares, f"average over {Path(manifest).name} ({len(rows)} rows)")


def even_shares(num_experts: int) -> ExpertBaseline:
    return ExpertBaseline(np.full(num_experts, 1 / num_experts),
                          f"even share 1/{num_experts} (the checkpoint records no routing statistics)")


def routing_figure(clip: np.ndarray, sampling_rate: int, routing: ClipRouting, baseline: ExpertBaseline | None = None):
    """A matplotlib figure: the waveform on top, under it the routing weights (experts x audio tokens) on the same
    time axis, a dot on each token's top expert; on the right, the clip's expert shares against `baseline`."""
    tokens, num_experts = routing.weights.shape
    figure = new_figure(11, 4.2)
    grid = figure.add_gridspec(2, 2, width_ratios=(3.2, 1), height_ratios=(1, 1.6))
    wave = figure.add_subplot(grid[0, 0])
    heat = figure.add_subplot(grid[1, 0], sharex=wave)
    bars = figure.add_subplot(grid[:, 1])

    seconds = np.arange(len(clip)) / sampling_rate
    wave.plot(seconds, clip, linewidth=0.6, color="#1f4e79")
    wave.set_ylabel("amplitude")
    wave.set_title(f"{len(clip) / sampling_rate:.2f} s clip: {tokens} audio tokens of "
                   f"{1000 * routing.token_seconds:.0f} ms", fontsize=10)
    wave.tick_params(labelbottom=False)

    end = tokens * routing.token_seconds
    image = heat.imshow(routing.weights.T, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                        interpolation="nearest", extent=(0, end, -0.5, num_experts - 0.5))
    centres = (np.arange(tokens) + 0.5) * routing.token_seconds
    heat.scatter(centres, routing.weights.argmax(1), s=6, color="white", marker="o", linewidths=0)
    heat.set_yticks(range(num_experts), [f"e{expert}" for expert in range(num_experts)])
    heat.set_ylabel("expert")
    heat.set_xlabel("time (s)")
    heat.set_xlim(0, max(end, len(clip) / sampling_rate))
    heat.set_title(f"routing weight of each expert per audio token (top-{routing.selected_experts.shape[1]}; "
                   "dot: the heaviest)", fontsize=10)
    # Beside both rows, so that the waveform and the heatmap keep the same width and time axis.
    figure.colorbar(image, ax=[wave, heat], pad=0.01, shrink=0.6, anchor=(0, 0.05), label="routing weight")

    positions = np.arange(num_experts)
    height = 0.4 if baseline is not None else 0.8
    bars.barh(positions + (height / 2 if baseline is not None else 0), routing.shares, height=height,
              color="#2a9d8f", label="this clip")
    if baseline is not None:
        bars.barh(positions - height / 2, baseline.shares, height=height, color="#bbbbbb", label=baseline.label)
    bars.set_yticks(positions, [f"e{expert}" for expert in positions])
    bars.invert_yaxis()
    bars.set_xlabel("share of routing decisions")
    bars.set_title("expert shares", fontsize=10)
    bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, frameon=False)
    return figure


def figure_png(figure, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
