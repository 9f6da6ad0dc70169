"""Sparse upcycling: turn a trained dense-adapter model into an MoE-adapter model (sparse upcycling).

Everything but the adapter is copied. The adapter's experts start from the dense MLP in one of two ways:

- `copy` (no shared MLP): every routed expert is a full copy of the dense MLP (expert width = dense width), the
  norms are copied and the router starts random. The routing weights of the k chosen experts sum to 1, so the
  MoE adapter computes exactly the dense adapter's output at initialisation, whatever the router does: this is
  the configuration where equality is possible.
- `partition` (with a shared MLP): the dense MLP's hidden units are split, the first `shared` units going to the
  shared aggregation MLP and consecutive slices of `expert_width` units to the experts, so that
  `shared + num_experts * expert_width` must equal the dense width (the paper's 10240 + 8 x 1280 = 20480). Each
  expert's output matrix is scaled by `num_experts` so that, under uniform routing weights, the routed part
  contributes as the sum of all slices on average; the output is then close to, not equal to, the dense one.
"""

from pathlib import Path

import torch

# Through the package, which registers the classes: save_pretrained then copies the code files.
from .. import MoEAudioConfig, MoEAudioForCausalLM
from .model_card import write_model_card
from .loading import load_checkpoint, load_processor, resolve_source
from ..output_dirs import check_output_dir


def upcycled_config(dense_config: MoEAudioConfig, num_experts: int, top_k: int, shared: int) -> MoEAudioConfig:
    if dense_config.adapter_type != "dense":
        raise ValueError(f"Upcycling starts from a dense-adapter model; this one's adapter is {dense_config.adapter_type!r}.")
    width = dense_config.dense_intermediate_size
    if shared:
        if shared >= width or (width - shared) % num_experts:
            raise ValueError(
                f"A shared MLP of {shared} units leaves {width - shared} of the dense MLP's {width}, which do not split "
                f"into {num_experts} equal experts; choose shared so that (dense width - shared) is a positive "
                "multiple of num_experts, or shared=0 to copy the whole MLP into every expert."
            )
        expert_width = (width - shared) // num_experts
    else:
        expert_width = width
    return MoEAudioConfig.from_dict({
        **dense_config.to_dict(),
        "adapter_type": "moe",
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "expert_intermediate_size": expert_width,
        "shared_expert_intermediate_size": shared,
        "adapter_output_projection": False,
    })


@torch.no_grad()
def upcycle_model(dense: MoEAudioForCausalLM, num_experts: int = 8, top_k: int = 4, shared: int = 0,
                  seed: int = 0) -> MoEAudioForCausalLM:
    config = upcycled_config(dense.config, num_experts, top_k, shared)
    torch.manual_seed(seed)
    moe = MoEAudioForCausalLM(config)
    outside_adapter = {k: v for k, v in dense.state_dict().items() if ".adapter." not in k}
    missing, unexpected = moe.load_state_dict(outside_adapter, strict=False)
    if unexpected or any(".adapter." not in key for key in missing):
        raise RuntimeError(f"The dense checkpoint does not match its config: {unexpected or missing}")

    source, target = dense.model.adapter, moe.model.adapter
    up, down = source.up_proj.weight, source.down_proj.weight  # (width, d), (D, width)
    target.input_norm.load_state_dict(source.input_norm.state_dict())
    target.output_norm.load_state_dict(source.output_norm.state_dict())
    expert_width = config.expert_intermediate_size
    if shared:
        target.shared_expert.norm.load_state_dict(source.input_norm.state_dict())
        target.shared_expert.up_proj.weight.copy_(up[:shared])
        target.shared_expert.down_proj.weight.copy_(down[:, :shared])
    for expert in range(num_experts):
        units = slice(shared + expert * expert_width, shared + (expert + 1) * expert_width) if shared else slice(None)
        target.experts.up_proj[expert].copy_(up[units])
        target.experts.down_proj[expert].copy_(down[:, units] * (num_experts if shared else 1))
    return moe


def upcycle(dense_dir: str | Path, output: str | Path, num_experts: int = 8, top_k: int = 4, shared: int = 0,
            seed: int = 0, overwrite: bool = False) -> MoEAudioForCausalLM:
    """Upcycle the checkpoint in `dense_dir` and write the MoE model, its processor and card to `output`."""
    output = Path(output)
    check_output_dir(output, overwrite)
    dense, _ = load_checkpoint(dense_dir, with_processor=False)
    moe = upcycle_model(dense, num_experts, top_k, shared, seed)
    processor = load_processor(resolve_source(dense_dir), dense)
    moe.save_pretrained(output)
    processor.save_pretrained(output)
    mode = "copied into every expert" if not shared else f"split into a shared MLP of {shared} units and the experts"
    write_model_card(output, training_summary=f"Sparse-upcycled from the dense-adapter model `{dense_dir}`: its MLP "
                     f"{mode}; the router is freshly initialised. Fine-tune it with `moe-audio train`.")
    return moe
