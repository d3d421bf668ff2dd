"""Verifier scores of whole solutions, in fixed-shape batches.

The scoring counterpart of `generate.sample_solutions`: rows from
`data.verifier_data.verifier_arrays`, one forward pass per batch, the
sigmoid score read at every step end. (Search scores steps incrementally from
the verifier's own cache instead; see `ValueModel.extend`.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttscale import parallel
from ttscale.data.verifier_data import verifier_arrays
from ttscale.models.value import step_end_scores
from ttscale.search import select

# Row widths a batch is cut to: each about 1.5x the last, so a row is padded
# by at most half its length and few programs are compiled. Causal attention:
# a step end's score does not depend on the tokens after it.
_WIDTH_LADDER = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def _batch_width(needed: int, full_width: int) -> int:
  """The ladder's smallest width that holds `needed` tokens (at most the full width)."""
  return min([w for w in _WIDTH_LADDER if w >= needed] + [full_width])


@functools.lru_cache(maxsize=8)
def _compiled_scorer(graphdefs: tuple):
  """Scores of several verifiers on one batch. With one verifier, its whole
  network; with several (which share one trunk: `_share_trunks`), the trunk
  of the first once and every verifier's head on its step-end features."""

  @jax.jit
  def run(params, inputs, positions, step_ends, step_mask):
    if len(graphdefs) == 1:
      logits = nnx.merge(graphdefs[0], params[0])(inputs, positions)
      return [step_end_scores(logits, step_ends, step_mask > 0)]
    hidden, likelihood = nnx.merge(graphdefs[0], params[0]).step_end_inputs(
        inputs, positions, step_ends)
    return [jnp.where(step_mask > 0,
                      jax.nn.sigmoid(nnx.merge(g, p).head_logits(hidden, likelihood)), 0.0)
            for g, p in zip(graphdefs, params, strict=True)]

  return run


def _trunk(params) -> list[np.ndarray]:
  """What a `ValueModel`'s step-end features depend on: its decoder (and an
  untied LM head for the step likelihood)."""
  pure = nnx.to_pure_dict(params)
  return [np.asarray(x) for x in jax.tree.leaves({k: pure[k] for k in ("decoder", "lm_head")
                                                  if k in pure})]


def _share_trunks(verifiers) -> list[list[int]]:
  """Groups of verifier indices whose networks differ only in their heads
  (one structure, equal trunk weights): e.g. a PRM and an ORM trained on one
  frozen trunk."""
  groups: list[list[int]] = []
  trunks = [_trunk(v.params) for v in verifiers]
  for i, verifier in enumerate(verifiers):
    for group in groups:
      first = group[0]
      if (verifiers[first].graphdef == verifier.graphdef
          and all(np.array_equal(a, b) for a, b in zip(trunks[first], trunks[i], strict=True))):
        group.append(i)
        break
    else:
      groups.append([i])
  return groups


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
  return score_steps_of([verifier], arrays, batch_size, mesh, rules)[0]


def score_steps_of(verifiers, arrays: dict[str, np.ndarray], batch_size: int,
                   mesh=None, rules=None) -> list[np.ndarray]:
  """`score_steps` of several verifiers on the same rows; those that share a
  trunk (`_share_trunks`) run it once.

  Rows are scored in order of length, each batch cut to a width of
  `_WIDTH_LADDER` that holds its longest row's last step end: solutions of
  mixed lengths (revision contexts of 0 to 4 attempts) are not all run at
  the longest one's width.

  Returns:
    [float32 [n, S]] in the order of `verifiers`.
  """
  n, full_width = arrays["inputs"].shape
  scores = [np.zeros(arrays["step_mask"].shape, np.float32) for _ in verifiers]
  if n == 0:
    return scores
  step_mask = arrays["step_mask"] > 0
  needed = np.where(step_mask, arrays["step_ends"], -1).max(axis=1) + 1
  order = np.argsort(needed, kind="stable")
  names = ("inputs", "positions", "step_ends", "step_mask")
  with parallel.maybe_sharding(mesh, rules):
    for group in _share_trunks(verifiers):
      run = _compiled_scorer(tuple(verifiers[i].graphdef for i in group))
      params = [verifiers[i].params for i in group]
      if mesh is not None:
        params = parallel.replicate(params, mesh)
      for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        width = _batch_width(int(needed[rows].max()), full_width)
        # Pad with copies of the first row so every batch has one shape per width.
        padded = np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows))])
        batch = tuple(arrays[name][padded][:, :width] if name in ("inputs", "positions")
                      else arrays[name][padded] for name in names)
        if mesh is not None:
          batch = parallel.shard_batch(batch, mesh)
        # Rows may span several processes' devices: every host gathers them all.
        for i, result in zip(group, parallel.to_host(run(params, *batch)), strict=True):
          scores[i][rows] = result[:len(rows)]
  return scores


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
