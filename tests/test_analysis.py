"""Section 5's analyses (modeling_moe_audio/analysis/) against independent computations on tiny models."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from modeling_moe_audio.analysis import gradients as conflicts
from modeling_moe_audio.analysis import measuring, report, routing
from modeling_moe_audio.data.collator import MoEAudioDataCollator
from modeling_moe_audio.data.manifest import load_manifest


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is fastest, and on busy cores several threads wait on each other (10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(make_corpus):
    """24 train and 12 test rows: each of the three categories has 8 and 4 (4 questions per clip)."""
    sizes = {"train": 24, "validation": 1, "test": 12}
    manifests = make_corpus(seed=1, sizes=sizes)
    train, test = list(load_manifest(manifests["train"])[0]), list(load_manifest(manifests["test"])[0])
    for rows in (train, test):
        assert {row["category"] for row in rows} == {"speech", "music", "sound"}
    return train, test


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_checkpoint, tiny_dense_checkpoint):
    """`moe` and `dense`: the shared tiny-4s checkpoints (linked, read-only)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    (folder / "moe").symlink_to(tiny_checkpoint, target_is_directory=True)
    (folder / "dense").symlink_to(tiny_dense_checkpoint, target_is_directory=True)
    return folder


def load(checkpoints, name):
    model = AutoModelForCausalLM.from_pretrained(checkpoints / name, trust_remote_code=True)
    return model, AutoProcessor.from_pretrained(checkpoints / name, trust_remote_code=True)


# ---------------------------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------------------------


def model_inputs(model, processor, rows):
    batch = MoEAudioDataCollator(processor)(rows)
    labels = batch.pop("labels")
    batch = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in batch.items()}
    return batch, labels


def reference_mean_loss(model, processor, rows):
    """Mean -log p(label) over the labelled tokens of `rows`, all in one batch, by log_softmax and gather."""
    batch, labels = model_inputs(model, processor, rows)
    log_probs = model(**batch).logits.log_softmax(dim=-1)[:, :-1]
    targets = labels[:, 1:]
    labelled = targets != -100
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -picked[labelled].sum() / labelled.sum()


def by_category(rows):
    groups = {}
    for row in rows:
        groups.setdefault(row["category"], []).append(row)
    return groups


def reference_gradients(model, processor, rows):
    """torch.autograd.grad of each category's mean loss, built over all its rows at once."""
    params = list(model.model.adapter.parameters())
    return {
        category: torch.autograd.grad(reference_mean_loss(model, processor, members), params)
        for category, members in by_category(rows).items()
    }


def flat(pieces):
    return torch.cat([piece.reshape(-1) for piece in pieces])


def bits(tensor):
    return tensor.detach().reshape(-1).contiguous().view(torch.uint8).clone()


# ---------------------------------------------------------------------------------------------------------------
# Section 5.1: expert activation
# ---------------------------------------------------------------------------------------------------------------


def test_expert_activation_counts_equal_a_direct_count_of_routing_decisions(checkpoints, corpus):
    model, processor = load(checkpoints, "moe")
    rows = corpus[1]
    expected_counts, expected_tokens = {}, {}
    with torch.no_grad():
        for row in rows:  # one forward pass per row: no batching, no padding
            batch, _ = model_inputs(model, processor, [row])
            selected = model(**batch, output_router_logits=True).selected_experts
            assert selected.shape[0] == int((batch["input_ids"] == model.config.audio_token_id).sum())
            counts = expected_counts.setdefault(row["category"], [0] * model.config.num_experts)
            for expert in selected.reshape(-1).tolist():
                counts[expert] += 1
            expected_tokens[row["category"]] = expected_tokens.get(row["category"], 0) + selected.shape[0]

    result = routing.expert_activation(model, processor, rows, batch_size=5)  # mixed categories, padded batches
    assert result["categories"] == ["speech", "music", "sound"]
    assert result["counts"] == expected_counts
    assert result["tokens"] == expected_tokens
    for category in result["categories"]:
        rates = result["rates"][category]
        assert rates == pytest.approx([count / expected_tokens[category] for count in expected_counts[category]])
        assert sum(rates) == pytest.approx(model.config.num_experts_per_tok)  # each token chooses top_k experts
    json.dumps(result, allow_nan=False)


