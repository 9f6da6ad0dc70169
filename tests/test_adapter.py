"""The router, the experts and the load-balancing loss against direct float64 references of the paper's equations."""

import pytest
import torch

from modeling_moe_audio.modeling_moe_audio import MoEAdapter, SortedExpertsFunction, load_balancing_loss_func

from helpers import make_audio_batch, make_input_ids, tiny_config, tiny_model, tokens_for


def reference_adapter(adapter: MoEAdapter, x: torch.Tensor, top_k: int) -> torch.Tensor:
    """Eqs. 2-5 token by token, expert by expert, in float64."""
    silu = torch.nn.functional.silu
    layer_norm = lambda norm, v: torch.nn.functional.layer_norm(v, v.shape[-1:], norm.weight, norm.bias, norm.eps)
    outputs = []
    for token in x:
        logits = adapter.router.weight @ token  # eq. 3: s = x W_g
        kept = torch.topk(logits, top_k).indices
        gates = torch.softmax(logits[kept], dim=0)
        normed = layer_norm(adapter.input_norm, token)
        h = sum(
            gate * (adapter.experts.down_proj[e] @ silu(adapter.experts.up_proj[e] @ normed))  # eqs. 2 and 4
            for gate, e in zip(gates, kept.tolist())
        )
        shared = adapter.shared_expert
        h = h + shared.down_proj.weight @ silu(shared.up_proj.weight @ layer_norm(shared.norm, token))
        outputs.append(layer_norm(adapter.output_norm, h))  # eq. 5 (W_P folded into the output matrices)
    return torch.stack(outputs)


def reference_aux_loss(router_logits: torch.Tensor, top_k: int, selection_bias=None) -> torch.Tensor:
    """Eqs. 8-10 with explicit sums; a selection bias moves which experts are kept, not their probabilities."""
    num_tokens, num_experts = router_logits.shape
    importance = torch.zeros(num_experts, dtype=torch.float64)
    load = torch.zeros(num_experts, dtype=torch.float64)
    bias = torch.zeros(num_experts, dtype=torch.float64) if selection_bias is None else selection_bias.double()
    for logits in router_logits.double():
        kept = torch.topk(logits + bias, top_k).indices
        probs = torch.softmax(logits[kept], dim=0)
        for p, e in zip(probs, kept.tolist()):
            importance[e] += p / num_tokens  # eq. 8 with p_{b,e} = G(x_b)_e
            load[e] += 1.0 / num_tokens  # eq. 9
    return num_experts * (importance * load).sum()  # eq. 10


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "batched_mm"])
def test_moe_adapter_matches_float64_reference(implementation):
    model = tiny_model().double()
    model.set_experts_implementation(implementation)
    adapter = model.model.adapter
    x = torch.randn(37, model.config.audio_hidden_size, dtype=torch.float64)
    adapted = model.model.adapt_audio_features(x, output_router_logits=True, output_selected_experts=True)
    (router_logits,), (selected,) = adapted.router_logits, adapted.selected_experts  # recorded from the one router
    output = adapted.last_hidden_state
    torch.testing.assert_close(adapter(x), output, rtol=0, atol=0)
    with torch.no_grad():
        expected = reference_adapter(adapter, x, model.config.num_experts_per_tok)
        expected_logits = x @ adapter.router.weight.T
    torch.testing.assert_close(router_logits, expected_logits)
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)
    assert selected.shape == (37, model.config.num_experts_per_tok)


def test_router_logits_stay_float32_in_bf16():
    model = tiny_model().to(torch.bfloat16)
    features, mask = make_audio_batch(model.config, [900])
    input_ids, attention_mask = make_input_ids(model.config, tokens_for([900], model.config), [6])
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        input_features=features.bfloat16(),
        input_features_mask=mask,
        labels=input_ids,
        output_router_logits=True,
    )
    assert out.router_logits.dtype == torch.float32
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.logits.float()).all()
    out.loss.backward()  # bf16 training through the grouped_mm kernel
    expert_grad = model.model.adapter.experts.up_proj.grad
    assert expert_grad.dtype == torch.bfloat16 and torch.isfinite(expert_grad.float()).all()
    assert expert_grad.abs().sum() > 0


