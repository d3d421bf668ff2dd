"""Checks that say whether search works, from the outcome table alone (numpy).

- `bin_accuracy`: a strategy's accuracy on a set of difficulty bins, with a
  bootstrap interval over questions.
- `paired_gap`: strategy A minus strategy B on the same questions, with a
  paired bootstrap interval (the same resampled questions for both).
- `engine_check`: with the exact verifier (a perfect PRM), tree search must
  beat best-of-N on the hardest questions; a gap that does not appear there
  is a defect of the engine, not of the method. The same comparison with the
  learned PRM shows what the learned verifier keeps of it. With the policy's
  per-step success rates it also says what the exact-verifier rows should
  score (`perfect_search`), so the check compares the engine with a number,
  not only with best-of-N.
- `distinct_prefixes`: how many distinct prefixes tree search kept per round.
"""

from __future__ import annotations

import collections

import numpy as np

from ttscale.scaling.compute_optimal import percentile_interval


def _correct_by_question(rows: list[dict], method: str, params: str, budget: int
                         ) -> dict[int, bool]:
  return {r["question_index"]: bool(r["correct"]) for r in rows
          if r["method"] == method and r["params"] == params and r["budget"] == budget}


def _resamples(num_questions: int, seed: int, num_resamples: int = 1000) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, num_questions,
                                              (num_resamples, num_questions))


def mean_interval(per_question, seed: int = 0) -> list[float | None]:
  """A 95% percentile-bootstrap interval of a mean over questions ([Q] values)."""
  values = np.asarray(per_question, np.float64)
  if values.size == 0:
    raise ValueError("mean_interval: no questions")
  return percentile_interval(values[_resamples(len(values), seed)].mean(axis=1))


def bin_accuracy(rows: list[dict], bins: dict[int, int], keep_bins: set[int], method: str,
                 params: str, budget: int, seed: int = 0) -> dict | None:
  """{"accuracy", "interval", "num_questions"} of a strategy on the questions
  of `keep_bins` ({question: bin}); None without rows for all of them."""
  correct = _correct_by_question(rows, method, params, budget)
  questions = [q for q, b in bins.items() if b in keep_bins]
  if not questions or any(q not in correct for q in questions):
    return None
  values = np.array([correct[q] for q in questions], np.float64)
  return {"accuracy": float(values.mean()), "interval": mean_interval(values, seed),
          "num_questions": len(values)}


def paired_gap(rows: list[dict], bins: dict[int, int], keep_bins: set[int],
               first: tuple[str, str, int], second: tuple[str, str, int],
               seed: int = 0) -> dict | None:
  """`first` minus `second` ((method, params, budget) each) in accuracy on the
  questions of `keep_bins`, with a paired bootstrap interval; None without
  rows for every such question."""
  a, b = _correct_by_question(rows, *first), _correct_by_question(rows, *second)
  questions = [q for q, binned in bins.items() if binned in keep_bins]
  if not questions or any(q not in a or q not in b for q in questions):
    return None
  difference = np.array([float(a[q]) - float(b[q]) for q in questions])
  return {"gap": float(difference.mean()), "interval": mean_interval(difference, seed),
          "num_questions": len(questions)}


def perfect_search(step_rates, num_subtrees: int, width: int) -> float:
  """The accuracy of search with a perfect step verifier on one question.

  `num_subtrees` independent subtrees each keep one beam and expand it `width`
  times per step; a subtree succeeds when at every step at least one of its
  `width` samples is right, and the question is solved when a subtree
  succeeds. Best-of-N is N subtrees of width 1, beam search with N = M one
  subtree of width M, DVTS N/M subtrees of width M. Exact when the right
  step after a right prefix is unique (the embedded task) and labels are a
  prefix property (a wrong step is never undone).

  Args:
    step_rates: [steps] the policy's chance of writing each step right after
      the right prefix (`search.step_success.step_success_rates`).
  """
  rates = np.asarray(step_rates, np.float64)
  subtree = np.prod(1.0 - (1.0 - rates) ** width)
  return float(1.0 - (1.0 - subtree) ** num_subtrees)


