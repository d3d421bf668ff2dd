"""The training benchmark's arithmetic on the tiny config (no timing is asserted)."""

import pytest
from conftest import tiny_config

from launch import bench_lib
from ttscale.models import ModelConfig


def test_train_benchmark_counts_the_forward_passes_of_each_models_step():
  config = tiny_config()
  result = bench_lib.train_benchmark(config, vocab_size=27, steps=1)
  width = config.data.seq_len
  assert result["width"] == width
  blocks = {"policy": config.model, "large": config.large_model,
            "prm": config.large_model if config.verifier_train.trunk == "large"
            else config.model, "revision": config.model}
  assert [row["model"] for row in result["train"]] == list(blocks)
  for row in result["train"]:
    # The revision model trains on its own, longer rows.
    row_width = config.revision.seq_len if row["model"] == "revision" else width
    assert row["width"] == row_width
    model_config = ModelConfig.from_config(blocks[row["model"]], 27)
    assert row["num_params"] == model_config.num_params()
    assert row["tokens_per_second"] > 0
    # Three passes (forward, backward); one for a PRM whose trunk is frozen.
    passes = 1 if row["model"] == "prm" and config.verifier_train.step_likelihood else 3
    assert row["forward_passes_per_step"] == passes
    flops = passes * model_config.flops_per_token(row_width // 2) * row["tokens_per_second"]
    assert row["flops_per_second"] == pytest.approx(flops, rel=1e-3)
    assert row["matmul_peak_fraction"] == pytest.approx(
        row["flops_per_second"] / result["machine"]["matmul_flops_per_second"], abs=1e-3)