def test_aux_loss_matches_reference_and_ignores_padding():
    """Clips of different lengths in one padded batch give the same router logits and aux loss as each clip alone."""
    model = tiny_model()
    config = model.config
    mel_lengths = [3000, 437, 90]
    features, mask = make_audio_batch(config, mel_lengths)
    counts = tokens_for(mel_lengths, config)
    input_ids, attention_mask = make_input_ids(config, counts, [5, 9, 3])
    with torch.no_grad():
        batched = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            input_features=features,
            input_features_mask=mask,
            output_router_logits=True,
        )
        alone = []
        for i in range(len(mel_lengths)):
            logits = model.model.get_audio_features(features[i : i + 1], mask[i : i + 1]).router_logits
            alone.append(logits)
    assert batched.router_logits.shape == (sum(counts), config.num_experts)
    torch.testing.assert_close(batched.router_logits, torch.cat(alone))
    expected = reference_aux_loss(torch.cat(alone), config.num_experts_per_tok)
    torch.testing.assert_close(batched.aux_loss.double(), expected, rtol=1e-6, atol=1e-7)
    # Padding really is excluded: counting the padded frames changes the loss.
    all_frames_logits = model.model.get_audio_features(features, None).router_logits
    padded_loss = load_balancing_loss_func(all_frames_logits, config.num_experts_per_tok)
    assert not torch.allclose(padded_loss, batched.aux_loss)


def test_aux_loss_counts_the_experts_a_selection_bias_chose():
    model = tiny_model(router_selection_bias=True)
    config = model.config
    features, mask = make_audio_batch(config, [3000])
    input_ids, attention_mask = make_input_ids(config, tokens_for([3000], config), [4])
    bias = model.model.adapter.router.selection_bias
    bias.copy_(torch.linspace(-1.0, 1.0, config.num_experts))
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, input_features=features,
                    input_features_mask=mask, output_router_logits=True)
    assert not torch.equal(out.selected_experts.sort(-1).values,
                           out.router_logits.topk(config.num_experts_per_tok).indices.sort(-1).values)
    expected = reference_aux_loss(out.router_logits, config.num_experts_per_tok, bias)
    torch.testing.assert_close(out.aux_loss.double(), expected, rtol=1e-6, atol=1e-7)
    unbiased = reference_aux_loss(out.router_logits, config.num_experts_per_tok)
    assert not torch.allclose(out.aux_loss.double(), unbiased)


def test_aux_loss_of_balanced_and_collapsed_routing():
    num_experts, top_k = 4, 2
    # Two tokens split the four experts: each expert has importance 0.5/2 and load 1/2 -> 4 * 4 * 0.125 = 2.
    logits = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    expected = num_experts * sum(0.25 * 0.5 for _ in range(num_experts))
    assert load_balancing_loss_func(logits, top_k).item() == pytest.approx(expected)
    collapsed = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    assert load_balancing_loss_func(collapsed, top_k).item() > expected


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "batched_mm"])
def test_token_uses_only_its_chosen_experts(implementation):
    model = tiny_model()
    model.set_experts_implementation(implementation)
    adapter = model.model.adapter
    x = torch.randn(1, model.config.audio_hidden_size)
    output, (_, _, selected) = adapter(x), adapter.router(x)
    (output * torch.randn_like(output)).sum().backward()  # a plain sum is constant after the final LayerNorm
    chosen = set(selected[0].tolist())
    for expert in range(model.config.num_experts):
        up_grad = adapter.experts.up_proj.grad[expert]
        down_grad = adapter.experts.down_proj.grad[expert]
        if expert in chosen:
            assert up_grad.abs().sum() > 0 and down_grad.abs().sum() > 0
        else:
            assert torch.count_nonzero(up_grad) == 0 and torch.count_nonzero(down_grad) == 0
    # Changing an expert the token did not choose leaves its output unchanged.
    unchosen = next(e for e in range(model.config.num_experts) if e not in chosen)
    with torch.no_grad():
        adapter.experts.up_proj[unchosen].add_(1.0)
        adapter.experts.down_proj[unchosen].mul_(3.0)
        torch.testing.assert_close(adapter(x), output.detach())


