"""Verifier scores of whole solutions, in fixed-shape batches.

The scoring counterpart of `generate.sample_solutions`: rows from
`data.verifier_data.verifier_arrays`, one forward pass per batch, the
sigmoid score read at every step end. (Search scores steps incrementally from
the verifier's own cache instead; see `ValueModel.extend`.)
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from ttscale import parallel
from ttscale.data.verifier_data import verifier_arrays
from ttscale.models import policy_forward_fn
from ttscale.models.value import step_end_scores
from ttscale.search import select


@functools.lru_cache(maxsize=8)
def _compiled_scorer(graphdef):
  forward = policy_forward_fn(graphdef)

  @jax.jit
  def run(params, inputs, positions, step_ends, step_mask):
    logits = forward(params, inputs, positions)
    return step_end_scores(logits, step_ends, step_mask > 0)

  return run


def score_steps(verifier, arrays: dict[str, np.ndarray], batch_size: int,
                mesh=None, rules=None) -> np.ndarray:
  """The verifier's score at every step end of every row.

  Args:
    verifier: a `Network` holding a `ValueModel`.
    arrays: `inputs`, `positions` [n, W] and `step_ends`, `step_mask` [n, S].
    batch_size: rows per compiled batch (the last batch is padded).

  Returns:
    float32 [n, S]: sigmoid scores, 0 where `step_mask` is 0.
  """
  run = _compiled_scorer(verifier.graphdef)
  names = ("inputs", "positions", "step_ends", "step_mask")
  n = arrays["inputs"].shape[0]
  scores = []
  with parallel.maybe_sharding(mesh, rules):
    params = verifier.params if mesh is None else parallel.replicate(verifier.params, mesh)
    for start in range(0, n, batch_size):
      batch = [arrays[name][start:start + batch_size] for name in names]
      real = batch[0].shape[0]
      # Pad with copies of row 0 so every batch has one shape.
      batch = [np.concatenate([b, np.repeat(b[:1], batch_size - real, axis=0)])
               for b in batch]
      if mesh is not None:
        batch = parallel.shard_batch(tuple(batch), mesh)
      # Rows may span several processes' devices: every host gathers them all.
      scores.append(parallel.to_host(run(params, *batch))[:real])
  return np.concatenate(scores) if scores else np.zeros((0, 0), np.float32)


def last_step_scores(verifier, records: list[dict], batch_size: int, mesh=None, rules=None,
                     width_multiple: int = 16) -> np.ndarray:
  """Each solution's score at its last step end (0 without a step).

  Args:
    records: dicts with `prompt`, `tokens` (ids) and `step_ends` (into `tokens`).

  Returns:
    float32 [len(records)].
  """
  longest = max(len(r["prompt"]) + len(r["tokens"]) for r in records)
  arrays = verifier_arrays(records, None, -(-longest // width_multiple) * width_multiple)
  steps = score_steps(verifier, arrays, batch_size, mesh, rules)
  return np.asarray(select.aggregate_steps(steps, arrays["step_mask"] > 0, "last"),
                    np.float32)
