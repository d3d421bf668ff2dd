"""Compute-optimal strategy selection per difficulty bin (paper §3.2), in numpy.

At a generation budget G, a strategy is a (method, hyperparameters) pair with
rows in the outcome table at `generations == G` (lookahead's generations
count its rollouts, N·(k+1), as in the paper). Within each difficulty bin the
strategy is chosen by two-fold cross-validation: the bin's questions are split
in two halves, the strategy with the best accuracy on one half is scored on
the other, and the other way round; the bin's accuracy is the sum of both
scores over the bin's questions. A question is never scored by a choice made
on it.

The efficiency ratio compares with best-of-N: the budget best-of-N needs to
reach compute-optimal's accuracy at G, interpolated linearly in log2 budget
between grid points, over G.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np

BASELINE = ("best_of_n", "")


@dataclasses.dataclass(frozen=True)
class Choice:
  accuracy: float            # cross-validated accuracy over the questions given
  chosen: tuple[str, ...]    # the strategy chosen on each fold (names)
  # bool [questions]: each question's correctness under the strategy chosen
  # on the other fold (its mean is `accuracy`).
  correct: np.ndarray | None = None


def strategy_name(method: str, params: str) -> str:
  return f"{method} {params}".strip()


def correctness_by_strategy(rows: list[dict], questions: list[int]
                            ) -> dict[int, dict[str, np.ndarray]]:
  """{generations: {strategy: bool [len(questions)]}} for strategies with a row
  for every question given.

  Raises:
    ValueError: a strategy has rows for some of the questions at a budget but
      not all (names the strategy, the budget and a missing question).
  """
  position = {q: i for i, q in enumerate(questions)}
  seen = collections.defaultdict(dict)
  for row in rows:
    if row["question_index"] in position:
      key = (row["generations"], strategy_name(row["method"], row["params"]))
      seen[key][row["question_index"]] = bool(row["correct"])
  table = collections.defaultdict(dict)
  for (generations, name), answers in sorted(seen.items()):
    missing = [q for q in questions if q not in answers]
    if missing:
      raise ValueError(f"outcome table: {name!r} at {generations} generations has no row "
                       f"for question {missing[0]} ({len(missing)} of {len(questions)} "
                       "missing); re-run its sweep")
    table[generations][name] = np.array([answers[q] for q in questions])
  return dict(table)


def two_fold_choice(correct: dict[str, np.ndarray], folds: np.ndarray,
                    prefer: str | None = None) -> Choice:
  """Chooses on one fold, scores on the other, both ways.

  Args:
    correct: {strategy: bool [questions]}; ties go to `prefer`, then to the
      first name in sorted order.
    folds: int [questions] in {0, 1}.
  """
  names = sorted(correct, key=lambda name: (name != prefer, name))
  matrix = np.stack([correct[n] for n in names]).astype(np.float64)  # [S, Q]
  folds = np.asarray(folds)
  chosen, scored = [], np.zeros(matrix.shape[1], bool)
  for fold in (0, 1):
    pick = folds == fold
    if not pick.any() or pick.all():
      raise ValueError("two-fold cross-validation needs questions in both folds")
    best = int(np.argmax(matrix[:, pick].mean(axis=1)))
    chosen.append(names[best])
    scored[~pick] = matrix[best, ~pick] > 0
  return Choice(accuracy=float(scored.mean()), chosen=tuple(chosen), correct=scored)


def balanced_folds(bins: np.ndarray, seed: int) -> np.ndarray:
  """int [questions] in {0, 1}: each bin's questions split in halves at random."""
  bins = np.asarray(bins)
  folds = np.zeros(bins.shape, np.int64)
  rng = np.random.default_rng(seed)
  for b in np.unique(bins):
    members = np.flatnonzero(bins == b)
    folds[rng.permutation(members)[len(members) // 2:]] = 1
  return folds


def matching_budget(target: float, curve: dict[int, float]) -> float | None:
  """The smallest budget at which `curve` ({budget: accuracy}) reaches `target`.

  Linear in log2 budget between grid points; the first grid point if it
  already reaches it; None if no budget on the grid does.
  """
  budgets = sorted(curve)
  if curve[budgets[0]] >= target:
    return float(budgets[0])
  for low, high in zip(budgets, budgets[1:], strict=False):
    a, b = curve[low], curve[high]
    if a < target <= b:
      t = (target - a) / (b - a)
      return float(2 ** (math.log2(low) + t * (math.log2(high) - math.log2(low))))
  return None


def compute_optimal(rows: list[dict], questions: list[int], bins: np.ndarray, seed: int,
                    strategies=None, baseline=None) -> dict:
  """Compute-optimal accuracy per budget, by bin and overall, against best-of-N
  (or another baseline).

  Args:
    rows: outcome-table rows (search and/or revisions).
    questions: the question indices studied; bins: int [len(questions)].
    strategies: a predicate on the strategy name choosing the family (None: all).
    baseline: budget -> the baseline's strategy name at that budget (None:
      weighted best-of-N, `BASELINE`); the result's "best_of_n" fields are
      this baseline's, and "baseline" names it at budget 1.

  Returns:
    {"budgets": {G: {"accuracy", "best_of_n", "per_bin": {bin: {"accuracy",
    "best_of_n", "chosen"}}, "best_of_n_budget_to_match", "efficiency_ratio"}}}.

  Raises:
    ValueError: best-of-N lacks a budget of the grid, or a strategy lacks rows.
  """
  table = correctness_by_strategy(rows, questions)
  baseline_at = baseline or (lambda _: strategy_name(*BASELINE))
  bon_budgets = sorted(g for g, by_name in table.items() if baseline_at(g) in by_name)
  if not bon_budgets:
    raise ValueError(f"outcome table: no {baseline_at(1)} rows for the questions "
                     "studied; run its sweep first")
  bon_curve = {g: float(table[g][baseline_at(g)].mean()) for g in bon_budgets}
  bins = np.asarray(bins)
  folds = balanced_folds(bins, seed)
  result, ratio_samples = {}, {}
  for generations in bon_budgets:
    baseline = baseline_at(generations)
    family = {n: c for n, c in table[generations].items()
              if strategies is None or strategies(n) or n == baseline}
    per_bin, correct = {}, np.zeros(len(questions), bool)
    for b in sorted(np.unique(bins).tolist()):
      members = bins == b
      if members.sum() < 2:
        choice = Choice(accuracy=float(family[baseline][members].mean()),
                        chosen=(baseline,), correct=family[baseline][members])
      else:
        # Ties go to best-of-N: on small folds strategies often tie (all right
        # on easy bins, all wrong on hard ones), and a tie is no evidence
        # against the baseline.
        choice = two_fold_choice({n: c[members] for n, c in family.items()}, folds[members],
                                 prefer=baseline)
      per_bin[int(b)] = {"accuracy": choice.accuracy, "chosen": list(choice.chosen),
                         "best_of_n": float(family[baseline][members].mean())}
      correct[members] = choice.correct
    accuracy = float(correct.mean())
    matched = matching_budget(accuracy, bon_curve)
    result[generations] = {
        "accuracy": accuracy, "best_of_n": bon_curve[generations], "per_bin": per_bin,
        "num_strategies": len(family),
        "best_of_n_budget_to_match": matched,
        "efficiency_ratio": None if matched is None else matched / generations}
    intervals, ratio_samples[generations] = bootstrap_intervals(
        correct, {g: table[g][baseline_at(g)] for g in bon_budgets}, generations, seed)
    result[generations].update(intervals)
  ratios = [math.inf if v["efficiency_ratio"] is None else v["efficiency_ratio"]
            for v in result.values()]
  # The same resamples at every budget: the median over budgets per resample.
  medians = np.median(np.stack(list(ratio_samples.values())), axis=0)
  return {"budgets": result, "best_of_n_curve": bon_curve, "baseline": baseline_at(1),
          "median_efficiency_ratio": _finite(float(np.median(ratios))),
          "median_efficiency_ratio_interval": percentile_interval(medians)}


def bootstrap_intervals(chosen_correct: np.ndarray, best_of_n: dict[int, np.ndarray],
                        generations: int, seed: int, num_resamples: int = 1000
                        ) -> tuple[dict, np.ndarray]:
  """Percentile-bootstrap intervals (95%) over questions at one budget.

  The questions are resampled with replacement; the cross-validated choices
  are held fixed (re-choosing on a resample would put copies of a question in
  both folds), so the intervals measure how much the questions studied move
  the accuracies and the efficiency ratio, given the choices made. The
  resamples depend on `seed` and the number of questions only, so every
  budget sees the same ones.

  Args:
    chosen_correct: bool [Q], each question's correctness under compute-optimal.
    best_of_n: {budget: bool [Q]} best-of-N's correctness on the grid.

  Returns:
    ({"accuracy_interval", "best_of_n_interval", "efficiency_ratio_interval"}:
    [low, high] each, a ratio bound None where best-of-N never matches on the
    grid; the efficiency ratio of every resample, float [num_resamples], inf
    where it never matches).
  """
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, len(chosen_correct), (num_resamples, len(chosen_correct)))
  accuracy = chosen_correct[picks].mean(axis=1)
  curves = {g: c[picks].mean(axis=1) for g, c in sorted(best_of_n.items())}
  ratios = np.empty(num_resamples)
  for i in range(num_resamples):
    matched = matching_budget(accuracy[i], {g: c[i] for g, c in curves.items()})
    ratios[i] = math.inf if matched is None else matched / generations
  return ({"accuracy_interval": percentile_interval(accuracy),
           "best_of_n_interval": percentile_interval(curves[generations]),
           "efficiency_ratio_interval": percentile_interval(ratios)}, ratios)


def _finite(value: float) -> float | None:
  return None if math.isinf(value) else value


def percentile_interval(values, level: float = 0.95) -> list[float | None]:
  """[low, high] percentiles of bootstrap `values` (inf: None, above the grid)."""
  tail = (1 - level) / 2 * 100
  low, high = np.percentile(np.asarray(values, np.float64), [tail, 100 - tail],
                            method="lower")
  return [_finite(float(low)), _finite(float(high))]


KINDS = ("oracle", "predicted")  # the difficulty bins selection runs on
# Family: (which strategies it may choose, None: all; its baseline at budget N,
# None: weighted best-of-N of the base policy). "revisions_vs_parallel" is
# the paper's comparison within the revision model: against its own parallel
# samples (s = 1, chosen by the revision verifier).
FAMILIES = {
    "search": (lambda name: not name.startswith("revisions"), None),
    "revisions": (lambda name: name.startswith("revisions"), None),
    "both": (None, None),
    "revisions_vs_parallel": (lambda name: name.startswith("revisions"),
                              lambda n: f"revisions s=1,p={n},select=hierarchical"),
}


def check_budgets(rows: list[dict], questions: list[int], needed: dict[str, list[int]]) -> None:
  """Raises ValueError naming a method and a budget with no row for a studied question."""
  have = {}
  for row in rows:
    have.setdefault((row["method"], row["budget"]), set()).add(row["question_index"])
  for method, budgets in needed.items():
    for budget in budgets:
      missing = set(questions) - have.get((method, budget), set())
      if missing:
        raise ValueError(f"outcome table: no {method} rows at budget N={budget} for "
                         f"{len(missing)} of the {len(questions)} studied questions (e.g. "
                         f"question {min(missing)}); run its sweep with this config")


def select_strategies(rows: list[dict], difficulty: dict, seed: int,
                      needed: dict[str, list[int]]) -> dict:
  """Compute-optimal selection per kind of bins and family (`select.json`).

  Args:
    rows: the outcome table's rows the selection may choose among.
    difficulty: `difficulty.json` ("questions", "num_bins", "<kind>_bins").
    needed: {method: budgets} that must have a row for every studied question.

  Returns:
    {"num_questions", "num_bins", kind: {family: `compute_optimal`}}.
  """
  questions = difficulty["questions"]
  check_budgets(rows, questions, needed)
  result = {"num_questions": len(questions), "num_bins": difficulty["num_bins"]}
  for kind in KINDS:
    bins = np.asarray(difficulty[f"{kind}_bins"])
    result[kind] = {family: compute_optimal(rows, questions, bins, seed, keep, baseline)
                    for family, (keep, baseline) in FAMILIES.items()}
  return result
