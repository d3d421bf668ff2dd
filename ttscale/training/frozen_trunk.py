"""Verifier training on a frozen trunk: the trunk runs once per solution.

A verifier that reads its trunk's step likelihood (`ValueModel` with
`step_likelihood`) keeps the trunk as the language model it was trained as:
only the head and its two likelihood weights learn. What the head reads at a
step end (the trunk's hidden state and the step's likelihood features) then
never changes during training, so it is computed once per solution
(`step_end_inputs`) and every training step runs the head alone on it. The
loss and the labels are those of the full network; what differs:

- the trunk sees no dropout (it only made the frozen features noisy);
- the trunk's weights stay exactly as trained: the optimiser's mask keeps
  AdamW's weight decay off them (on the whole network it shrank them a
  little every step, though they got no gradient).

A step of the larger trunk's PRM (batch 64 rows of ~180 tokens) cost a
forward pass of the trunk, ~0.4 s on two cores, 600 steps per verifier;
the features of the ~3,000 labelled solutions cost ~4 steps' worth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttscale import parallel
from ttscale.training.objectives import step_value_loss

# The parameters of a `ValueModel` that learn when its trunk is frozen.
HEAD_PARAMS = ("head", "head_bias", "likelihood_weights")


def trainable_head(params: nnx.State):
  """A pytree of bools shaped like `params`: True on the head's parameters."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _key_name(path[0]) in HEAD_PARAMS, params)


def _key_name(key) -> str:
  return str(getattr(key, "key", getattr(key, "name", key)))


def step_end_features(graphdef: nnx.GraphDef, params: nnx.State, arrays: dict,
                      batch_size: int, mesh=None, rules=None) -> dict[str, np.ndarray]:
  """The head's inputs at every step end of `arrays` (of `verifier_arrays`).

  Args:
    graphdef, params: a `ValueModel` split by `nnx.split`.
    arrays: inputs, positions int32 [n, W]; token_mask float32 [n, W];
      step_ends int32 [n, S]; step_mask, targets float32 [n, S].
    batch_size: rows per forward pass (padded with copies of row 0).

  Returns:
    hidden float32 [n, S, embed], likelihood float32 [n, S, 2] (zeros
    without step likelihood), step_mask and targets float32 [n, S], tokens
    float32 [n] (each row's token count, for the throughput shown).
  """
  n = arrays["inputs"].shape[0]
  if mesh is not None:
    batch_size = -(-batch_size // mesh.shape["data"]) * mesh.shape["data"]

  @jax.jit
  def features(params, tokens, positions, step_ends):
    hidden, likelihood = nnx.merge(graphdef, params).step_end_inputs(tokens, positions,
                                                                     step_ends)
    if likelihood is None:
      likelihood = jnp.zeros((*step_ends.shape, 2), hidden.dtype)
    return hidden.astype(jnp.float32), likelihood.astype(jnp.float32)

  hidden, likelihood = [], []
  with parallel.maybe_sharding(mesh, rules):
    for first in range(0, n, batch_size):
      rows = np.arange(first, first + batch_size).clip(max=n - 1)
      batch = {k: arrays[k][rows] for k in ("inputs", "positions", "step_ends")}
      if mesh is not None:
        batch = parallel.shard_batch(batch, mesh)
      h, lik = features(params, batch["inputs"], batch["positions"], batch["step_ends"])
      count = min(batch_size, n - first)
      hidden.append(np.asarray(h)[:count])
      likelihood.append(np.asarray(lik)[:count])
  return {"hidden": np.concatenate(hidden), "likelihood": np.concatenate(likelihood),
          "step_mask": arrays["step_mask"], "targets": arrays["targets"],
          "tokens": arrays["token_mask"].sum(axis=1)}


def head_loss_fn(graphdef: nnx.GraphDef):
  """`(params, feature batch, dropout_rng) -> (loss, metrics)`: the verifier's
  step BCE (`step_value_loss`) with the head run on precomputed features."""

  def loss_fn(params, batch, dropout_rng):
    del dropout_rng  # the head has no dropout; the trunk is not run
    logits = nnx.merge(graphdef, params).head_logits(batch["hidden"], batch["likelihood"])
    # The features sit at the step ends already: step s's logit is column s.
    steps = jnp.broadcast_to(jnp.arange(logits.shape[1]), logits.shape)
    loss, metrics = step_value_loss(logits, steps, batch["step_mask"], batch["targets"])
    return loss, {**metrics, "tokens": batch["tokens"].sum()}

  return loss_fn
