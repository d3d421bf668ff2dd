"""Verifier training on a frozen trunk: the same loss from features computed once,
and a trunk that the optimiser leaves exactly as it was."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ttscale.models import ModelConfig
from ttscale.models.value import ValueModel
from ttscale.training import frozen_trunk
from ttscale.training.objectives import step_value_loss
from ttscale.training.optimizer import make_optimizer
from ttscale.training.validation import validation_loss_fn

CONFIG = ModelConfig(vocab_size=16, num_layers=1, embed_dim=16, num_heads=2,
                     num_kv_heads=1, head_dim=8, mlp_dim=32)
STEP, EOS = 4, 3


@pytest.fixture(scope="module")
def verifier():
  """A verifier reading its trunk's step likelihood, every parameter random
  (head and likelihood weights included, so the features count)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: ValueModel(CONFIG, rngs=nnx.Rngs(0), step_likelihood=(STEP, EOS))))
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.3, a.dtype),
                        abstract)
  return graphdef, params


def _arrays() -> dict:
  """Three solutions of different lengths, padded to one width; step ends
  where the STEP and EOS tokens are."""
  rows = [[1, 7, STEP, 9, 10, STEP, 12, EOS], [1, 8, 8, STEP, 11, EOS], [1, 5, EOS]]
  width, max_steps = 10, 3
  arrays = {"inputs": np.zeros((3, width), np.int32),
            "positions": np.tile(np.arange(width, dtype=np.int32), (3, 1)),
            "token_mask": np.zeros((3, width), np.float32),
            "step_ends": np.zeros((3, max_steps), np.int32),
            "step_mask": np.zeros((3, max_steps), np.float32),
            "targets": np.zeros((3, max_steps), np.float32)}
  for row, tokens in enumerate(rows):
    arrays["inputs"][row, :len(tokens)] = tokens
    arrays["token_mask"][row, :len(tokens)] = 1
    ends = [i for i, t in enumerate(tokens) if t in (STEP, EOS)]
    arrays["step_ends"][row, :len(ends)] = ends
    arrays["step_mask"][row, :len(ends)] = 1
    arrays["targets"][row, :len(ends)] = np.linspace(0.2, 0.9, len(ends))
  return arrays


def test_the_head_on_features_has_the_full_networks_loss(verifier):
  """Fails if the features miss what the head reads at a step end (hidden
  state or step likelihood), or are read at the wrong positions."""
  graphdef, params = verifier
  arrays = _arrays()
  logits = nnx.merge(graphdef, params)(jnp.asarray(arrays["inputs"]),
                                       jnp.asarray(arrays["positions"]))
  full, _ = step_value_loss(logits, arrays["step_ends"], arrays["step_mask"],
                            arrays["targets"])
  # Batches of 2 rows: the last one padded.
  features = frozen_trunk.step_end_features(graphdef, params, arrays, batch_size=2)
  assert features["hidden"].shape == (3, 3, CONFIG.embed_dim)
  assert not np.allclose(features["likelihood"], 0.0)
  head, metrics = frozen_trunk.head_loss_fn(graphdef)(params, features, None)
  np.testing.assert_allclose(head, full, rtol=1e-5)
  assert float(metrics["tokens"]) == arrays["token_mask"].sum()
  head_loss = frozen_trunk.head_loss_fn(graphdef)
  validate = validation_loss_fn(lambda p, batch: head_loss(p, batch, None), features,
                                weight="steps", mask="step_mask", batch_size=2, mesh=None)
  np.testing.assert_allclose(validate(params), full, rtol=1e-5)


def test_only_the_head_learns_and_the_trunk_keeps_every_bit(verifier):
  """Fails if weight decay or any update reaches the frozen trunk, or if the
  head does not learn."""
  graphdef, params = verifier
  features = frozen_trunk.step_end_features(graphdef, params, _arrays(), batch_size=4)
  loss_fn = frozen_trunk.head_loss_fn(graphdef)
  train_config = types.SimpleNamespace(
      learning_rate=0.1, warmup_steps=1, num_steps=5, end_learning_rate_fraction=0.1,
      weight_decay=0.5, b1=0.9, b2=0.95, grad_clip_norm=1.0)
  optimizer = make_optimizer(train_config, frozen_trunk.trainable_head(params))
  state = optimizer.init(params)
  trained = params
  for _ in range(3):
    grads = jax.grad(lambda p: loss_fn(p, features, None)[0])(trained)
    updates, state = optimizer.update(grads, state, trained)
    trained = optax.apply_updates(trained, updates)
  for name in params:
    same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                        params[name], trained[name]))
    assert all(same) == (name not in frozen_trunk.HEAD_PARAMS), name
  assert loss_fn(trained, features, None)[0] < loss_fn(params, features, None)[0]
