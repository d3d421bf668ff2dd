"""Tests of the resumable training loop, its checkpoint guard and its optimiser.

The training tests share one tiny model (with dropout, so resuming must also
reproduce the dropout keys) and two runs made once per module: an
uninterrupted one, and one killed after its step-3 checkpoint and resumed.
"""

from __future__ import annotations

import json
import os
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttscale.data.batching import TrainBatches, pack_sequences
from ttscale.models import LanguageModel, ModelConfig, policy_forward_fn
from ttscale.testing import tree_digest
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
  # The model's structure from `eval_shape`, its values from numpy: eager
  # initialisation would compile once per parameter shape.
  graphdef, abstract_params = nnx.split(
      nnx.eval_shape(lambda: LanguageModel(MODEL_CONFIG, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  initial_params = jax.tree.map(
      lambda a: jnp.asarray(rng.normal(size=a.shape) / np.sqrt(a.shape[0]), a.dtype),
      abstract_params)
  forward = policy_forward_fn(graphdef)
  probe_batch = TrainBatches(packed, batch_size=4, seed=1).batch(0)

  def loss_fn(params, batch, dropout_rng):
    logits = forward(params, batch["inputs"], batch["positions"], batch["segment_ids"],
                     dropout_rng)
    loss, metrics = next_token_loss(logits, batch["targets"], batch["loss_mask"])
    # Fixed parameters on a fixed batch: this varies with the dropout key only.
    probe_logits = forward(initial_params, probe_batch["inputs"], probe_batch["positions"],
                           probe_batch["segment_ids"], dropout_rng)
    metrics["dropout_probe"] = next_token_loss(
        probe_logits, probe_batch["targets"], probe_batch["loss_mask"])[0]
    return loss, metrics

  def run(checkpointer, directory, batches, log=lambda _: None):
    # The same `initial_params` every time: train must leave the caller's arrays alive.
    return train(name="test", loss_fn=loss_fn, params=initial_params, batches=batches,
                 train_config=_train_config(), checkpointer=checkpointer,
                 metrics_path=os.path.join(directory, "metrics.jsonl"), seed=SEED, log=log)

  def checkpointer_in(directory):
    return Checkpointer(os.path.join(directory, "checkpoints"), {"run": "test"})

  uninterrupted_dir = str(tmp_path_factory.mktemp("uninterrupted"))
  uninterrupted_batches = _RecordingBatches(TrainBatches(packed, batch_size=4, seed=1))
  checkpointer = checkpointer_in(uninterrupted_dir)
  uninterrupted_params = run(checkpointer, uninterrupted_dir, uninterrupted_batches)
  checkpointer.close()

  resumed_dir = str(tmp_path_factory.mktemp("resumed"))
  killed_batches = _RecordingBatches(TrainBatches(packed, batch_size=4, seed=1),
                                     killed_at=KILLED_AT_STEP)
  killed_checkpointer = checkpointer_in(resumed_dir)
  with pytest.raises(KeyboardInterrupt):
    run(killed_checkpointer, resumed_dir, killed_batches)
  # What a restarted process would find if this one died now.
  onlooker = checkpointer_in(resumed_dir)
  step_on_disk_when_killed = onlooker.latest_step()
  onlooker.close()
  # Let the step-3 save finish: the kill came after the checkpoint was written.
  killed_checkpointer.close()
  metrics_when_killed = _read_metrics(os.path.join(resumed_dir, "metrics.jsonl"))
  # Another training stage shares the metrics file; a resume must keep its lines.
  with open(os.path.join(resumed_dir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"stage": "other", "step": 99, "loss": 1.0}) + "\n")

  resumed_batches = _RecordingBatches(TrainBatches(packed, batch_size=4, seed=1))
  resumed_log: list[str] = []
  checkpointer = checkpointer_in(resumed_dir)
  resumed_params = run(checkpointer, resumed_dir, resumed_batches, log=resumed_log.append)
  checkpointer.close()
  return types.SimpleNamespace(
      uninterrupted_params=uninterrupted_params,
      uninterrupted_metrics=_read_metrics(os.path.join(uninterrupted_dir, "metrics.jsonl")),
      killed_steps=killed_batches.requested_steps,
      step_on_disk_when_killed=step_on_disk_when_killed,
      metrics_when_killed=metrics_when_killed,
      resumed_params=resumed_params,
      resumed_metrics=[r for r in _read_metrics(os.path.join(resumed_dir, "metrics.jsonl"))
                       if r["stage"] == "test"],
      other_stage_metrics=[r for r in _read_metrics(os.path.join(resumed_dir, "metrics.jsonl"))
                           if r["stage"] == "other"],
      resumed_steps=resumed_batches.requested_steps,
      resumed_log=resumed_log)


def test_killed_and_resumed_run_ends_with_the_uninterrupted_parameters(runs):
  uninterrupted = jax.tree.leaves(runs.uninterrupted_params)
  resumed = jax.tree.leaves(runs.resumed_params)
  assert len(resumed) == len(uninterrupted)
  for expected, found in zip(uninterrupted, resumed, strict=True):
    np.testing.assert_allclose(np.asarray(found), np.asarray(expected), rtol=0, atol=1e-6)


def test_resumed_run_restarts_from_the_checkpoint_not_from_zero(runs):
  assert runs.killed_steps == list(range(KILLED_AT_STEP))
  assert runs.resumed_steps == list(range(CHECKPOINT_EVERY, NUM_STEPS))
  assert f"test: resumed from the checkpoint at step {CHECKPOINT_EVERY}" in runs.resumed_log


def test_checkpoint_saved_before_an_interruption_is_on_disk_when_train_raises(runs):
  assert runs.step_on_disk_when_killed == CHECKPOINT_EVERY


def test_resumed_metrics_drop_the_lost_step_and_match_the_uninterrupted_run(runs):
  # The killed run logged step 4, which the checkpoint at step 3 does not hold.
  assert [r["step"] for r in runs.metrics_when_killed] == list(range(1, KILLED_AT_STEP + 1))
  uninterrupted_steps = [r["step"] for r in runs.uninterrupted_metrics]
  assert uninterrupted_steps == list(range(1, NUM_STEPS + 1))
  assert [r["step"] for r in runs.resumed_metrics] == uninterrupted_steps
  for expected, found in zip(runs.uninterrupted_metrics, runs.resumed_metrics, strict=True):
    for key in ("loss", "dropout_probe", "grad_norm"):
      assert found[key] == pytest.approx(expected[key], rel=0, abs=1e-6), (found["step"], key)


def test_resume_keeps_the_metric_lines_of_other_stages(runs):
  assert [r["step"] for r in runs.other_stage_metrics] == [99]


def test_dropout_mask_changes_with_the_step_and_repeats_across_runs(runs):
  probes = [r["dropout_probe"] for r in runs.uninterrupted_metrics]
  # Same parameters and batch at every step: only the dropout mask can move it.
  assert len(set(probes)) == len(probes)
  # The killed run drew the same masks at the same steps.
  assert [r["dropout_probe"] for r in runs.metrics_when_killed] == probes[:KILLED_AT_STEP]


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
  before = tree_digest(checkpoint_dir)
  other_spec = {"model": {"num_layers": 2, "embed_dim": 16}, "tokenizer": "abc123"}
  with pytest.raises(ValueError, match=r"model\.num_layers=1 in the workdir, 2 now"):
    Checkpointer(checkpoint_dir, other_spec)
  assert tree_digest(checkpoint_dir) == before


def test_checkpointer_with_a_missing_spec_field_names_it(checkpoint_dir):
  before = tree_digest(checkpoint_dir)
  with pytest.raises(ValueError, match=r"tokenizer \(present in only one\)"):
    Checkpointer(checkpoint_dir, {"model": SPEC["model"]})
  assert tree_digest(checkpoint_dir) == before


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
  before = tree_digest(checkpoint_dir)
  with pytest.raises(ValueError, match=re.escape(spec_path)):
    Checkpointer(checkpoint_dir, SPEC)
  assert tree_digest(checkpoint_dir) == before


# ------------------------------------------------------------------ optimiser

def _update_sizes(optimizer, gradients: np.ndarray) -> np.ndarray:
  """The updates [steps, n] `optimizer` gives for `gradients` [steps, n], from zero params."""
  params = jnp.zeros(gradients.shape[1:], jnp.float32)

  def step(state, gradient):
    update, state = optimizer.update(gradient, state, params)
    return state, update

  run = jax.jit(lambda g: jax.lax.scan(step, optimizer.init(params), g)[1])
  return np.asarray(run(jnp.asarray(gradients, jnp.float32)))


def test_learning_rate_warms_up_linearly_then_decays_to_the_end_fraction():
  config = _train_config(learning_rate=0.1, warmup_steps=4, num_steps=10,
                         end_learning_rate_fraction=0.2, weight_decay=0.0)
  # A constant gradient below the clip norm: Adam's bias-corrected step is then
  # the learning rate itself, so each update's size is the schedule's value.
  gradients = np.full((config.num_steps + 3, 3), 0.1)
  updates = _update_sizes(make_optimizer(config), gradients)
  np.testing.assert_allclose(updates, updates[:, :1] * np.ones(3), rtol=1e-6)
  rates = -updates[:, 0]
  peak, warmup = config.learning_rate, config.warmup_steps
  np.testing.assert_allclose(rates[:warmup + 1], peak * np.arange(warmup + 1) / warmup,
                             rtol=1e-5, atol=1e-9)
  assert np.all(np.diff(rates[warmup:config.num_steps + 1]) < 0)
  end = config.end_learning_rate_fraction * peak
  np.testing.assert_allclose(rates[config.num_steps:], end, rtol=1e-5)


def test_gradients_above_the_clip_norm_are_scaled_down_to_it_before_adam():
  config = _train_config(grad_clip_norm=0.5)
  rng = np.random.default_rng(0)
  directions = rng.normal(size=(4, 5))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  # Global norms far above, below, far above and just above the clip norm.
  norms = np.array([[40.0], [0.1], [300.0], [0.6]])
  gradients = directions * norms
  clipped = directions * np.minimum(norms, config.grad_clip_norm)
  optimizer = make_optimizer(config)
  from_clipped = _update_sizes(optimizer, clipped)
  np.testing.assert_allclose(_update_sizes(optimizer, gradients), from_clipped,
                             rtol=1e-5, atol=1e-8)
  # Without clipping, the large gradients would move Adam's moments differently.
  unclipped = _update_sizes(make_optimizer(_train_config(grad_clip_norm=1e9)), gradients)
  assert not np.allclose(unclipped, from_clipped, rtol=1e-3)


def _cut_largest_file(step_dir: str) -> str:
  """Cuts the largest file of a saved step in half (a kill mid-write)."""
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, "rb") as f:
    data = f.read()
  with open(largest, "wb") as f:
    f.write(data[:len(data) // 2])
  return largest


def test_a_damaged_newest_step_falls_back_to_the_one_before_with_a_warning(checkpoint_dir):
  """Fails if a newest step that cannot be restored is final (an error) instead
  of being moved aside, with a one-line warning, for the step before it."""
  checkpointer = Checkpointer(checkpoint_dir, json.loads(json.dumps(SPEC)))
  checkpointer.save(2, {"weights": jnp.arange(4.0) + 10})
  checkpointer.close()
  _cut_largest_file(os.path.join(checkpoint_dir, "2"))
  checkpointer = Checkpointer(checkpoint_dir, json.loads(json.dumps(SPEC)))
  log: list[str] = []
  step, restored = checkpointer.restore_latest(
      {"weights": jax.ShapeDtypeStruct((4,), jnp.float32)}, log.append)
  assert step == 1 and checkpointer.latest_step() == 1
  checkpointer.close()
  np.testing.assert_array_equal(np.asarray(restored["weights"]), np.arange(4.0))
  assert len(log) == 1 and "\n" not in log[0], log
  assert log[0].startswith("warning: ") and "cannot restore step 2" in log[0], log
  assert os.path.isdir(os.path.join(checkpoint_dir, "damaged-2"))
