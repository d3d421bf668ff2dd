"""Tests of early stopping in the training loop, on a problem solved by hand.

Training pulls a vector w from 0 towards T = (4, 4) by gradient descent; the
validation loss is |w - V|^2 with V = (1, 1) on the way. So validation
improves, then worsens once w passes V: training must stop `patience`
validations after the best one and hand back the best parameters, and a
killed run resumed from its checkpoint must do exactly the same.
"""

from __future__ import annotations

import json
import os
import types

import jax.numpy as jnp
import numpy as np
import pytest

from ttscale.training.checkpoints import Checkpointer
from ttscale.training.trainer import EarlyStopping, train

TARGET, VALIDATION_POINT = 4.0, 1.0
NUM_STEPS, EVERY, PATIENCE = 40, 2, 2


class _Batches:
  def __init__(self, killed_at=None):
    self.killed_at = killed_at

  def batch(self, step):
    if step == self.killed_at:
      raise KeyboardInterrupt
    return {"target": np.full((2,), TARGET, np.float32)}


def _loss_fn(params, batch, dropout_rng):
  del dropout_rng
  loss = jnp.mean((params["w"] - batch["target"]) ** 2)
  return loss, {"loss": loss, "tokens": jnp.ones(())}


def _validation_loss(params) -> float:
  return float(np.sum((np.asarray(params["w"]) - VALIDATION_POINT) ** 2))


def _run(directory, batches, log=None):
  config = types.SimpleNamespace(
      learning_rate=0.05, warmup_steps=0, num_steps=NUM_STEPS,
      end_learning_rate_fraction=1.0, weight_decay=0.0, b1=0.0, b2=0.0,
      grad_clip_norm=100.0, checkpoint_every=EVERY, log_every=EVERY)
  state = Checkpointer(os.path.join(directory, "state"), {"run": "test"})
  best = Checkpointer(os.path.join(directory, "best"), {"run": "test"}, max_to_keep=1)
  stopping = EarlyStopping(_validation_loss, PATIENCE, best)
  try:
    params = train(name="test", loss_fn=_loss_fn, params={"w": jnp.zeros((2,))},
                   batches=batches, train_config=config, checkpointer=state,
                   metrics_path=os.path.join(directory, "metrics.jsonl"), seed=0,
                   early_stopping=stopping, log=log or (lambda _: None))
  finally:
    state.close()
    best.close()
  return params, stopping


def _validations(directory):
  with open(os.path.join(directory, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [(r["step"], r["validation_loss"]) for r in records if "validation_loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("uninterrupted"))
  params, stopping = _run(directory, _Batches())
  return directory, params, stopping


def test_training_stops_after_patience_and_returns_the_best(uninterrupted):
  directory, params, stopping = uninterrupted
  validations = _validations(directory)
  losses = [loss for _, loss in validations]
  best_index = int(np.argmin(losses))
  assert stopping.stopped and validations[-1][0] < NUM_STEPS
  # Exactly `patience` validations after the best, all worse.
  assert len(validations) - 1 - best_index == PATIENCE
  assert stopping.best_step == validations[best_index][0]
  assert _validation_loss(params) == pytest.approx(losses[best_index])
  # The best is not the last: the returned parameters are not the final ones.
  assert losses[-1] > losses[best_index]


def test_a_killed_run_resumes_to_the_same_stop(uninterrupted, tmp_path):
  directory, params, stopping = uninterrupted
  kill_at = stopping.best_step + 1  # between the best validation and the stop
  with pytest.raises(KeyboardInterrupt):
    _run(str(tmp_path), _Batches(killed_at=kill_at))
  resumed_params, resumed = _run(str(tmp_path), _Batches())
  assert _validations(str(tmp_path)) == _validations(directory)
  assert resumed.best_step == stopping.best_step
  np.testing.assert_array_equal(resumed_params["w"], params["w"])


def test_a_stopped_run_rerun_trains_no_further(uninterrupted, tmp_path):
  directory, params, _ = uninterrupted
  log: list[str] = []
  again, _ = _run(directory, _Batches(killed_at=0), log=log.append)  # no batch needed
  assert any("stopped early before" in line for line in log)
  np.testing.assert_array_equal(again["w"], params["w"])