# ---------------------------------------------------------------------------------------------------------------
# Section 5.2: eqs. 11 and 12 against a float64 reference
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def float64_moe(checkpoints, corpus):
    model, processor = load(checkpoints, "moe")
    model.double().eval()
    return model, processor, reference_gradients(model, processor, corpus[0])


def test_gradients_and_cosine_match_a_float64_reference(float64_moe, corpus):
    model, processor, reference = float64_moe
    gradients = conflicts.category_gradients(model, processor, corpus[0], batch_size=3)  # 8 rows: batches 3, 3, 2
    assert list(gradients) == ["speech", "music", "sound"]
    for category, pieces in reference.items():
        assert gradients[category].dtype == torch.float64
        # Not 1e-15: Qwen3's RMSNorm computes in float32 even in a float64 model, so gradients of a batch mean (3 rows
        # here, 8 in the reference) round differently at float32's epsilon; the loss itself matches to 1e-15.
        torch.testing.assert_close(gradients[category], flat(pieces), rtol=1e-6, atol=1e-6 * flat(pieces).abs().max())

    categories, matrix = conflicts.gradient_cosine(gradients)
    for i, a in enumerate(categories):
        for j, b in enumerate(categories):
            g_a, g_b = flat(reference[a]), flat(reference[b])
            explicit = torch.dot(g_a, g_b) / (torch.dot(g_a, g_a).sqrt() * torch.dot(g_b, g_b).sqrt())
            assert matrix[i, j].item() == pytest.approx(explicit.item(), rel=1e-6, abs=1e-9)


def test_influence_matches_explicit_steps_on_copied_parameters(float64_moe, corpus):
    model, processor, reference = float64_moe
    train, test = corpus
    step_size, batch_size = 1e-2, 3  # 4 held-out rows per category: batches of 3 and 1
    categories, matrix = conflicts.gradient_influence(model, processor, train, test, step_size, batch_size=batch_size)

    eval_batches = {
        c: [m[s : s + batch_size] for s in range(0, len(m), batch_size)] for c, m in by_category(test).items()
    }
    with torch.no_grad():
        stepped_losses = {}
        for j in categories:  # theta'_j = theta - lambda g_j / |g_j| on a copy of the model
            stepped = copy.deepcopy(model)
            norm = flat(reference[j]).norm()
            for parameter, gradient in zip(stepped.model.adapter.parameters(), reference[j]):
                parameter -= step_size * gradient / norm
            stepped_losses[j] = {
                i: [reference_mean_loss(stepped, processor, b).item() for b in eval_batches[i]] for i in categories
            }
        base = {i: [reference_mean_loss(model, processor, b).item() for b in eval_batches[i]] for i in categories}
    for row, i in enumerate(categories):
        for column, j in enumerate(categories):
            ratios = [
                (l0 - lj) / (l0 - li)
                for l0, lj, li in zip(base[i], stepped_losses[j][i], stepped_losses[i][i])
            ]
            assert matrix[row, column].item() == pytest.approx(sum(ratios) / len(ratios), rel=1e-5, abs=1e-7)
        assert matrix[row, row].item() == 1.0  # I(i, i) = 1 by definition, exactly


