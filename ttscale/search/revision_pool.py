"""Every split of a budget grid read off one pool of revision chains per question.

Sweeping each split s × p = N of each budget N on its own draws Σ_N Σ_s N
attempts per question (129 for N up to 16). But attempt j of a chain sees only
the question and its own chain's previous attempts, so the first s attempts of
a longer chain are distributed exactly as a chain of s attempts. One pool
serves every split: chain c runs for the longest s of the splits with p > c,
and the split (s, p) reads the first s attempts of chains 0 … p − 1, as
best-of-N reads its budgets off one pool of samples. Up to N = 16: one chain
of 16 attempts, one of 8, two of 4, four of 2 and eight of 1, 48 attempts per
question instead of 129.

What changes against independent draws: the splits of one budget, and the
budgets of one split, share samples (their comparisons are paired, with less
variance); each split's accuracy is still that of its own p chains of s.

A pool is run as one `run_chains` call per group of chains of equal length
(`length_groups`), and kept as per-group arrays [questions, chains, attempts].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ttscale.search.budget import FlopsRate


def pool_chain_lengths(splits: Sequence[tuple[int, int]]) -> list[int]:
  """The length of each chain of the pool: chain c runs for the longest s of
  the (s, p) splits with p > c. Non-increasing in c."""
  if not splits:
    raise ValueError("no (s, p) split to pool")
  chains = max(p for _, p in splits)
  return [max(s for s, p in splits if p > c) for c in range(chains)]


@dataclasses.dataclass(frozen=True)
class Group:
  """Consecutive chains of the pool with one length."""
  length: int       # attempts per chain
  first_chain: int  # the pool index of its first chain
  num_chains: int


def length_groups(lengths: Sequence[int]) -> list[Group]:
  """`pool_chain_lengths` as runs of equal length, in chain order."""
  groups: list[Group] = []
  for c, length in enumerate(lengths):
    if groups and groups[-1].length == length:
      last = groups[-1]
      groups[-1] = Group(length, last.first_chain, last.num_chains + 1)
    else:
      groups.append(Group(length, c, 1))
  return groups


def view(groups: Sequence[Group], arrays: Sequence[np.ndarray], sequential: int,
         parallel: int) -> np.ndarray:
  """The split (s, p) of a pool: the first s attempts of chains 0 … p − 1.

  Args:
    groups: the pool's `length_groups`.
    arrays: one array per group, [questions, group.num_chains, group.length, ...].

  Returns:
    [questions, parallel, sequential, ...].

  Raises:
    ValueError: the pool has fewer than `parallel` chains of `sequential`
      attempts.
  """
  picked = []
  for group, array in zip(groups, arrays, strict=True):
    wanted = min(parallel - group.first_chain, group.num_chains)
    if wanted <= 0:
      break
    if group.length < sequential:
      raise ValueError(f"the pool's chain {group.first_chain} has {group.length} attempts; "
                       f"the split s={sequential}, p={parallel} reads {sequential}")
    picked.append(np.asarray(array)[:, :wanted, :sequential])
  if sum(p.shape[1] for p in picked) < parallel:
    raise ValueError(f"the pool has {sum(p.shape[1] for p in picked)} chains; the split "
                     f"s={sequential}, p={parallel} reads {parallel}")
  return np.concatenate(picked, axis=1)


def policy_flops(rate: FlopsRate, context_lengths: np.ndarray,
                 token_counts: np.ndarray) -> np.ndarray:
  """The revision model's FLOPs per question of a split's attempts.

  Every attempt decodes its tokens after its context; every context is
  prefilled, except that the chains' first attempts share one context, which
  is prefilled once (as `run_chains` does when the chains fill whole batches).
  The last context token is decoded, not prefilled (`sampling.prefill`).

  Args:
    context_lengths, token_counts: int [questions, chains, attempts] (a `view`).

  Returns:
    float64 [questions].
  """
  contexts = np.asarray(context_lengths, np.int64)
  tokens = np.asarray(token_counts, np.int64)
  decode = _decode_flops(rate, contexts - 1, tokens)
  prefill = _decode_flops(rate, np.zeros_like(contexts), contexts - 1)
  return (decode.sum(axis=(1, 2)) + prefill[:, :, 1:].sum(axis=(1, 2))
          + prefill[:, 0, 0])


def verifier_flops(rate: FlopsRate, prompt_lengths: np.ndarray,
                   token_counts: np.ndarray) -> np.ndarray:
  """A verifier's FLOPs per question to score a split's attempts: one pass
  over each attempt after its prompt.

  Args:
    prompt_lengths, token_counts: int [questions, chains, attempts].

  Returns:
    float64 [questions].
  """
  lengths = np.asarray(prompt_lengths, np.int64) + np.asarray(token_counts, np.int64)
  return _decode_flops(rate, np.zeros_like(lengths), lengths).sum(axis=(1, 2))


def _decode_flops(rate: FlopsRate, start: np.ndarray, count: np.ndarray) -> np.ndarray:
  """`rate.decode(start, count)` of every element, float64."""
  return np.asarray(rate.decode(start, count), np.float64)
