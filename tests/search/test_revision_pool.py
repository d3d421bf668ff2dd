"""One pool of revision chains per question serves every split of the grid."""

import numpy as np
import pytest

from ttscale.search import revision_pool, revisions
from ttscale.search.budget import FlopsRate, budget_grid


def _all_splits(max_budget: int) -> list[tuple[int, int]]:
  return [split for n in budget_grid(max_budget, "max_budget") for split in revisions.splits(n)]


def test_the_pool_up_to_16_is_48_attempts_in_chains_of_16_8_4_4_2_and_1():
  lengths = revision_pool.pool_chain_lengths(_all_splits(16))
  assert lengths == [16, 8, 4, 4, 2, 2, 2, 2] + [1] * 8
  assert sum(lengths) == 48
  assert sum(n for n in budget_grid(16, "b") for _ in revisions.splits(n)) == 129
  groups = revision_pool.length_groups(lengths)
  assert [(g.length, g.first_chain, g.num_chains) for g in groups] == [
      (16, 0, 1), (8, 1, 1), (4, 2, 2), (2, 4, 4), (1, 8, 8)]


def test_a_subset_of_splits_pools_only_what_it_reads():
  assert revision_pool.pool_chain_lengths([(4, 4), (16, 1)]) == [16, 4, 4, 4]
  assert revision_pool.pool_chain_lengths([(1, 8)]) == [1] * 8
  with pytest.raises(ValueError, match="no .* split"):
    revision_pool.pool_chain_lengths([])


def test_every_split_reads_the_first_attempts_of_the_first_chains():
  """Fails if a view takes chains or attempts the split does not have, or
  the wrong ones: each cell holds (chain, attempt) of the pool."""
  splits = _all_splits(16)
  groups = revision_pool.length_groups(revision_pool.pool_chain_lengths(splits))
  questions = 3
  arrays = [np.stack(np.meshgrid(np.arange(g.first_chain, g.first_chain + g.num_chains),
                                 np.arange(g.length), indexing="ij"), axis=-1)
            [None].repeat(questions, axis=0) for g in groups]
  for s, p in splits:
    cells = revision_pool.view(groups, arrays, s, p)
    assert cells.shape == (questions, p, s, 2)
    expected = np.stack(np.meshgrid(np.arange(p), np.arange(s), indexing="ij"), axis=-1)
    np.testing.assert_array_equal(cells, np.broadcast_to(expected, cells.shape))


def test_a_split_the_pool_cannot_serve_is_refused():
  groups = revision_pool.length_groups([4, 2])
  arrays = [np.zeros((1, 1, 4)), np.zeros((1, 1, 2))]
  with pytest.raises(ValueError, match="chain 1 has 2 attempts"):
    revision_pool.view(groups, arrays, 3, 2)
  with pytest.raises(ValueError, match="the pool has 2 chains"):
    revision_pool.view(groups, arrays, 1, 3)


def test_a_splits_flops_prefill_the_shared_first_context_once():
  rate = FlopsRate(per_token=10.0, per_context_key=1.0)
  # One question, 2 chains of 2 attempts: first contexts of 5 tokens, then 9.
  contexts = np.array([[[5, 9], [5, 9]]])
  tokens = np.array([[[3, 4], [2, 4]]])
  pairs = zip(contexts.ravel(), tokens.ravel(), strict=True)
  decode = sum(float(rate.decode(c - 1, n)) for c, n in pairs)
  prefill = float(rate.decode(0, 4)) + 2 * float(rate.decode(0, 8))
  np.testing.assert_allclose(revision_pool.policy_flops(rate, contexts, tokens),
                             [decode + prefill])
  prompts = np.array([[[5, 9], [5, 9]]])
  pairs = zip(prompts.ravel(), tokens.ravel(), strict=True)
  scored = sum(float(rate.decode(0, p + n)) for p, n in pairs)
  np.testing.assert_allclose(revision_pool.verifier_flops(rate, prompts, tokens), [scored])