# "music" steps along -g_speech, which may well raise music's own loss: that warning is not what is tested here.
@pytest.mark.filterwarnings("ignore:Gradient influence:RuntimeWarning")
def test_influence_sign_convention_on_a_constructed_conflict(float64_moe, corpus):
    """A step along -g_speech raises the speech loss: I(speech, that category) must be negative, about -1."""
    model, processor, reference = float64_moe
    speech = flat(reference["speech"])
    gradients = {"speech": speech, "music": -speech, "sound": flat(reference["sound"])}
    train = corpus[0]  # measured on the rows g_speech came from, so a step along g_speech lowers their loss
    categories, matrix = conflicts.gradient_influence(model, processor, None, train, 1e-3, gradients=gradients)
    assert categories == ["speech", "music", "sound"]
    assert torch.equal(matrix.diagonal(), torch.ones(3, dtype=torch.float64))
    assert matrix[0, 1].item() < 0
    assert matrix[0, 1].item() == pytest.approx(-1.0, abs=0.05)  # -1 to first order in the step size


def test_influence_without_a_measurable_own_step_is_nan_with_a_warning(float64_moe, corpus):
    model, processor, reference = float64_moe
    gradients = {category: flat(pieces) for category, pieces in reference.items()}
    with pytest.warns(RuntimeWarning, match="rounding noise"):
        _, matrix = conflicts.gradient_influence(model, processor, None, corpus[1], 1e-30, gradients=gradients)
    assert torch.isnan(matrix).all()
    with pytest.raises(ValueError, match="step_size must be a positive"):
        conflicts.gradient_influence(model, processor, None, corpus[1], 0.0, gradients=gradients)


# ---------------------------------------------------------------------------------------------------------------
# The model is left as it was found
# ---------------------------------------------------------------------------------------------------------------


def test_influence_restores_parameters_bit_exactly_and_leaves_the_model_as_found(checkpoints, corpus, monkeypatch):
    model, processor = load(checkpoints, "moe")
    model.train()
    model.config.router_aux_loss_coef = 0.05
    model.model.audio_tower.requires_grad_(False)
    adapter_parameter = next(model.model.adapter.parameters())
    llm_parameter = model.model.language_model.embed_tokens.weight
    adapter_parameter.grad = torch.full_like(adapter_parameter, 7.0)
    llm_parameter.grad = torch.full_like(llm_parameter, -3.0)
    before = {name: bits(value) for name, value in model.state_dict().items()}
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}

    def assert_as_found():
        after = model.state_dict()
        assert all(torch.equal(bits(after[name]), before[name]) for name in before)
        assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
        assert model.training and model.config.router_aux_loss_coef == 0.05
        assert torch.equal(adapter_parameter.grad, torch.full_like(adapter_parameter, 7.0))
        assert torch.equal(llm_parameter.grad, torch.full_like(llm_parameter, -3.0))
        assert all(p.grad is None for p in model.parameters() if p is not adapter_parameter and p is not llm_parameter)

    train, test = corpus
    _, matrix = conflicts.gradient_influence(model, processor, train, test, step_size=0.5, batch_size=8)
    assert torch.isfinite(matrix).all()
    assert_as_found()

    # An error with a step applied still restores the parameters.
    calls, mean_loss = [], conflicts._mean_loss

    def failing_mean_loss(*args):
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return mean_loss(*args)

    monkeypatch.setattr(conflicts, "_mean_loss", failing_mean_loss)
    with pytest.raises(RuntimeError, match="boom"):
        conflicts.gradient_influence(model, processor, train, test, step_size=0.5, batch_size=8)
    assert_as_found()


# ---------------------------------------------------------------------------------------------------------------
# Dense models, plots and run_analysis
# ---------------------------------------------------------------------------------------------------------------


def read_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return image


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_dense_model_gets_gradient_analyses_and_a_no_experts_message(checkpoints, corpus, tmp_path):
    model, processor = load(checkpoints, "dense")
    train, test = corpus
    with pytest.raises(ValueError, match="dense adapter has no experts to map"):
        routing.expert_activation(model, processor, test)

    result = report.run_analysis(model, processor, train, tmp_path, eval_rows=test, batch_size=8)
    assert "no experts to map" in result["expert_activation"]["skipped"]
    assert not (tmp_path / "expert_heatmap.png").exists()
    assert sorted(result["files"]) == ["gradient_cosine", "gradient_influence"]
    saved = strict_json(tmp_path / "analysis.json")
    assert saved == json.loads(json.dumps(result))
    assert saved["gradient_cosine"]["num_parameters"] == sum(p.numel() for p in model.model.adapter.parameters())
    for key in ("gradient_cosine", "gradient_influence"):
        matrix = saved[key]["matrix"]
        assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
        assert [matrix[i][i] for i in range(3)] == pytest.approx([1.0, 1.0, 1.0])
        read_png(tmp_path / result["files"][key])


