"""A resumable training loop: optax update, orbax checkpoints, JSONL metrics.

The loop is deterministic in the step number: batch `step` comes from
`batches.batch(step)` and the dropout key from `fold_in(seed, step)`. So a run
killed after the checkpoint at step k and restarted from it takes exactly the
steps an uninterrupted run would have taken, and ends with the same
parameters.

Several processes (`ttscale.distributed`) run the same loop in step; the
metrics file is appended by process 0 alone (`io_utils.append_bytes`), and
read by all of them at the start of a run, before a barrier that every
process reaches ahead of the first append.
The metrics path may be a URL (`gs://...`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx, struct

from ttscale import distributed, io_utils, parallel
from ttscale.progress import format_seconds
from ttscale.training.checkpoints import Checkpointer
from ttscale.training.optimizer import make_optimizer

# (params, batch, dropout_rng) -> (loss, metrics)
LossFn = Callable[[nnx.State, dict, jax.Array], tuple[jax.Array, dict]]


class Batches(Protocol):
  def batch(self, step: int) -> dict[str, np.ndarray]: ...


@struct.dataclass
class TrainState:
  step: jax.Array       # int32: [] steps taken
  params: nnx.State     # the model's parameters
  opt_state: Any        # optax state, shaped like params


class EarlyStopping:
  """Validation at checkpoints, the best parameters kept, and a patience.

  The validation history is read back from the metrics file on resume (its
  lines past the resumed step are dropped first), so a resumed run stops
  where an uninterrupted one would. The best parameters go to their own
  checkpoint directory, saved synchronously before the training state.
  """

  def __init__(self, validate: Callable[[nnx.State], float], patience: int,
               best_checkpointer: Checkpointer):
    """`validate(params)` returns the validation loss (lower is better)."""
    if patience < 1:
      raise ValueError(f"patience={patience}: expected >= 1")
    self._validate = validate
    self.patience = patience
    self._best_checkpointer = best_checkpointer
    self.best, self.best_step, self._bad = float("inf"), -1, 0

  @property
  def stopped(self) -> bool:
    return self._bad >= self.patience

  def resume(self, metrics_path: str, name: str, start: int) -> None:
    self.best, self.best_step, self._bad = float("inf"), -1, 0
    if not epath.Path(metrics_path).exists():
      return
    with epath.Path(metrics_path).open() as f:
      records = [json.loads(line) for line in f if line.strip()]
    for record in records:
      if (record.get("stage") == name and "validation_loss" in record
          and record["step"] <= start):
        self._record(record["validation_loss"], record["step"])

  def _record(self, loss: float, step: int) -> bool:
    improved = loss < self.best
    if improved:
      self.best, self.best_step, self._bad = loss, step, 0
    else:
      self._bad += 1
    return improved

  def validate(self, params, step: int, metrics_path: str, name: str, log) -> None:
    loss = float(self._validate(params))
    if self._record(loss, step):
      # A re-run after a kill between this save and the state's finds it.
      if self._best_checkpointer.latest_step() != step:
        self._best_checkpointer.save(step, params)
        self._best_checkpointer.wait()
    io_utils.append_bytes(metrics_path, (json.dumps(
        {"stage": name, "step": step, "validation_loss": loss}) + "\n").encode())
    log(f"{name}: step {step} validation loss {loss:.4f} (best {self.best:.4f} "
        f"at step {self.best_step})")

  def restore_best(self, params):
    """The best validated parameters (`params` gives shapes and shardings)."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)
    return self._best_checkpointer.restore(self.best_step, abstract)


def _truncate_metrics(path: str, name: str, after_step: int) -> None:
  """Drops `name`'s metric lines past `after_step` (left by a killed run).

  The file is shared by every training stage; other stages' lines stay.
  Every process reads and decides alike; process 0 writes, between barriers
  that all of them reach (no process writes the file meanwhile).
  """
  if not epath.Path(path).exists():
    return
  with epath.Path(path).open() as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines
          if (record := json.loads(line)).get("stage") != name
          or record.get("step", 0) <= after_step]
  if len(kept) != len(lines):
    io_utils.write_bytes_atomic(path, "".join(kept).encode())


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, seed: int):
  """`(state, batch) -> (next state, metrics)`: one optimiser step on `loss_fn`
  (dropout drawn from `seed` and the step); jit it with the state donated."""

  def train_step(state: TrainState, batch: dict):
    dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, dropout_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics["grad_norm"] = optax.global_norm(grads)
    return TrainState(step=state.step + 1,
                      params=optax.apply_updates(state.params, updates),
                      opt_state=opt_state), metrics

  return train_step


