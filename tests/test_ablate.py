"""`moe-audio ablate` on a reduced budget: the table, the parameter counts, and resuming."""

import json

import pytest

from modeling_moe_audio.presets import ABLATIONS, ablation_config

from helpers import moe_audio_process


def test_ablation_configs_follow_tables_2_and_3():
    base = ablation_config("8-choose-4")
    assert (base.num_experts, base.num_experts_per_tok) == (8, 4)
    assert ablation_config("16-choose-4").num_experts == 16
    assert ablation_config("8-choose-1").num_experts_per_tok == 1
    assert (ablation_config("4-choose-2").num_experts, ablation_config("4-choose-2").num_experts_per_tok) == (4, 2)
    assert ablation_config("8-choose-4-width-half").expert_intermediate_size == base.expert_intermediate_size // 2
    assert ablation_config("8-choose-4-width-double").expert_intermediate_size == base.expert_intermediate_size * 2
    assert ablation_config("8-choose-4-no-balance-loss").router_aux_loss_coef == 0.0
    assert len(ABLATIONS) == 7


@pytest.mark.slow
def test_reduced_ablation_writes_the_table_and_resumes(tmp_path):
    command = ["ablate", "--quick", "--output_dir", tmp_path, "--configs", "8-choose-4,8-choose-1"]
    first = moe_audio_process(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert table[0].startswith("| configuration | overall | speech | music | sound |")
    assert [line.split("|")[1].strip() for line in table[2:4]] == ["8-choose-4", "8-choose-1"]
    # One seed: the difference from 8-choose-4 is paired over the test questions, and names no winner.
    assert "One seed names no winner" in "\n".join(table)
    results = json.loads((tmp_path / "ablation.json").read_text())["runs"]
    assert results[0]["adapter_params_total"] == results[1]["adapter_params_total"]
    assert results[1]["adapter_params_active"] < results[0]["adapter_params_active"]
    assert all(r["balance"]["max_mean_load"] >= 1.0 for r in results)
    trained = (tmp_path / "8-choose-1" / "seed-0" / "model.safetensors").stat().st_mtime
    # Resuming: finished configurations are read back, not trained again.
    second = moe_audio_process(*command)
    assert second.returncode == 0
    assert (tmp_path / "8-choose-1" / "seed-0" / "model.safetensors").stat().st_mtime == trained
    assert "stage full" not in second.stdout
