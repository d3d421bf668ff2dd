"""Trained networks back from their checkpoints, replicated on this run's mesh."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from ttscale.models import LanguageModel, ModelConfig, Network
from ttscale.training.checkpoints import Checkpointer
from ttscale.training.optimizer import make_optimizer
from ttscale.training.trainer import TrainState


def _replicated(abstract, mesh: jax.sharding.Mesh):
  """`abstract` with every leaf replicated on `mesh`: a checkpoint restores on
  this run's mesh, whatever mesh saved it."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)


def restore_language_model(checkpointer: Checkpointer, model_config: ModelConfig,
                           train_config, mesh: jax.sharding.Mesh,
                           log: Callable[[str], None] = print
                           ) -> tuple[int | None, Network | None]:
  """(step, network) of the newest training state that restores (a damaged
  step is moved aside, `Checkpointer.restore_latest`); (None, None) if none."""
  graphdef, params = nnx.split(nnx.eval_shape(
      lambda: LanguageModel(model_config, rngs=nnx.Rngs(0))))
  optimizer = make_optimizer(train_config)
  abstract = jax.eval_shape(lambda p: TrainState(
      step=np.int32(0), params=p, opt_state=optimizer.init(p)), params)
  step, state = checkpointer.restore_latest(_replicated(abstract, mesh), log)
  if step is None:
    return None, None
  return step, Network(graphdef, state.params, model_config)


def restore_parameters(checkpointer: Checkpointer, step: int,
                       module: Callable[..., nnx.Module], model_config: ModelConfig,
                       mesh: jax.sharding.Mesh) -> Network:
  """The network `module(model_config, rngs=...)` with the parameters saved at
  `step` (a best-parameters checkpoint: no optimiser state)."""
  graphdef, params = nnx.split(nnx.eval_shape(lambda: module(model_config, rngs=nnx.Rngs(0))))
  return Network(graphdef, checkpointer.restore(step, _replicated(params, mesh)), model_config)
