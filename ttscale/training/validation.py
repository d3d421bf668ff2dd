"""Validation loss for early stopping: one jitted batch loss over every held-out row."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from ttscale import parallel

# (params, batch) -> (loss, metrics): the batch's mean loss and its counts.
BatchLoss = Callable[[object, dict], tuple[jax.Array, dict]]


def validation_loss_fn(batch_loss: BatchLoss, arrays: dict[str, np.ndarray], *,
                       weight: str, mask: str, batch_size: int,
                       mesh: jax.sharding.Mesh | None) -> Callable[[object], float]:
  """`params -> mean loss` over every row of `arrays`, weighted as training is.

  Args:
    batch_loss: the training objective on one batch; `metrics[weight]` is
      how many targets the batch's mean loss is over (tokens, steps).
    arrays: {name: [rows, ...]} of the held-out rows.
    mask: the field zeroed in the rows that pad the last batch (they count 0).
  """
  n = arrays[mask].shape[0]
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  padded = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in arrays.items()}
  padded[mask][n:] = 0.0

  @jax.jit
  def summed(params, batch):
    loss, metrics = batch_loss(params, batch)
    return loss * metrics[weight], metrics[weight]

  def validate(params) -> float:
    total, count = 0.0, 0.0
    for b in range(num_batches):
      batch = {k: v[b * batch_size:(b + 1) * batch_size] for k, v in padded.items()}
      if mesh is not None:
        batch = parallel.shard_batch(batch, mesh)
      loss_sum, weight_sum = summed(params, batch)
      total, count = total + float(loss_sum), count + float(weight_sum)
    return total / max(count, 1.0)

  return validate
