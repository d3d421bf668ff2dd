"""The report's "Does search work?" section: the engine check with the exact
verifier, the learned verifier's sibling checks, and search's diversity.

`results` gathers the numbers (all in `results.json`), `markdown` writes them.
"""

from __future__ import annotations

from ttscale.scaling import search_checks


def _fmt(value, digits: int = 3) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def interval_text(value, interval, digits: int = 3) -> str:
  """"0.650 [0.580, 0.715]"; an open upper bound (None) reads "above the grid"."""
  if value is None and not interval:
    return "n/a"
  low, high = interval or (None, None)
  high_text = "above the grid" if high is None else _fmt(high, digits)
  return f"{_fmt(value, digits)} [{_fmt(low, digits)}, {high_text}]"


def results(rows: list[dict], bins: dict[int, int], eval_prm: dict | None,
            seed: int = 0, step_rates: dict[int, list[float]] | None = None) -> dict:
  """The section's numbers from the outcome rows, the oracle bins
  ({question: bin}), `eval_prm.json` (None when not run) and the policy's
  per-step success rates ({question: [steps]}, from `difficulty.json`)."""
  curves = (eval_prm or {}).get("accuracy_vs_n", {})
  aggregation = (eval_prm or {}).get("search_aggregation", "last")
  best_of_n = curves.get(f"PRM best-of-N ({aggregation})", {})
  budgets = sorted(best_of_n, key=int)
  return {
      "engine": search_checks.engine_check(rows, bins, budget=4, seed=seed,
                                           step_rates=step_rates),
      "siblings": (eval_prm or {}).get("siblings"),
      "prm_best_of_n": ({"n_1": best_of_n[budgets[0]][0], "n_max": best_of_n[budgets[-1]][0],
                         "max_budget": int(budgets[-1]), "aggregation": aggregation}
                        if budgets else None),
      "distinct_prefixes": search_checks.distinct_prefixes(rows),
  }


def markdown(checks: dict) -> list[str]:
  engine = checks["engine"]
  lines = ["## Does search work? (engine, verifier, diversity)", "",
           f"N = {engine['budget']}, the two hardest oracle bins ({engine['bins']}); "
           "accuracy with a 95% bootstrap interval over questions, and the paired gap to "
           "weighted best-of-N with the same verifier. With the exact verifier (a perfect "
           "PRM: the task's exact step labels) tree search must beat best-of-N here, or "
           "the engine is wrong; with the learned PRM the gap shows what the learned "
           "verifier keeps of it. \"Perfect search\" is what the exact verifier's rows "
           "should score given how often the policy writes each step right after the "
           "right prefix (`difficulty.step_success_samples` samples per step): an engine "
           "that matches it does all a perfect verifier allows, and a small gap to "
           "best-of-N there is the policy's, not the engine's.", "",
           "| verifier | strategy | accuracy | gap to best-of-N | perfect search |",
           "|---|---|---|---|---|"]
  for verifier in ("exact", "prm"):
    for name, value in engine.get(verifier, {}).items():
      gap = value.get("gap_to_best_of_n")
      lines.append(f"| {verifier} | {name} | "
                   f"{interval_text(value['accuracy'], value['interval'])} | "
                   f"{interval_text(gap['gap'], gap['interval']) if gap else '—'} | "
                   f"{_fmt(value['predicted']) if 'predicted' in value else '—'} |")
  siblings = checks["siblings"]
  if siblings:
    lines += ["", "Verifier checks on right vs wrong sibling steps after one prefix "
              "(`eval_prm`): the sibling AUC is the chance that a right step scores above "
              "a wrong sibling; top-of-M is how often the top-scored of M sampled siblings "
              "is right (all draws / draws that hold both a right and a wrong step), against "
              "a random sibling.", "",
              "| verifier | sibling AUC (pairs) | top of M | random of M | top (mixed) | "
              "random (mixed) |", "|---|---|---|---|---|---|"]
    for name, quality in siblings.items():
      top = quality["top_of_m"]
      lines.append(f"| {name.upper()} | {_fmt(quality['auc'])} ({quality['num_pairs']}) | "
                   f"{_fmt(top['top'])} (M={top['m']}) | {_fmt(top['random'])} | "
                   f"{_fmt(top['top_mixed'])} | {_fmt(top['random_mixed'])} |")
  bon = checks["prm_best_of_n"]
  if bon:
    lines += ["", f"PRM best-of-N (the single top-scored sample, step scores by "
              f"{bon['aggregation']}): {_fmt(bon['n_1'])} at N=1, "
              f"{_fmt(bon['n_max'])} at N={bon['max_budget']}."]
  diversity = checks["distinct_prefixes"]
  if diversity:
    budgets = sorted({n for by in diversity.values() for n in by})
    lines += ["", "Distinct prefixes kept per round (mean over questions and rounds; beam "
              "search keeps N/M beams, DVTS one per subtree):", "",
              "| strategy | " + " | ".join(f"N={n}" for n in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for name, by in diversity.items():
      lines.append(f"| {name} | " + " | ".join(_fmt(by.get(n), 2) if n in by else ""
                                              for n in budgets) + " |")
  return lines
