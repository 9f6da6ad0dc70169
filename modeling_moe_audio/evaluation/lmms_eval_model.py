"""This model in lmms-eval: `lmms_eval --model moe_audio --model_args pretrained=CHECKPOINT --tasks ...`.

lmms-eval (0.7; github.com/EvolvingLMMs-Lab/lmms-eval) finds third-party models through the Python entry-point group
``lmms_eval.models`` (``lmms_eval/models/registry_v2.py``, ``ModelRegistryV2.load_entrypoint_manifests``): this
package declares ``moe_audio = modeling_moe_audio.evaluation.lmms_eval_model:manifest`` in ``setup.cfg``, and
`manifest` returns the `ModelManifest` naming `MoEAudioLmms`. Only lmms-eval imports this module (lmms-eval is
not a dependency of this package: ``pip install lmms-eval``, see the README for installing it without letting it
replace torch).

`MoEAudioLmms` is a "simple" lmms-eval model (``is_simple = True``): lmms-eval gives it the task's prompt text and
a function that returns the document's audio, and it answers by greedy generation (`greedy_generate`, the same as
`moe-audio evaluate`), each clip decoded to 16 kHz mono. Log-likelihood (multiple choice by scoring the options)
and multi-round generation are not implemented: tasks that need them fail with an error saying so.
"""

from __future__ import annotations

import torch
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ..checkpoints.loading import load_checkpoint
from ..data.audio import SAMPLING_RATE, decode_audio_item
from .generation import greedy_generate


MODEL_NAME = "moe_audio"


def manifest():
    """The entry point's payload: lmms-eval's `ModelManifest` for `MoEAudioLmms`, registered as "moe_audio"."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.MoEAudioLmms")


class MoEAudioLmms(lmms):
    """A moe-audio checkpoint answering lmms-eval's generation tasks.

    `--model_args`: ``pretrained`` (checkpoint folder or Hub id, loaded like `moe-audio evaluate` loads it),
    ``device`` (default cuda when available, else cpu), ``dtype`` (auto, float32, bfloat16, float16),
    ``batch_size`` (questions per generate call, default 8), ``max_new_tokens`` (a cap over the task's own, none by
    default). Generation is greedy; a task asking for sampling is refused.
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "auto", batch_size: int | str = 8,
                 max_new_tokens: int | str | None = None, **unused) -> None:
        super().__init__()
        if unused:
            raise ValueError(f"Unknown --model_args for {MODEL_NAME}: {sorted(unused)} (known: pretrained, device, "
                             "dtype, batch_size, max_new_tokens).")
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={dtype!r}: use auto, float32, bfloat16 or float16.")
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be positive (got {batch_size}).")
        self.max_new_tokens_cap = None if max_new_tokens in (None, "") else int(max_new_tokens)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = load_checkpoint(
            pretrained, dtype=dtype if dtype == "auto" else getattr(torch, dtype), device=device)
        self.model.eval()

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _conversation(self, context: str, audios) -> list[dict]:
        clips = [{"type": "audio", "audio": decode_audio_item(audio), "sampling_rate": SAMPLING_RATE}
                 for audio in audios or []]
        return [{"role": "user", "content": [*clips, {"type": "text", "text": context}]}]

    def _settings(self, gen_kwargs: dict) -> tuple[int, list[str]]:
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
            raise ValueError(f"{MODEL_NAME} generates greedily; this task asks for sampling ({gen_kwargs}).")
        max_new_tokens = int(gen_kwargs.get("max_new_tokens") or 128)
        if self.max_new_tokens_cap is not None:
            max_new_tokens = min(max_new_tokens, self.max_new_tokens_cap)
        until = gen_kwargs.get("until") or []
        return max_new_tokens, [until] if isinstance(until, str) else list(until)

    def generate_until(self, requests) -> list[str]:
        answers = [None] * len(requests)
        # batches of requests with the same generation settings, in lmms-eval's order otherwise
        groups: dict[tuple, list[int]] = {}
        for position, request in enumerate(requests):
            settings = self._settings(request.args[1])
            groups.setdefault((settings[0], tuple(settings[1])), []).append(position)
        with tqdm(total=len(requests), desc=f"{MODEL_NAME} answering", disable=self.rank != 0) as bar:
            for (max_new_tokens, until), positions in groups.items():
                for start in range(0, len(positions), self.batch_size):
                    batch = positions[start : start + self.batch_size]
                    conversations = []
                    for position in batch:
                        context, _, doc_to_audio, doc_id, task, split = requests[position].args
                        conversations.append(self._conversation(context, doc_to_audio(self.task_dict[task][split][doc_id])))
                    for position, text in zip(batch, greedy_generate(self.model, self.processor, conversations,
                                                                      max_new_tokens)):
                        for stop in until:
                            text = text.split(stop)[0] if stop else text
                        answers[position] = text
                        self.cache_hook.add_partial("generate_until", requests[position].args, text)
                    bar.update(len(batch))
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{MODEL_NAME} answers generation tasks only (output_type: generate_until); "
                                  "scoring options by log-likelihood is not implemented.")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{MODEL_NAME} does not implement multi-round generation.")
