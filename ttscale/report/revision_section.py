"""The report's revisions section: attempt by attempt, sequential against
parallel per difficulty bin, and the revision verifier against the base PRM.

`results` gathers the numbers (all in `results.json`), `markdown` writes them.
"""

from __future__ import annotations

import collections
import re

import numpy as np

from ttscale.report.search_checks_section import interval_text
from ttscale.scaling.search_checks import mean_interval

_PARAMS = re.compile(r"s=(\d+),p=(\d+),select=hierarchical")


def _fmt(value, digits: int = 3) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def splits_by_bin(rows: list[dict], bins: dict[int, int]) -> dict:
  """At the largest revision budget N, per oracle bin: the accuracy of every
  s:p split (hierarchical selection by the revision verifier), the best
  split, and sequential (s = N) against parallel (s = 1).

  Returns:
    {"budget": N, "bins": {bin: {"splits": {"s:p": accuracy}, "best": "s:p",
    "sequential", "parallel"}}}, or None without revision rows.
  """
  revision = [r for r in rows if r["method"] == "revisions" and _PARAMS.fullmatch(r["params"])]
  if not revision:
    return None
  budget = max(r["budget"] for r in revision)
  correct = collections.defaultdict(list)
  for row in revision:
    if row["budget"] == budget and row["question_index"] in bins:
      s, p = _PARAMS.fullmatch(row["params"]).groups()
      correct[(bins[row["question_index"]], f"{s}:{p}")].append(row["correct"])
  per_bin = {}
  for b in sorted({b for b, _ in correct}):
    splits = {split: float(np.mean(v)) for (bb, split), v in correct.items() if bb == b}
    # Ties go to the more parallel split (fewer sequential steps to wait for).
    best = max(splits, key=lambda split: (splits[split], -int(split.split(":")[0])))
    per_bin[b] = {"splits": splits, "best": best, "sequential": splits.get(f"{budget}:1"),
                  "parallel": splits.get(f"1:{budget}")}
  return {"budget": budget, "bins": per_bin}


def first_attempt_vs_policy(first_attempts: dict | None, policy_pass_at_1: dict[int, float],
                            seed: int = 0) -> dict | None:
  """The revision model's first-attempt pass@1 against the policy's, on the
  questions both were measured on, with a paired bootstrap interval.

  Args:
    first_attempts: `attempts.json`'s "first_attempts"
      (`revision_analysis.first_attempt_pass_at_1`), or None.
    policy_pass_at_1: {question: the policy's pass@1} (the difficulty stage's).

  Returns:
    {"num_questions", "first_attempt", "policy", "difference" (first attempt
    minus policy), "interval", "first_attempts_per_question" (mean)}, or None
    without a common question.
  """
  if not first_attempts:
    return None
  pairs = [(p, policy_pass_at_1[q], n) for q, p, n in zip(
      first_attempts["questions"], first_attempts["pass_at_1"], first_attempts["samples"],
      strict=True) if q in policy_pass_at_1]
  if not pairs:
    return None
  revision, policy, samples = (np.array(v, np.float64) for v in zip(*pairs, strict=True))
  return {"num_questions": len(pairs), "first_attempt": float(revision.mean()),
          "policy": float(policy.mean()), "difference": float((revision - policy).mean()),
          "interval": mean_interval(revision - policy, seed),
          "first_attempts_per_question": float(samples.mean())}


def results(rows: list[dict], bins: dict[int, int], attempts: dict | None,
            revision_verifier: dict | None, policy_one_sample: float | None,
            first_attempt: float | None, policy_pass_at_1: dict[int, float] | None = None
            ) -> dict:
  """The section's numbers: `attempts` is `revisions/attempts.json` and
  `revision_verifier` the `train_revision_verifier` stage's summary (None
  when not run); one policy sample's and the revision model's first
  attempt's accuracy; `policy_pass_at_1` {question: the policy's pass@1}
  for `first_attempt_vs_policy`."""
  return {
      "policy_one_sample": policy_one_sample,
      "first_attempt": first_attempt,
      "first_attempt_vs_policy": first_attempt_vs_policy(
          (attempts or {}).get("first_attempts"), policy_pass_at_1 or {}),
      "attempts": attempts,
      "splits_by_bin": splits_by_bin(rows, bins),
      "verifier": None if revision_verifier is None else {
          "auc": revision_verifier.get("heldout_outcome_auc"),
          "advantage": revision_verifier.get("heldout_auc_advantage")},
  }


