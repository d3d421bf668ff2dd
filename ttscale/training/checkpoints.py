"""Orbax checkpoints of training state, guarded by a spec of what was trained.

Each checkpoint directory holds a `spec.json` — the model shape, the
tokenizer fingerprint, anything that must match for the checkpoint to mean
the same thing — written once when the directory is first used. Opening the
directory with a different spec is an error that names the first field that
differs, before anything in the directory is touched.

The directory may be a URL (`gs://...`): orbax takes it as it is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from ttscale import io_utils
from ttscale.diffs import first_difference
from ttscale.models.config import comparable_records

# Orbax saves a replicated array by having each replica write a slice of it,
# cut by an eager `slice` that XLA compiles once per array shape and device:
# 2.9 s for ten small arrays on 8 CPU devices, against 0.04 s whole. Only
# slices of at least this many bytes are worth cutting (a large model's
# weights on many hosts); smaller arrays are written whole by one replica.
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _register_array_handler() -> None:
  """Replaces orbax's handler of jax.Array by one with our slice threshold."""
  # Orbax logs a warning on every override; a launcher's stderr is kept to
  # one line for bad input, so the override is made with absl's logger quiet.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)
  finally:
    absl_logger.setLevel(level)


_register_array_handler()


def _vocab_size(spec: dict) -> int | None:
  """The vocabulary size a spec records (at its top or in its model block)."""
  return spec.get("vocab_size", (spec.get("model") or {}).get("vocab_size"))


def _comparable(spec: Any) -> Any:
  """`spec` with every `model` record in it as `comparable_record` makes it,
  without its compute dtype: the same weights run in float32 or bfloat16
  (`model.compute_dtype` is how a checkpoint is run, not what it holds; the
  stage markers still record it, so results of the other dtype are not reused)."""
  return comparable_records(spec, ignore=("compute_dtype",))


def check_spec(directory: str, spec: dict) -> None:
  """Raises ValueError if `directory` holds checkpoints of another spec.

  `model` records compare with the defaults of fields they lack and without
  `compute_dtype` (`_comparable`). Reads only; a directory without
  `spec.json` passes.
  """
  spec_path = os.path.join(directory, "spec.json")
  if not epath.Path(spec_path).exists():
    return
  stored = io_utils.read_json(spec_path)
  difference = first_difference(_comparable(json.loads(json.dumps(spec))),
                                _comparable(stored))
  if difference and difference.startswith("tokenizer"):
    # A fingerprint alone does not tell a user which tokenizer is which.
    sizes = [_vocab_size(s) for s in (stored, spec)]
    if None not in sizes:
      difference += f" (vocabulary of {sizes[0]} tokens in the workdir, {sizes[1]} now)"
  if difference:
    raise ValueError(
        f"{io_utils.absolute(directory)} holds a checkpoint of another setup: "
        f"{difference}; use a new --workdir or the settings it was made with")


class Checkpointer:
  """Saves and restores pytrees by step in `directory`, checking its spec."""

  def __init__(self, directory: str, spec: dict, max_to_keep: int = 2):
    self.directory = io_utils.absolute(directory)
    spec = json.loads(json.dumps(spec))  # normalise tuples, keys.
    spec_path = os.path.join(self.directory, "spec.json")
    if epath.Path(spec_path).exists():
      check_spec(self.directory, spec)
    else:
      epath.Path(self.directory).mkdir(parents=True, exist_ok=True)
      io_utils.write_json_atomic(spec_path, spec)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, tree: Any) -> None:
    """Starts an asynchronous save of `tree` (a pytree of arrays) at `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree)))

  def restore(self, step: int, abstract_tree: Any) -> Any:
    """Restores the tree saved at `step`, shaped like `abstract_tree`."""
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_tree)))
    except Exception as e:  # orbax raises many types for a damaged directory.
      raise ValueError(
          f"{self.directory}: cannot restore step {step} ({type(e).__name__}: "
          f"{str(e).splitlines()[0] if str(e) else ''})") from e
    return restored.state

  def restore_latest(self, abstract_tree: Any, log: Callable[[str], None] = print
                     ) -> tuple[int | None, Any]:
    """(step, tree) of the newest step that restores, or (None, None).

    A newer step that fails to restore (a file cut by a kill or a full disk)
    is moved aside to `damaged-<step>` with a one-line warning, so that it is
    neither restored nor counted again; the step before it is tried next.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return step, self.restore(step, abstract_tree)
      except ValueError as error:
        damaged = epath.Path(self.directory) / f"damaged-{step}"
        epath.Path(self.directory, str(step)).rename(damaged)
        self._manager.reload()
        log(f"warning: {error}; moved it to {damaged} and trying the step before")
    return None, None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
