"""The `eval_prm` evaluation, from scores already computed: step AUC against
exact labels, calibration, accuracy vs N of the answer selectors on one pool,
and what search needs (right vs wrong sibling steps after one prefix)."""

from __future__ import annotations

import numpy as np

from ttscale.scaling import verifier_quality
from ttscale.search import select
from ttscale.tasks.base import Task


def selection_methods(aggregations, search_aggregation: str
                      ) -> list[verifier_quality.Method]:
  """The selectors compared on the pool: PRM weighted best-of-N per step
  aggregation, PRM best-of-N with the search's, the ORM's, majority, pass@N."""
  methods = [verifier_quality.Method(f"PRM weighted best-of-N ({how})",
                                     "weighted_best_of_n", f"prm_{how}")
             for how in aggregations]
  return methods + [
      verifier_quality.Method(f"PRM best-of-N ({search_aggregation})", "best_of_n",
                              f"prm_{search_aggregation}"),
      verifier_quality.Method("ORM weighted best-of-N", "weighted_best_of_n", "orm"),
      verifier_quality.Method("ORM best-of-N", "best_of_n", "orm"),
      verifier_quality.Method("majority vote", "majority", None),
      verifier_quality.Method("pass@N", "pass_at_n", None),
  ]


def evaluate(records: list[dict], texts: list[str], step_scores: dict[str, np.ndarray],
             mask: np.ndarray, calibration: tuple[np.ndarray, np.ndarray], task: Task,
             eval_config, search_aggregation: str, seed: int) -> dict:
  """The `eval_prm.json` result.

  Args:
    records: the pool's labelled solutions (question-major, `pool_size` per
      question) with exact labels.
    texts: their decoded texts.
    step_scores: {"prm", "orm"}: float [len(records), S], score at each step end.
    mask: bool [len(records), S], the steps that exist.
    calibration: (PRM predictions, Monte-Carlo targets) of held-out steps.
    eval_config: the `eval_prm` block.
  """
  e = eval_config
  num_questions = len(records) // e.pool_size
  exact = np.zeros(mask.shape, bool)
  for row, record in enumerate(records):
    labels = record["exact_labels"] or ()  # None: the task has no exact labels
    exact[row, :len(labels)] = labels
  # Undefined (None) when every step has the same label, as with an untrained policy.
  both_classes = 0 < exact[mask].sum() < mask.sum()
  step_auc = {name: verifier_quality.roc_auc(steps[mask], exact[mask]) if both_classes
              else None for name, steps in step_scores.items()}

  predictions, targets = calibration
  reliability = verifier_quality.reliability_table(predictions, targets, e.calibration_bins)
  ece = verifier_quality.expected_calibration_error(predictions, targets, e.calibration_bins)

  answers = [task.extract_answer(t) for t in texts]
  shape = (num_questions, e.pool_size)
  ids, valid = select.answer_ids([answers[q * e.pool_size:(q + 1) * e.pool_size]
                                  for q in range(num_questions)])
  correct = np.array([r["correct"] for r in records]).reshape(shape)
  scores = {f"prm_{how}": np.asarray(select.aggregate_steps(step_scores["prm"], mask, how)
                                     ).reshape(shape)
            for how in e.aggregations}
  scores["orm"] = np.asarray(select.aggregate_steps(step_scores["orm"], mask, "last")
                             ).reshape(shape)
  samples = verifier_quality.SamplePool(answer_ids=ids, valid=valid, correct=correct,
                                        scores=scores)
  errors = scores_by_first_error(task, records, texts,
                                 scores[f"prm_{search_aggregation}"].reshape(-1))
  budgets = [2 ** i for i in range(int(np.log2(e.pool_size)) + 1)]
  curves = verifier_quality.accuracy_vs_n(
      samples, selection_methods(e.aggregations, search_aggregation), budgets, e.num_draws,
      seed + 7)
  siblings = ({name: sibling_quality(records, steps, e.sibling_width, e.num_draws, seed + 8)
               for name, steps in step_scores.items()}
              if both_classes else None)
  return {
      "num_questions": num_questions, "pool_size": e.pool_size, "num_draws": e.num_draws,
      "step_auc_vs_exact": step_auc, "siblings": siblings,
      "search_aggregation": search_aggregation,
      "prm_score_by_first_error": errors,
      "num_steps_scored": int(mask.sum()),
      "calibration": {"ece": ece, "num_steps": int(predictions.size),
                      "reliability": reliability},
      "accuracy_vs_n": curves,
  }


def scores_by_first_error(task: Task, records: list[dict], texts: list[str],
                          scores: np.ndarray) -> dict | None:
  """{kind: {"count", "mean_score"}} of the PRM's solution scores by the kind of
  each solution's first error ("right" without one), for tasks that name
  them (`first_error`); None otherwise."""
  if not hasattr(task, "first_error"):
    return None
  by_kind: dict[str, list[float]] = {}
  for record, text, score in zip(records, texts, scores, strict=True):
    kind = task.first_error(record["question"], text) or "right"
    by_kind.setdefault(kind, []).append(float(score))
  return {kind: {"count": len(values), "mean_score": float(np.mean(values))}
          for kind, values in sorted(by_kind.items())}


def sibling_quality(records: list[dict], step_scores: np.ndarray, width: int,
                    num_draws: int, seed: int) -> dict:
  """Sibling AUC and top-of-M accuracy of one verifier's step scores.

  Args:
    records: labelled solutions (`labelled_records`) with exact labels.
    step_scores: float [len(records), S], the verifier's score at each step end.
    width: M, the siblings one beam-search round chooses among.
  """
  solutions = []
  for row, record in enumerate(records):
    ends = record["step_ends"]
    starts = [0] + [end + 1 for end in ends[:-1]]
    steps = [tuple(record["tokens"][a:b + 1]) for a, b in zip(starts, ends, strict=True)]
    labels = list(record["exact_labels"] or ())[:len(steps)]
    solutions.append(verifier_quality.ScoredSolution(
        record["question_index"], steps[:len(labels)], labels,
        step_scores[row, :len(labels)].tolist()))
  groups = verifier_quality.sibling_groups(solutions)
  return {**verifier_quality.sibling_auc(groups),
          "top_of_m": verifier_quality.top_of_m(groups, width, num_draws, seed)}