def test_expert_kernels_agree_on_outputs_and_gradients():
    results = {}
    x = torch.randn(203, tiny_config().audio_hidden_size)
    for implementation in ["eager", "grouped_mm", "batched_mm"]:
        model = tiny_model()
        model.set_experts_implementation(implementation)
        assert model.model.adapter.experts.config._experts_implementation == implementation
        adapter = model.model.adapter
        inputs = x.clone().requires_grad_(True)
        output = adapter(inputs)
        (output * torch.randn(output.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        grads = {name: p.grad.clone() for name, p in adapter.named_parameters()}
        results[implementation] = (output.detach(), inputs.grad.clone(), grads)
    reference_output, reference_input_grad, reference_grads = results["eager"]
    for implementation in ["grouped_mm", "batched_mm"]:
        output, input_grad, grads = results[implementation]
        torch.testing.assert_close(output, reference_output, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(input_grad, reference_input_grad, rtol=1e-5, atol=1e-6)
        for name, grad in grads.items():
            scale = reference_grads[name].abs().max().item()
            torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
def test_expert_kernels_give_bit_identical_gradients_on_repeated_backward_passes(implementation):
    """Same inputs, same gradients to the bit, also with several threads (no accumulation in a varying order).

    Not batched_mm: its expert-weight gradients come from a gather with repeated indices, summed in thread order."""
    model = tiny_model()
    model.set_experts_implementation(implementation)
    experts = model.model.adapter.experts
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(301, model.config.audio_hidden_size, generator=generator)
    routing = torch.softmax(torch.randn(301, model.config.num_experts, generator=generator), -1)
    weights, index = routing.topk(model.config.num_experts_per_tok)  # every token uses k distinct experts
    upstream = torch.randn(301, experts.down_proj.shape[1], generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(2):
            experts.zero_grad(set_to_none=True)
            inputs, gates = x.clone().requires_grad_(True), weights.clone().requires_grad_(True)
            output = experts(inputs, index, gates)
            (output * upstream).sum().backward()
            runs.append([output.detach(), inputs.grad, gates.grad, experts.up_proj.grad, experts.down_proj.grad])
    finally:
        torch.set_num_threads(threads)
    for first, second in zip(*runs):
        assert torch.equal(first.view(torch.int32), second.view(torch.int32))


@pytest.mark.parametrize("one_expert_at_a_time", [True, False], ids=["one-expert-at-a-time", "all-experts-at-once"])
def test_both_schedules_of_the_default_kernel_match_float64_autograd_and_repeat_bit_for_bit(one_expert_at_a_time):
    """`grouped_mm` runs one expert at a time in eager mode on the CPU, and all experts at once (grouped matmuls) on
    accelerators and under torch.compile: each schedule, forced here on the CPU, against plain autograd over the
    eager kernel in float64; an expert that gets no token gets zero gradients; a float32 rerun repeats to the bit."""
    model = tiny_model()
    experts = model.model.adapter.experts
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(41, model.config.audio_hidden_size, generator=generator, dtype=torch.float64)
    logits = torch.randn(41, model.config.num_experts, generator=generator, dtype=torch.float64)
    logits[:, 2] = -1e4  # expert 2 gets no token
    weights, index = torch.softmax(logits, -1).topk(model.config.num_experts_per_tok)
    upstream = torch.randn(41, experts.down_proj.shape[1], generator=generator, dtype=torch.float64)

    def outputs_and_gradients(dtype, kernel):
        experts.to(dtype).zero_grad(set_to_none=True)
        inputs, gates = x.to(dtype, copy=True).requires_grad_(), weights.to(dtype, copy=True).requires_grad_()
        output = kernel(inputs, gates)
        (output * upstream.to(dtype)).sum().backward()
        return [output.detach(), inputs.grad, gates.grad, experts.up_proj.grad, experts.down_proj.grad]

    def scheduled(inputs, gates):
        return SortedExpertsFunction.apply(inputs, index, gates, experts.up_proj, experts.down_proj,
                                           one_expert_at_a_time)[0]

    model.set_experts_implementation("eager")
    expected = outputs_and_gradients(torch.float64, lambda inputs, gates: experts(inputs, index, gates))
    for name, got, want in zip(["output", "input", "weights", "up_proj", "down_proj"],
                               outputs_and_gradients(torch.float64, scheduled), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)
    assert experts.up_proj.grad[2].eq(0).all() and experts.down_proj.grad[2].eq(0).all()
    first, second = (outputs_and_gradients(torch.float32, scheduled) for _ in range(2))
    for name, got, want in zip(["output", "input", "weights", "up_proj", "down_proj"], second, first):
        assert got is not None and torch.equal(got.view(torch.int32), want.view(torch.int32)), name
    torch.testing.assert_close(first[0].double(), expected[0], rtol=1e-5, atol=1e-5)


def test_eager_experts_equal_grouped_mm_and_batched_mm_with_rectangular_experts():
    model = tiny_model()
    experts = model.model.adapter.experts
    assert experts.up_proj.shape[2] != experts.down_proj.shape[1]  # reads d = 48, writes D = 64
    x = torch.randn(97, model.config.audio_hidden_size)
    weights, index = torch.softmax(torch.randn(97, model.config.num_experts), -1).topk(model.config.num_experts_per_tok)
    outputs = {}
    for implementation in ["eager", "grouped_mm", "batched_mm"]:
        model.set_experts_implementation(implementation)
        with torch.no_grad():
            outputs[implementation] = experts(x, index, weights)
    assert outputs["eager"].shape == (97, model.config.text_config.hidden_size)
    for implementation in ["grouped_mm", "batched_mm"]:
        torch.testing.assert_close(outputs[implementation], outputs["eager"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm"])
def test_experts_backward_from_a_broadcast_gradient(implementation):
    # `.sum().backward()` hands the kernel an expanded gradient, which torch's grouped_mm backward is fragile with.
    model = tiny_model()
    experts = model.model.adapter.experts
    x = torch.randn(50, model.config.audio_hidden_size)
    routing = torch.softmax(torch.randn(50, 8), -1).topk(model.config.num_experts_per_tok)
    weights = routing.values / routing.values.sum(-1, keepdim=True)
    model.set_experts_implementation("eager")
    experts(x, routing.indices, weights).sum().backward()
    expected = experts.up_proj.grad.clone()
    experts.zero_grad()
    model.set_experts_implementation(implementation)
    experts(x, routing.indices, weights).sum().backward()
    torch.testing.assert_close(experts.up_proj.grad, expected, rtol=1e-5, atol=1e-6)


def test_grouped_mm_is_the_default_experts_implementation():
    assert tiny_model().config._experts_implementation == "grouped_mm"


def test_output_projection_variant_writes_back_to_the_audio_width():
    model = tiny_model(adapter_output_projection=True)
    adapter = model.model.adapter
    assert adapter.experts.down_proj.shape[1] == model.config.audio_hidden_size
    assert adapter.output_projection.weight.shape == (model.config.text_config.hidden_size, model.config.audio_hidden_size)
    output = adapter(torch.randn(5, model.config.audio_hidden_size))
    assert output.shape == (5, model.config.text_config.hidden_size)


def test_router_jitter_only_in_training():
    model = tiny_model(router_jitter_noise=0.5)
    router = model.model.adapter.router
    x = torch.randn(16, model.config.audio_hidden_size)
    torch.testing.assert_close(router(x)[0], router(x)[0])
    router.train()
    assert not torch.allclose(router(x)[0], router(x)[0])


def test_z_loss_is_added_with_its_coefficient():
    config_kwargs = dict(router_z_loss_coef=0.5, router_aux_loss_coef=0.25)
    model = tiny_model(**config_kwargs)
    features, mask = make_audio_batch(model.config, [700])
    input_ids, attention_mask = make_input_ids(model.config, tokens_for([700], model.config), [8])
    out = model(input_ids=input_ids, attention_mask=attention_mask, input_features=features,
                input_features_mask=mask, labels=input_ids)
    text_only = model.loss_function(out.logits, input_ids, model.config.text_config.vocab_size)
    expected = text_only + 0.25 * out.aux_loss + 0.5 * out.router_z_loss
    torch.testing.assert_close(out.loss, expected)
    logits = out.router_z_loss  # z-loss definition: mean logsumexp^2 over real tokens
    router_logits = model.model.get_audio_features(features, mask).router_logits
    torch.testing.assert_close(logits, torch.logsumexp(router_logits, -1).square().mean())