def train(*, name: str, loss_fn: LossFn, params: nnx.State, batches: Batches,
          train_config, checkpointer: Checkpointer, metrics_path: str,
          seed: int, mesh=None, rules=None,
          early_stopping: EarlyStopping | None = None,
          log: Callable[[str], None] = print, trainable=None) -> nnx.State:
  """Trains `params` for `train_config.num_steps`, resuming if checkpointed.

  Args:
    name: shown in progress lines and metric records.
    loss_fn: `(params, batch, dropout_rng) -> (loss, metrics)`.
    params: initial parameters (used only when no checkpoint exists; their
      shapes are the restore target otherwise).
    batches: `batches.batch(step)` gives the step's arrays `[rows, ...]`.
    train_config: the `train` config block (optimiser, steps, intervals).
    checkpointer: where checkpoints go; its spec was checked on creation.
    metrics_path: JSONL file, one record every `log_every` steps.
    seed: dropout randomness.
    mesh, rules: run sharded on `mesh` (None: the default device).
    early_stopping: validate at every checkpoint, keep the best parameters
      and stop after `patience` validations without improvement.
    trainable: which parameters learn (`make_optimizer`); None: all.

  Returns:
    The trained parameters: the last ones, or with `early_stopping` the
    best validated ones.
  """
  if train_config.checkpoint_every % train_config.log_every:
    # Metric windows must not straddle a checkpoint, or a resumed run would
    # log a window that differs from the uninterrupted run's.
    raise ValueError(
        f"train.checkpoint_every={train_config.checkpoint_every} must be a "
        f"multiple of train.log_every={train_config.log_every}")
  if mesh is not None and train_config.batch_size % mesh.shape["data"]:
    raise ValueError(
        f"{name}: batch_size={train_config.batch_size} must be a multiple of the "
        f"mesh's data axis ({mesh.shape['data']} devices)")
  optimizer = make_optimizer(train_config, trainable)
  train_step = make_train_step(loss_fn, optimizer, seed)

  with parallel.maybe_sharding(mesh, rules):
    if mesh is not None:
      params = parallel.shard_params(params, mesh, rules)
    # Not jitted: optax builds the moments with zeros_like, which keeps each
    # parameter's sharding, so the step compiles once for its final layout.
    # A copy, because the step donates its input state.
    params = jax.tree.map(lambda x: x.copy(), params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=optimizer.init(params))
    if checkpointer.latest_step() is not None:
      abstract = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
          state)
      # A damaged newest step falls back to the one before (with a warning).
      start, restored = checkpointer.restore_latest(abstract, log)
      if start is not None:
        state = restored
        log(f"{name}: resumed from the checkpoint at step {start}")
    start = int(state.step)
    _truncate_metrics(metrics_path, name, start)
    step_fn = jax.jit(train_step, donate_argnums=0)
    try:
      state = _run_steps(name, step_fn, state, start, batches, train_config,
                         checkpointer, metrics_path, mesh, early_stopping, log)
    finally:
      # Also on Ctrl-C: let a checkpoint already started reach the disk.
      checkpointer.wait()
    if early_stopping is not None:
      return early_stopping.restore_best(state.params)
  return state.params


def _run_steps(name, step_fn, state, start, batches, train_config,
               checkpointer, metrics_path, mesh, early_stopping, log):
  """Steps `start`..num_steps: update, log every `log_every`, checkpoint."""
  num_steps = train_config.num_steps
  if num_steps == 0:
    # No training (an imported checkpoint used as it is): saved as step 0, so
    # that later stages load it like any trained policy.
    if checkpointer.latest_step() is None:
      checkpointer.save(0, state)
    return state
  if early_stopping is not None:
    early_stopping.resume(metrics_path, name, start)
    if early_stopping.stopped:
      log(f"{name}: stopped early before; best validation loss "
          f"{early_stopping.best:.4f} at step {early_stopping.best_step}")
      return state
  # Several processes: every one has read the metrics file (truncated and
  # resumed from it) before process 0 appends to it.
  distributed.barrier(f"trainer: {name} read {metrics_path}")
  started = window_start = time.time()
  window: list[dict] = []
  for step in range(start, num_steps):
    batch = batches.batch(step)
    if mesh is not None:
      batch = parallel.shard_batch(batch, mesh)
    state, metrics = step_fn(state, batch)
    window.append(metrics)
    done = step + 1
    if done % train_config.log_every == 0 or done == num_steps:
      means = {k: float(np.mean([float(m[k]) for m in window]))
               for k in window[0] if k != "tokens"}
      window_tokens = float(sum(float(m["tokens"]) for m in window))
      record = {"stage": name, "step": done, **means,
                "tokens_per_second": window_tokens / max(time.time() - window_start, 1e-9)}
      io_utils.append_bytes(metrics_path, (json.dumps(record) + "\n").encode())
      rate = (done - start) / max(time.time() - started, 1e-9)
      log(f"{name}: step {done}/{num_steps} loss {means['loss']:.4f} "
          f"acc {means.get('accuracy', float('nan')):.3f} "
          f"{record['tokens_per_second'] / 1e3:.1f}k tok/s "
          f"ETA {format_seconds((num_steps - done) / rate)}")
      window, window_start = [], time.time()
    if done % train_config.checkpoint_every == 0 or done == num_steps:
      if early_stopping is not None:
        early_stopping.validate(state.params, done, metrics_path, name, log)
      checkpointer.save(done, state)
      if early_stopping is not None and early_stopping.stopped:
        log(f"{name}: no improvement in {early_stopping.patience} validations; "
            f"stopping at step {done}, keeping step {early_stopping.best_step}")
        break
  return state


def train_early_stopped(*, name: str, loss_fn: LossFn, params: nnx.State, batches: Batches,
                        validate: Callable[[nnx.State], float], train_config,
                        checkpointers: tuple[Checkpointer, Checkpointer], metrics_path: str,
                        seed: int, mesh=None, rules=None,
                        log: Callable[[str], None] = print, trainable=None) -> dict:
  """`train` with early stopping on `validate(params)` (lower is better), the
  best parameters kept by the second checkpointer; both are closed on return.

  Returns:
    {"best_step", "best_validation_loss", "stopped_early"}.
  """
  state_checkpointer, best_checkpointer = checkpointers
  stopping = EarlyStopping(validate, train_config.patience, best_checkpointer)
  train(name=name, loss_fn=loss_fn, params=params, batches=batches,
        train_config=train_config, checkpointer=state_checkpointer,
        metrics_path=metrics_path, seed=seed, mesh=mesh, rules=rules,
        early_stopping=stopping, log=log, trainable=trainable)
  state_checkpointer.close()
  best_checkpointer.close()
  return {"best_step": stopping.best_step, "best_validation_loss": stopping.best,
          "stopped_early": stopping.stopped}
