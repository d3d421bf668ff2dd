"""FLOPs-matched comparison: a small model with test-time compute vs a larger one
(paper §5, Fig. 9).

Paper's accounting: pretraining costs X = 6·P·D_pretrain, inference
Y = 2·P·D_inference (Y = 4·P·D_inference when the small model's verifier is
counted). With the larger model M times the small one's parameters and
R = D_inference / D_pretrain, the small model may spend a test-time budget of
k generations per query for the same total FLOPs:

  6·P·D_pre + 2·P·k·D_inf = M·(6·P·D_pre + 2·P·D_inf)   →  k = M + 3(M − 1)/R
  6·P·D_pre + 4·P·k·D_inf = M·(6·P·D_pre + 2·P·D_inf)   →  k = (M(6 + 2R) − 6) / (4R)

The exact variant replaces 2·P per token by the FLOPs counted for what ran
(`exact_multiplier`).
"""

from __future__ import annotations

import math

import numpy as np


def budget_multiplier(params_ratio: float, inference_ratio: float,
                      count_verifier: bool = False) -> float:
  """k, the generations per query the small model may spend (see the module docstring).

  Args:
    params_ratio: M = P_large / P_small.
    inference_ratio: R = D_inference / D_pretrain (> 0).
  """
  if inference_ratio <= 0:
    raise ValueError(f"R={inference_ratio}: expected > 0")
  m, r = params_ratio, inference_ratio
  if count_verifier:
    return (m * (6 + 2 * r) - 6) / (4 * r)
  return m + 3 * (m - 1) / r


def exact_multiplier(small_params: int, large_params: int, inference_ratio: float,
                     large_flops_per_query: float, tokens_per_query: float,
                     small_flops_per_generation: float) -> float:
  """k from counted FLOPs: the small model's allowance per query over the
  counted cost of one of its generations (with its verifier).

  Per query, the larger model costs `large_flops_per_query` (counted) plus its
  extra pretraining spread over the queries: D_inference = R·D_pretrain tokens
  make R·D_pretrain / tokens_per_query queries, so the extra
  6·(P_L − P_S)·D_pretrain is 6·(P_L − P_S)·tokens_per_query / R per query.
  """
  allowance = (large_flops_per_query
               + 6 * (large_params - small_params) * tokens_per_query / inference_ratio)
  return allowance / small_flops_per_generation


def accuracy_at(curve: dict[int, float], budget: float) -> tuple[float | None, str]:
  """Accuracy at `budget` generations, linear in log2 budget between grid points.

  Returns:
    (accuracy, note): note is "" inside the grid, "capped" above it (the
    largest budget's accuracy), "below grid" under one generation (None).
  """
  budgets = sorted(curve)
  if budget < budgets[0]:
    return None, "below grid"
  if budget >= budgets[-1]:
    return curve[budgets[-1]], "" if budget == budgets[-1] else "capped"
  for low, high in zip(budgets, budgets[1:], strict=False):
    if low <= budget <= high:
      t = (math.log2(budget) - math.log2(low)) / (math.log2(high) - math.log2(low))
      return curve[low] + t * (curve[high] - curve[low]), ""
  raise AssertionError("unreachable")


def flops_matched_table(*, small_params: int, large_params: int, large_correct: np.ndarray,
                        large_flops: float, tokens_per_query: float,
                        small_per_generation: float, bins: np.ndarray,
                        budgets: dict, inference_ratios) -> dict:
  """The small policy with compute-optimal test-time compute against the
  larger policy's greedy answers, per oracle bin and inference ratio R.

  Args:
    large_correct: bool [Q], the larger policy's greedy answers graded.
    large_flops: its mean FLOPs per query; tokens_per_query: prompt + answer.
    small_per_generation: the small policy's mean FLOPs per generation.
    bins: int [Q], oracle bins.
    budgets: `select.json`'s oracle/both budgets ({G: {"per_bin": ...}}).

  Returns:
    `flops_matched.json`: the parameter counts, the larger policy's accuracy
    and FLOPs, and per R the multipliers k and, per bin, who wins at k.
  """
  result = {"params": {"small": small_params, "large": large_params,
                       "ratio": large_params / small_params},
            "large_greedy_accuracy": float(large_correct.mean()),
            "large_flops_per_query": large_flops, "tokens_per_query": tokens_per_query,
            "small_flops_per_generation": small_per_generation, "ratios": {}}
  for r in inference_ratios:
    multipliers = {
        "paper": budget_multiplier(large_params / small_params, r),
        "paper_with_verifier": budget_multiplier(large_params / small_params, r,
                                                 count_verifier=True),
        "exact": exact_multiplier(small_params, large_params, r, large_flops,
                                  tokens_per_query, small_per_generation)}
    per_bin = {}
    for b in sorted(np.unique(bins).tolist()):
      curve = {int(g): v["per_bin"][str(b)]["accuracy"] for g, v in budgets.items()}
      large_accuracy = float(large_correct[bins == b].mean())
      verdicts = {}
      for name, k in multipliers.items():
        small_accuracy, note = accuracy_at(curve, k)
        verdicts[name] = {
            "budget": k, "small_accuracy": small_accuracy, "note": note,
            "small_wins": None if small_accuracy is None else small_accuracy > large_accuracy}
      per_bin[int(b)] = {"large_accuracy": large_accuracy, **verdicts}
    result["ratios"][str(r)] = {"multipliers": multipliers, "per_bin": per_bin}
  return result