def _perfect_shape(name: str, budget: int) -> tuple[int, int] | None:
  """(num_subtrees, width) of an engine-check strategy ("beam M=4,k=0") at
  budget N, when `perfect_search` covers it: every subtree keeps one beam."""
  if name == "best_of_n":
    return budget, 1
  method, params = name.split(" ")
  width = int(dict(p.split("=") for p in params.split(","))["M"])
  if method == "dvts" or (method == "beam" and width == budget):
    return budget // width, width
  return None


def engine_check(rows: list[dict], bins: dict[int, int], budget: int = 4, seed: int = 0,
                 step_rates: dict[int, list[float]] | None = None) -> dict:
  """Tree search against weighted best-of-N at one budget on the two hardest
  oracle bins, with the exact verifier and with the learned PRM.

  Args:
    step_rates: {question: per-step success rates}; when it covers the
      questions checked, each exact-verifier strategy that `perfect_search`
      covers also gets "predicted", its expected accuracy.

  Returns:
    {"bins": [the two hardest], "budget": N, verifier: {strategy: {"accuracy",
    "interval", "gap_to_best_of_n": {"gap", "interval"}, "predicted"}}} for
    the verifiers and strategies with rows (beam M=4, DVTS, lookahead k=3
    M=4, best-of-N).
  """
  hardest = set(sorted(set(bins.values()))[-2:])
  result = {"bins": sorted(hardest), "budget": budget}
  for verifier, suffix in (("exact", ",verifier=exact"), ("prm", "")):
    baseline = ("best_of_n", suffix.lstrip(","), budget)
    strategies = {"best_of_n": baseline}
    for method, params in (("beam", "M=4,k=0"), ("lookahead", "M=4,k=3"),
                           ("dvts", "M=2,k=0"), ("dvts", "M=4,k=0")):
      strategies[f"{method} {params}"] = (method, params + suffix, budget)
    checked = {}
    for name, key in strategies.items():
      accuracy = bin_accuracy(rows, bins, hardest, *key, seed=seed)
      if accuracy is None:
        continue
      if name != "best_of_n":
        accuracy["gap_to_best_of_n"] = paired_gap(rows, bins, hardest, key, baseline, seed)
      shape = _perfect_shape(name, budget)
      questions = [q for q, b in bins.items() if b in hardest]
      if (verifier == "exact" and shape and step_rates
          and all(q in step_rates for q in questions)):
        accuracy["predicted"] = float(np.mean(
            [perfect_search(step_rates[q], *shape) for q in questions]))
      checked[name] = accuracy
    if checked:
      result[verifier] = checked
  return result


def distinct_prefixes(rows: list[dict]) -> dict[str, dict[int, float]]:
  """{"method params": {N: mean over questions of the distinct live prefixes
  kept per round}} for the tree-search rows."""
  values = collections.defaultdict(list)
  for row in rows:
    if row.get("distinct_prefixes") is not None:
      values[(f"{row['method']} {row['params']}", row["budget"])].append(
          row["distinct_prefixes"])
  result = collections.defaultdict(dict)
  for (name, budget), per_question in sorted(values.items(), key=lambda kv: kv[0][1]):
    result[name][budget] = round(float(np.mean(per_question)), 3)
  return dict(result)


def accuracy_curves(rows: list[dict]) -> dict[str, dict[int, float]]:
  """{"method params": {budget: mean correctness}} of search rows, budgets
  ascending, rounded to 4 places (the sweep's summary)."""
  accuracy = collections.defaultdict(list)
  for row in rows:
    accuracy[(row["method"], row["params"], row["budget"])].append(row["correct"])
  curves = {f"{m} {p}".strip(): {} for m, p, _ in accuracy}
  for (m, p, n), values in sorted(accuracy.items(), key=lambda kv: kv[0][2]):
    curves[f"{m} {p}".strip()][n] = round(float(np.mean(values)), 4)
  return curves
