"""Whole-solution scoring: rows cut to length buckets and verifiers that share a
trunk give the scores of each verifier's full network at full width."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttscale.models import ModelConfig
from ttscale.models.network import Network
from ttscale.models.value import ValueModel, step_end_scores
from ttscale.search import scoring

CONFIG = ModelConfig(vocab_size=16, num_layers=1, embed_dim=16, num_heads=2,
                     num_kv_heads=1, head_dim=8, mlp_dim=32)
STEP, EOS = 4, 3
WIDTH = 80  # above the ladder's first widths: rows of 10 to 70 tokens use several


def _verifier(seed: int, trunk_of: Network | None = None) -> Network:
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: ValueModel(CONFIG, rngs=nnx.Rngs(0), step_likelihood=(STEP, EOS))))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.3, a.dtype),
                        abstract)
  if trunk_of is not None:
    pure = nnx.to_pure_dict(params)
    pure["decoder"] = nnx.to_pure_dict(trunk_of.params)["decoder"]
    nnx.replace_by_pure_dict(params, pure)
  return Network(graphdef, params, CONFIG)


@pytest.fixture(scope="module")
def rows() -> dict:
  """Seven rows of 10 to 70 tokens, steps every 6 tokens, in shuffled lengths."""
  rng = np.random.default_rng(0)
  lengths = [70, 10, 40, 25, 65, 12, 33]
  n, max_steps = len(lengths), 12
  arrays = {"inputs": np.zeros((n, WIDTH), np.int32),
            "positions": np.tile(np.arange(WIDTH, dtype=np.int32), (n, 1)),
            "step_ends": np.zeros((n, max_steps), np.int32),
            "step_mask": np.zeros((n, max_steps), np.float32)}
  for row, length in enumerate(lengths):
    tokens = rng.integers(5, 16, length)
    ends = list(range(5, length - 1, 6)) + [length - 1]
    tokens[ends] = STEP
    tokens[-1] = EOS
    arrays["inputs"][row, :length] = tokens
    arrays["step_ends"][row, :len(ends)] = ends
    arrays["step_mask"][row, :len(ends)] = 1
  return arrays


def _full_width_scores(verifier: Network, arrays: dict) -> np.ndarray:
  logits = nnx.merge(verifier.graphdef, verifier.params)(
      jnp.asarray(arrays["inputs"]), jnp.asarray(arrays["positions"]))
  return np.asarray(step_end_scores(logits, arrays["step_ends"], arrays["step_mask"] > 0))


def test_rows_cut_to_length_buckets_score_as_at_full_width_in_their_order(rows):
  """Fails if a row is cut before its last step end or a score lands on
  another row (rows are scored sorted by length)."""
  verifier = _verifier(1)
  scores = scoring.score_steps(verifier, rows, batch_size=3)
  np.testing.assert_allclose(scores, _full_width_scores(verifier, rows), atol=1e-6)
  assert (scores[rows["step_mask"] == 0] == 0).all()


def test_verifiers_sharing_a_trunk_score_as_each_alone(rows):
  """A PRM and an ORM on one trunk run it once; a third verifier with its own
  trunk is scored on its own: every score equals that verifier's alone."""
  prm = _verifier(1)
  orm = _verifier(2, trunk_of=prm)
  other = _verifier(3)
  assert scoring._share_trunks([prm, other, orm]) == [[0, 2], [1]]
  scores = scoring.score_steps_of([prm, other, orm], rows, batch_size=4)
  for verifier, result in zip([prm, other, orm], scores, strict=True):
    np.testing.assert_allclose(result, _full_width_scores(verifier, rows), atol=1e-6)
  assert not np.allclose(scores[0], scores[2])  # the heads differ