def test_run_analysis_writes_json_and_three_pngs_for_a_moe_model(checkpoints, corpus, tmp_path):
    model, processor = load(checkpoints, "moe")
    train, test = corpus
    result = report.run_analysis(model, processor, train + test, tmp_path, batch_size=8)  # split in halves
    saved = strict_json(tmp_path / "analysis.json")
    assert saved["categories"] == ["speech", "music", "sound"]
    assert saved["expert_activation"]["tokens"] == result["expert_activation"]["tokens"]
    assert sum(saved["expert_activation"]["tokens"].values()) > 0
    assert saved["gradient_influence"]["num_eval_rows"] == 18
    assert "Positive: a step on j lowers i's loss" in saved["gradient_influence"]["sign_convention"]
    assert result["files"] == {
        "expert_heatmap": "expert_heatmap.png",
        "gradient_cosine": "gradient_cosine.png",
        "gradient_influence": "gradient_influence.png",
    }
    for name in result["files"].values():
        read_png(tmp_path / name)


def test_split_rows_halves_each_category_without_overlap(corpus):
    train = corpus[0]
    gradient_rows, eval_rows = measuring.split_rows(train)
    assert len(gradient_rows) == len(eval_rows) == 12
    assert {id(r) for r in gradient_rows}.isdisjoint(id(r) for r in eval_rows)
    for rows in (gradient_rows, eval_rows):
        assert sorted(r["category"] for r in rows) == sorted(["speech", "music", "sound"] * 4)
    with pytest.raises(ValueError, match="has no 'category'"):
        measuring.group_by_category([{"conversation": [], "audio": []}])


def test_one_outlier_does_not_wash_out_the_other_cells(tmp_path):
    from modeling_moe_audio.analysis.figures import draw_matrix, plot_matrix

    matrix = [[1.0, 0.137, -0.024], [-0.181, 1.0, 0.5], [-72.0, 0.208, 1.0]]
    figure = draw_matrix(["speech", "music", "sound"], matrix, "Gradient influence (tiny-moe, moe adapter)")
    image = figure.axes[0].images[0]
    # The scale stays at [-1, 1]: 0.5 keeps a strong colour, and -72 takes the end colour with an arrow on the bar.
    assert (image.norm.vmin, image.norm.vmax) == (-1.0, 1.0)
    assert image.norm(0.5) == pytest.approx(0.75)
    assert image.colorbar.extend == "min"
    assert "-72.000" in [text.get_text() for text in figure.axes[0].texts]
    assert draw_matrix(["a", "b"], [[1.0, 0.2], [0.3, 1.0]], "t").axes[0].images[0].colorbar.extend == "neither"
    # Labels are kept whole: the saved picture holds the y label's full extent.
    path = plot_matrix(["speech", "music", "sound"], matrix, tmp_path / "m.png", "t", ylabel="i (category measured)")
    assert read_png(path).shape[1] > 400


def test_figures_name_the_model(checkpoints, corpus, tmp_path, monkeypatch):
    import matplotlib.figure

    model, processor = load(checkpoints, "dense")
    train, test = corpus
    titles = []
    save = matplotlib.figure.Figure.savefig

    def record_title_and_save(figure, *args, **kwargs):
        titles.append(figure.axes[0].get_title())
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record_title_and_save)
    report.run_analysis(model, processor, train, tmp_path, eval_rows=test, batch_size=8, model_name="my-dense")
    assert len(titles) == 2 and all("my-dense, dense adapter" in title for title in titles)