def _first_error_table(shares: dict | None) -> list[str]:
  """How the same chains' attempts go wrong, by the task's kind of first
  error (`revision_analysis.first_error_shares`); nothing without them."""
  if not shares:
    return []
  attempts = len(next(iter(shares.values())))
  return ["", "The first wrong step of each attempt of these chains, by kind (share of "
          "the chains; \"operands\": a step that does not apply the question's next "
          "operation to the running value; \"slip\": the right operation, a wrong "
          "result):", "",
          "| first error | " + " | ".join(str(k + 1) for k in range(attempts)) + " |",
          "|---|" + "---|" * attempts,
          # Largest total share first (results.json keeps the kinds sorted by name).
          *(f"| {kind} | " + " | ".join(_fmt(v, 2) for v in shares[kind]) + " |"
            for kind in sorted(shares, key=lambda kind: (-sum(shares[kind]), kind)))]


def markdown(section: dict) -> list[str]:
  lines = ["## Revisions (Figs. 6 and 7)", "", "![](fig6_7_revisions.png)", "",
           f"First attempt of the revision model: {_fmt(section['first_attempt'])} of the "
           f"questions; one policy sample: {_fmt(section['policy_one_sample'])}."]
  versus = section.get("first_attempt_vs_policy")
  if versus:
    lines += ["", f"Pass@1 on the same {versus['num_questions']} questions, from every "
              f"chain's first attempt ({versus['first_attempts_per_question']:.0f} a question "
              "on average) and the difficulty stage's policy samples: revision model "
              f"{_fmt(versus['first_attempt'])}, policy {_fmt(versus['policy'])}; difference "
              f"{interval_text(versus['difference'], versus['interval'])}."]
  attempts = section["attempts"] or {}
  longest = attempts.get("longest_chains")
  if longest:
    gain = longest["gain"]
    lines += ["", "![](fig6_attempts.png)", "",
              f"Accuracy of each attempt of the {len(longest['accuracy'])}-attempt chains "
              f"({longest['num_questions']} questions, {longest['num_chains']} chain each; "
              "95% interval over questions):", "",
              "| attempt | " + " | ".join(str(k + 1) for k in range(len(longest["accuracy"])))
              + " |", "|---|" + "---|" * len(longest["accuracy"]),
              "| accuracy | " + " | ".join(_fmt(a) for a in longest["accuracy"]) + " |",
              "| interval | " + " | ".join(f"{_fmt(lo, 2)}–{_fmt(hi, 2)}"
                                          for lo, hi in longest["interval"]) + " |", "",
              f"Attempt {gain['attempt']} − attempt 1 of the same chains: "
              f"{interval_text(gain['gain'], gain['interval'])}."]
    lines += _first_error_table(longest.get("first_errors"))
  turned = attempts.get("transitions")
  if turned:
    c2i, i2c = turned["correct_to_incorrect"], turned["incorrect_to_correct"]
    lines += ["", f"Over every chain of the sweep, a correct attempt was revised into an "
              f"incorrect one {c2i['count']} of {c2i['of']} times ({_fmt(c2i['rate'])}; "
              f"paper: about 0.38), an incorrect one into a correct one {i2c['count']} of "
              f"{i2c['of']} times ({_fmt(i2c['rate'])})."]
    fresh = attempts.get("fresh_baseline")
    if fresh:
      lines += ["", "A fresh first attempt of the revision model on the same questions, "
                "in place of each revision, would have been right "
                f"{_fmt(fresh['after_correct'])} of the time after a correct attempt "
                f"(revising kept {_fmt(None if c2i['rate'] is None else 1 - c2i['rate'])}) "
                f"and {_fmt(fresh['after_incorrect'])} after an incorrect one (revising "
                f"fixed {_fmt(i2c['rate'])})."]
  by_bin = section["splits_by_bin"]
  if by_bin:
    n = by_bin["budget"]
    lines += ["", f"Sequential against parallel per oracle bin at N={n} (hierarchical "
              "selection by the revision verifier; s:p = sequential attempts : chains):", "",
              "| bin | best s:p | its accuracy | sequential (s=N) | parallel (p=N) |",
              "|---|---|---|---|---|"]
    for b, v in by_bin["bins"].items():
      lines.append(f"| {b} | {v['best']} | {_fmt(v['splits'][v['best']])} | "
                   f"{_fmt(v['sequential'])} | {_fmt(v['parallel'])} |")
  verifier = section["verifier"]
  if verifier and verifier.get("auc"):
    advantage = verifier.get("advantage")
    lines += ["", "Held-out outcome AUC of revision attempts: revision verifier "
              f"{_fmt(verifier['auc'].get('revision_verifier'))}, base PRM "
              f"{_fmt(verifier['auc'].get('base_prm'))}"
              + (f"; difference {interval_text(advantage['difference'], advantage['interval'])}"
                 f" over {advantage['num_questions']} held-out questions" if advantage else "")
              + "."]
  return lines
