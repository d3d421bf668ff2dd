"""Question difficulty: quantile bins of a per-question score (paper §3.1).

Oracle difficulty bins questions by the policy's pass@1 (from many samples);
predicted difficulty bins them the same way by the mean verifier score of
those samples, which needs no ground truth. Bin 1 is the easiest.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


def quantile_bins(easiness, num_bins: int = 5) -> np.ndarray:
  """Bins 1 (easiest) .. num_bins by quantiles of `easiness` (higher: easier).

  Questions are ranked from the easiest; a question's bin is the quantile of
  its rank. Equal values share the bin of their average rank, so ties are
  never split across bins (bins may then differ in size).

  Args:
    easiness: float [questions], e.g. pass@1.

  Returns:
    int64 [questions] in 1..num_bins.
  """
  easiness = np.asarray(easiness, np.float64)
  if num_bins < 1:
    raise ValueError(f"num_bins={num_bins}: expected >= 1")
  if easiness.ndim != 1 or easiness.size == 0:
    raise ValueError(f"easiness: expected a non-empty vector, got shape {easiness.shape}")
  if not np.all(np.isfinite(easiness)):
    raise ValueError("easiness: every value must be finite")
  n = easiness.size
  order = np.argsort(-easiness, kind="stable")  # easiest first
  ranks = np.empty(n)
  ranks[order] = np.arange(n)
  # Ties: every member of a group of equal values takes the group's mean rank.
  values, groups = np.unique(easiness, return_inverse=True)
  mean_rank = np.bincount(groups, weights=ranks) / np.bincount(groups)
  ranks = mean_rank[groups]
  return np.minimum((ranks * num_bins / n).astype(np.int64), num_bins - 1) + 1


class DecodeFlops(Protocol):
  """FLOPs of decoding with a network (`search.budget.FlopsRate`)."""

  def decode(self, start: int, count: int) -> float:
    """FLOPs of `count` tokens decoded after `start` tokens in the cache."""


def prediction_cost(samples: list[tuple[int, int]], num_samples: int, policy: DecodeFlops,
                    verifier: DecodeFlops) -> dict:
  """What predicted difficulty costs per question: the policy's samples and
  the verifier's scoring of them.

  Args:
    samples: (prompt tokens, solution tokens) per sample, question-major,
      `num_samples` per question (the prompt with its bos token).

  Returns:
    {"generations_per_question", "policy_flops_per_question" (each prompt
     prefilled once, every sample decoded), "prm_flops_per_question"}.
  """
  num_questions = len(samples) // num_samples
  prompt_flops = sum(float(policy.decode(0, samples[q * num_samples][0] - 1))
                     for q in range(num_questions))
  sample_flops = sum(float(policy.decode(prompt - 1, solution)) for prompt, solution in samples)
  verifier_flops = sum(float(verifier.decode(0, prompt + solution))
                       for prompt, solution in samples)
  return {"generations_per_question": num_samples,
          "policy_flops_per_question": (prompt_flops + sample_flops) / num_questions,
          "prm_flops_per_question": verifier_flops / num_questions}


def accuracy_by_level(levels: list[int], pass_at_1: list[float], greedy: list[bool]) -> dict:
  """{level: {"num_questions", "pass_at_1", "greedy_accuracy"}} of the policy's
  evaluation, levels ascending (as strings: JSON keys).

  Args:
    levels: [Q] each question's difficulty level (the task's own).
    pass_at_1: [Q] each question's fraction of correct samples.
    greedy: [Q] whether its greedy answer is correct.
  """
  per_level = {}
  for level in sorted(set(levels)):
    idx = [i for i, x in enumerate(levels) if x == level]
    per_level[str(level)] = {
        "num_questions": len(idx),
        "pass_at_1": float(np.mean([pass_at_1[i] for i in idx])),
        "greedy_accuracy": float(np.mean([greedy[i] for i in idx])),
    }
  return per_level
