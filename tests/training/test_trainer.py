"""Tests of the resumable training loop, its checkpoint guard and its optimiser.

The training tests share one tiny model (with dropout, so resuming must also
reproduce the dropout keys) and two runs made once per module: an
uninterrupted one, and one killed after its step-3 checkpoint and resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttscale.data.batching import TrainBatches, pack_sequences
from ttscale.models import LanguageModel, ModelConfig, policy_forward_fn
from ttscale.training.checkpoints import Checkpointer
from ttscale.training.objectives import next_token_loss
from ttscale.training.optimizer import make_optimizer
from ttscale.training.trainer import train

NUM_STEPS = 6
CHECKPOINT_EVERY = 3
KILLED_AT_STEP = 4  # asking for this batch kills the run: one step after a checkpoint
SEED = 7
MODEL_CONFIG = ModelConfig(vocab_size=12, num_layers=1, embed_dim=16, num_heads=2,
                           num_kv_heads=1, head_dim=8, mlp_dim=32, dropout_rate=0.3)


def _train_config(**overrides) -> types.SimpleNamespace:
  values = dict(learning_rate=1e-2, warmup_steps=2, num_steps=NUM_STEPS,
                end_learning_rate_fraction=0.1, weight_decay=0.01, b1=0.9, b2=0.95,
                grad_clip_norm=1.0, checkpoint_every=CHECKPOINT_EVERY, log_every=1)
  values.update(overrides)
  return types.SimpleNamespace(**values)


def _tree_digest(root: str) -> dict[str, str]:
  """{relative path: sha256} of every file under `root`, plus its directories."""
  digest = {}
  for directory, subdirectories, files in os.walk(root):
    for name in subdirectories:
      digest[os.path.relpath(os.path.join(directory, name), root) + "/"] = "dir"
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return digest


def _read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class _RecordingBatches:
  """Serves `batches`, records the steps asked for, and dies at `killed_at`.

  Dying raises KeyboardInterrupt, as a Ctrl-C would, from inside the loop.
  """

  def __init__(self, batches: TrainBatches, killed_at: int | None = None):
    self._batches = batches
    self._killed_at = killed_at
    self.requested_steps: list[int] = []

  def batch(self, step: int) -> dict[str, np.ndarray]:
    if step == self._killed_at:
      raise KeyboardInterrupt
    self.requested_steps.append(step)
    return self._batches.batch(step)


@pytest.fixture(scope="module")
def packed() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 12, size=40)
  sequences = [rng.integers(4, MODEL_CONFIG.vocab_size, size=n) for n in lengths]
  loss_masks = [np.arange(n) >= n // 2 for n in lengths]
  return pack_sequences(sequences, loss_masks, seq_len=16)


@pytest.fixture(scope="module")
def runs(packed, tmp_path_factory):
  """An uninterrupted run and a killed-then-resumed one, from the same start."""
  graphdef, initial_params = nnx.split(LanguageModel(MODEL_CONFIG, rngs=nnx.Rngs(0)))
  forward = policy_forward_fn(graphdef)
  probe_batch = TrainBatches(packed, batch_size=4, seed=1).batch(0)
  probe_params = jax.tree.map(jnp.copy, initial_params)

  def loss_fn(params, batch, dropout_rng):
    logits = forward(params, batch["inputs"], batch["positions"], batch["segment_ids"],
                     dropout_rng)
    loss, metrics = next_token_loss(logits, batch["targets"], batch["loss_mask"])
    # Fixed parameters on a fixed batch: this varies with the dropout key only.
    probe_logits = forward(probe_params, probe_batch["inputs"], probe_batch["positions"],
                           probe_batch["segment_ids"], dropout_rng)
    metrics["dropout_probe"] = next_token_loss(
        probe_logits, probe_batch["targets"], probe_batch["loss_mask"])[0]
    return loss, metrics

  def run(directory, batches, log):
    checkpointer = Checkpointer(os.path.join(directory, "checkpoints"), {"run": "test"})
    try:
      return train(name="test", loss_fn=loss_fn,
                   params=jax.tree.map(jnp.copy, initial_params), batches=batches,
                   train_config=_train_config(), checkpointer=checkpointer,
                   metrics_path=os.path.join(directory, "metrics.jsonl"), seed=SEED,
                   log=log)
    finally:
      checkpointer.close()

  uninterrupted_dir = str(tmp_path_factory.mktemp("uninterrupted"))
  uninterrupted_batches = _RecordingBatches(TrainBatches(packed, batch_size=4, seed=1))
  uninterrupted_params = run(uninterrupted_dir, uninterrupted_batches, log=lambda _: None)

  resumed_dir = str(tmp_path_factory.mktemp("resumed"))
  killed_batches = _RecordingBatches(TrainBatches(packed, batch_size=4, seed=1),
                                     killed_at=KILLED_AT_STEP)
  with pytest.raises(KeyboardInterrupt):
    run(resumed_dir, killed_batches, log=lambda _: None)
  metrics_when_killed = _read_metrics(os.path.join(resumed_dir, "metrics.jsonl"))
  resumed_batches = _RecordingBatches(TrainBatches(packed, batch_size=4, seed=1))
  resumed_log: list[str] = []
  resumed_params = run(resumed_dir, resumed_batches, log=resumed_log.append)
  return types.SimpleNamespace(
      uninterrupted_params=uninterrupted_params,
      uninterrupted_metrics=_read_metrics(os.path.join(uninterrupted_dir, "metrics.jsonl")),
      uninterrupted_steps=uninterrupted_batches.requested_steps,
      killed_steps=killed_batches.requested_steps,
      metrics_when_killed=metrics_when_killed,
      resumed_params=resumed_params,
      resumed_metrics=_read_metrics(os.path.join(resumed_dir, "metrics.jsonl")),
      resumed_steps=resumed_batches.requested_steps,
      resumed_log=resumed_log)


def test_killed_and_resumed_run_ends_with_the_uninterrupted_parameters(runs):
  uninterrupted = jax.tree.leaves(runs.uninterrupted_params)
  resumed = jax.tree.leaves(runs.resumed_params)
  assert len(resumed) == len(uninterrupted)
  for expected, found in zip(uninterrupted, resumed):
    np.testing.assert_allclose(np.asarray(found), np.asarray(expected), rtol=0, atol=1e-6)


def test_resumed_run_restarts_from_the_checkpoint_not_from_zero(runs):
  assert runs.killed_steps == list(range(KILLED_AT_STEP))
  assert runs.resumed_steps == list(range(CHECKPOINT_EVERY, NUM_STEPS))
  assert f"test: resumed from the checkpoint at step {CHECKPOINT_EVERY}" in runs.resumed_log


def test_resumed_metrics_drop_the_lost_step_and_match_the_uninterrupted_run(runs):
  # The killed run logged step 4, which the checkpoint at step 3 does not hold.
  assert [r["step"] for r in runs.metrics_when_killed] == list(range(1, KILLED_AT_STEP + 1))
  uninterrupted_steps = [r["step"] for r in runs.uninterrupted_metrics]
  assert uninterrupted_steps == list(range(1, NUM_STEPS + 1))
  assert [r["step"] for r in runs.resumed_metrics] == uninterrupted_steps
  for expected, found in zip(runs.uninterrupted_metrics, runs.resumed_metrics):
    for key in ("loss", "dropout_probe", "grad_norm"):
      assert found[key] == pytest.approx(expected[key], rel=0, abs=1e-6), (found["step"], key)


def test_dropout_key_changes_with_the_step_and_repeats_across_runs(runs):
  probes = [r["dropout_probe"] for r in runs.uninterrupted_metrics]
  # Same parameters and batch at every step: only the dropout mask can move it.
  assert len(set(probes)) == len(probes)
  # The killed run's first steps drew the same masks as the uninterrupted run.
  assert [r["dropout_probe"] for r in runs.metrics_when_killed] == probes[:KILLED_AT_STEP]


def test_dropout_masks_differ_between_keys_and_repeat_for_one_key(packed):
  graphdef, params = nnx.split(LanguageModel(MODEL_CONFIG, rngs=nnx.Rngs(0)))
  forward = jax.jit(policy_forward_fn(graphdef))
  batch = TrainBatches(packed, batch_size=4, seed=1).batch(0)
  args = (params, batch["inputs"], batch["positions"], batch["segment_ids"])
  key = jax.random.key(SEED)
  step_0 = forward(*args, jax.random.fold_in(key, 0))
  step_0_again = forward(*args, jax.random.fold_in(key, 0))
  step_1 = forward(*args, jax.random.fold_in(key, 1))
  no_dropout = forward(*args, None)
  np.testing.assert_array_equal(np.asarray(step_0_again), np.asarray(step_0))
  assert not np.allclose(step_1, step_0)
  assert not np.allclose(step_0, no_dropout)


# ------------------------------------------------------------ checkpoint guard

SPEC = {"model": {"num_layers": 1, "embed_dim": 16}, "tokenizer": "abc123"}


@pytest.fixture
def checkpoint_dir(tmp_path) -> str:
  directory = str(tmp_path / "checkpoints")
  checkpointer = Checkpointer(directory, SPEC)
  checkpointer.save(1, {"weights": jnp.arange(4.0)})
  checkpointer.close()
  return directory


def test_checkpointer_with_another_spec_names_the_field_and_touches_nothing(checkpoint_dir):
  before = _tree_digest(checkpoint_dir)
  other_spec = {"model": {"num_layers": 2, "embed_dim": 16}, "tokenizer": "abc123"}
  with pytest.raises(ValueError, match=r"model\.num_layers=1 in the workdir, 2 now"):
    Checkpointer(checkpoint_dir, other_spec)
  assert _tree_digest(checkpoint_dir) == before


def test_checkpointer_with_a_missing_spec_field_names_it(checkpoint_dir):
  before = _tree_digest(checkpoint_dir)
  with pytest.raises(ValueError, match=r"tokenizer \(present in only one\)"):
    Checkpointer(checkpoint_dir, {"model": SPEC["model"]})
  assert _tree_digest(checkpoint_dir) == before


def test_checkpointer_with_the_same_spec_restores_the_saved_tree(checkpoint_dir):
  checkpointer = Checkpointer(checkpoint_dir, json.loads(json.dumps(SPEC)))
  assert checkpointer.latest_step() == 1
  restored = checkpointer.restore(1, {"weights": jax.ShapeDtypeStruct((4,), jnp.float32)})
  checkpointer.close()
  np.testing.assert_array_equal(np.asarray(restored["weights"]), np.arange(4.0))


def test_checkpointer_with_a_corrupt_spec_names_the_file(checkpoint_dir):
  spec_path = os.path.join(checkpoint_dir, "spec.json")
  with open(spec_path, "w") as f:
    f.write('{"model": {"num_lay')
  before = _tree_digest(checkpoint_dir)
  with pytest.raises(ValueError, match=spec_path):
    Checkpointer(checkpoint_dir, SPEC)
  assert _tree_digest(checkpoint_dir) == before


# ------------------------------------------------------------------ optimiser

def _update_sizes(optimizer, gradients: list[jax.Array]) -> list[np.ndarray]:
  """The updates `optimizer` gives for `gradients`, one per step, from zero params."""
  params = jnp.zeros_like(gradients[0])
  state = optimizer.init(params)
  updates = []
  for gradient in gradients:
    update, state = optimizer.update(gradient, state, params)
    updates.append(np.asarray(update))
  return updates


def test_learning_rate_warms_up_linearly_then_decays_to_the_end_fraction():
  config = _train_config(learning_rate=0.1, warmup_steps=4, num_steps=10,
                         end_learning_rate_fraction=0.2, weight_decay=0.0)
  # A constant gradient below the clip norm: Adam's bias-corrected step is then
  # exactly the learning rate, so each update's size is the schedule's value.
  gradient = jnp.full((3,), 0.1)
  updates = _update_sizes(make_optimizer(config), [gradient] * (config.num_steps + 3))
  rates = np.array([-u[0] for u in updates])
  for u in updates:
    np.testing.assert_allclose(u, u[0], rtol=1e-6)
  peak, warmup = config.learning_rate, config.warmup_steps
  np.testing.assert_allclose(rates[:warmup + 1], peak * np.arange(warmup + 1) / warmup,
                             rtol=1e-5, atol=1e-9)
  assert np.all(np.diff(rates[warmup:config.num_steps + 1]) < 0)
  end = config.end_learning_rate_fraction * peak
  np.testing.assert_allclose(rates[config.num_steps:], end, rtol=1e-5)


def test_gradients_above_the_clip_norm_are_scaled_down_to_it_before_adam():
  config = _train_config(grad_clip_norm=0.5)
  rng = np.random.default_rng(0)
  # Norms far above, just below, and far above the clip norm.
  gradients = [jnp.asarray(rng.normal(size=5) * scale, jnp.float32)
               for scale in (40.0, 0.1, 300.0, 2.0)]
  clipped = [g * min(1.0, config.grad_clip_norm / float(jnp.linalg.norm(g)))
             for g in gradients]
  optimizer = make_optimizer(config)
  from_raw = _update_sizes(optimizer, gradients)
  from_clipped = _update_sizes(optimizer, clipped)
  for raw, pre_clipped in zip(from_raw, from_clipped):
    np.testing.assert_allclose(raw, pre_clipped, rtol=1e-5, atol=1e-8)
  # Without clipping the large gradients would move Adam's moments differently.
  unclipped = _update_sizes(make_optimizer(_train_config(grad_clip_norm=1e9)), gradients)
  assert not np.allclose(unclipped[1], from_clipped[1], rtol=1e-3)
