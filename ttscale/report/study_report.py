"""The study's report: `report.md`, its figures and `results.json`, from the workdir.

Reads only files (no model runs): the outcome tables, `difficulty.json` and
`select.json` (required), and when present `eval_policy.json`,
`eval_prm.json`, `flops_matched.json`, the revision sweep's units and the
stage markers. Every number in the report is in `results.json`. The workdir
may be a URL (`gs://...`).
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
from etils import epath

from ttscale import io_utils, layout, outcomes
from ttscale.report import (
    revision_figure,
    revision_section,
    search_checks_section,
    search_figure,
    study_figures,
)
from ttscale.report.search_checks_section import interval_text
from ttscale.scaling import search_checks

REQUIRED = (layout.SEARCH_TABLE, layout.REVISION_TABLE, layout.DIFFICULTY, layout.SELECT)
OPTIONAL = (layout.EVAL_POLICY, layout.EVAL_PRM, layout.FLOPS_MATCHED)
ATTEMPTS = layout.REVISION_ATTEMPTS  # the revision sweep's attempt-by-attempt analysis
REVISION_VERIFIER = layout.marker("train_revision_verifier")


def _read_optional(workdir: str, name: str):
  path = os.path.join(workdir, name)
  return io_utils.read_json(path) if epath.Path(path).exists() else None


def _sorted_glob(directory: str, pattern: str) -> list[str]:
  """`sorted(glob.glob(directory/pattern))`, for local and gs:// directories."""
  return sorted(str(path) for path in epath.Path(directory).glob(pattern))


def _accuracy(rows: list[dict], method: str, params: str, generations: int) -> float | None:
  values = [r["correct"] for r in rows if r["method"] == method and r["params"] == params
            and r["generations"] == generations]
  return float(np.mean(values)) if values else None


def _by_budget(budgets: dict) -> list[tuple[int, dict]]:
  """JSON keeps budgets as text keys, sorted as text: back to numeric order."""
  return sorted(((int(g), v) for g, v in budgets.items()), key=lambda item: item[0])


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return "n/a"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _findings(rows, select, attempts, flops, checks) -> list[dict]:
  """The paper's findings beside ours (`holds` None when ours cannot say)."""
  findings = []
  learned = checks["engine"].get("prm", {})
  beam_hard = learned.get("beam M=4,k=0")
  if beam_hard and beam_hard.get("gap_to_best_of_n"):
    gap = beam_hard["gap_to_best_of_n"]
    findings.append({
        "finding": f"beam search (M=4) beats best-of-N on the hardest questions at a small "
                   f"budget (N={checks['engine']['budget']}, bins {checks['engine']['bins']})",
        "paper": "beam > best-of-N on harder questions at low budgets",
        "ours": "beam − best-of-N " + interval_text(gap["gap"], gap["interval"]),
        "holds": gap["interval"][0] > 0 if gap["interval"][0] is not None else None})
  search_n = max((r["budget"] for r in rows if r["method"] == "beam"), default=None)
  if search_n:
    beam = _accuracy(rows, "beam", "M=4,k=0", search_n)
    bon = _accuracy(rows, "best_of_n", "", search_n)
    findings.append({
        "finding": f"PRM beam search (M=4) beats best-of-N at low budgets (N={search_n} here)",
        "paper": "beam > best-of-N for N ≤ 16 on MATH",
        "ours": f"beam {_fmt(beam)} vs best-of-N {_fmt(bon)}",
        "holds": None if beam is None or bon is None else beam > bon})
    look = _accuracy(rows, "lookahead", "M=4,k=3", 4 * 4)
    beam16 = _accuracy(rows, "beam", "M=4,k=0", 16)
    findings.append({
        "finding": "lookahead (k=3) underperforms beam search at equal generations",
        "paper": "lookahead worst of the search methods at equal generations",
        "ours": f"16 generations: lookahead {_fmt(look)} vs beam {_fmt(beam16)}",
        "holds": None if look is None or beam16 is None else look < beam16})
  for family, against in (("search", "best-of-N"), ("revisions", "the base policy's best-of-N"),
                          ("revisions_vs_parallel", "the revision model's parallel samples")):
    by = select["oracle"].get(family)
    if by is None:
      continue
    ratios = {g: v["efficiency_ratio"] for g, v in _by_budget(by["budgets"])}
    median = by.get("median_efficiency_ratio_interval")
    findings.append({
        "finding": f"compute-optimal {family.split('_')[0]} needs fewer generations than "
                   f"{against} for the same accuracy",
        "paper": "about 4x fewer generations",
        "ours": ("median " + interval_text(by.get("median_efficiency_ratio"), median, 2)
                 + "; baseline budget / budget: " + ", ".join(
                     f"N={g}: {_fmt(r, 2)}" for g, r in ratios.items())),
        "holds": efficiency_holds(list(ratios.values()))})
  revision_top = max((r["budget"] for r in rows if r["method"] == "revisions"), default=None)
  if revision_top:
    seq = _accuracy(rows, "revisions", f"s={revision_top},p=1,select=majority", revision_top)
    par = _accuracy(rows, "revisions", f"s=1,p={revision_top},select=majority", revision_top)
    findings.append({
        "finding": "sequential revisions beat parallel samples at equal budget",
        "paper": "sequential > parallel (MATH, N up to 128)",
        "ours": f"N={revision_top}, majority: sequential {_fmt(seq)} vs parallel {_fmt(par)}",
        "holds": None if seq is None or par is None else seq > par})
  longest = (attempts or {}).get("longest_chains")
  if longest:
    gain = longest["gain"]
    findings.append({
        "finding": f"later revisions improve on the first attempt (attempt {gain['attempt']} "
                   "vs 1, same chains)",
        "paper": "accuracy rises with the attempt number (Fig. 6, left)",
        "ours": "gain " + interval_text(gain["gain"], gain["interval"]),
        "holds": None if gain["interval"][0] is None else gain["interval"][0] > 0})
  turned = (attempts or {}).get("transitions", {}).get("correct_to_incorrect")
  if turned:
    findings.append({
        "finding": "revisions turn correct answers incorrect", "paper": "38% of the time",
        "ours": f"{turned['count']}/{turned['of']} ({_fmt(turned['rate'])})",
        "holds": None if turned["rate"] is None else turned["rate"] > 0})
  if flops:
    wins_by_ratio = {r: {b: v["paper"]["small_wins"] for b, v in by["per_bin"].items()}
                     for r, by in flops["ratios"].items()}
    for r, wins in wins_by_ratio.items():
      findings.append({
          "finding": f"R={r}: small + test-time compute beats a "
                     f"{flops['params']['ratio']:.1f}x model on easy bins, not on hard ones",
          "paper": "wins on easy/medium questions when R < 1; pretraining wins on the "
                   "hardest ones, and more often when R > 1",
          "ours": "small wins in bins " + ", ".join(
              f"{b}: {_fmt(w)}" for b, w in wins.items()),
          "holds": flops_matched_holds(float(r), wins, wins_by_ratio)})
  return findings


def efficiency_holds(ratios: list[float | None]) -> bool | None:
  """Whether compute-optimal beats best-of-N across the grid: the median
  efficiency ratio over the budgets is above 1.

  The median, not the best budget: where best-of-N's curve is flat, one
  question moves a single budget's ratio by 2x either way. None (best-of-N
  never matches compute-optimal on the grid) counts as above every ratio.
  """
  if not ratios:
    return None
  return float(np.median([np.inf if r is None else r for r in ratios])) > 1.0


def flops_matched_holds(ratio: float, wins: dict, wins_by_ratio: dict) -> bool | None:
  """The paper's FLOPs-matched finding at one R, judged on our bins.

  Fixed before looking at results, from the paper's §5: for R < 1, the small
  model with test-time compute wins on at least one of the easier half of the
  bins and loses on the hardest; for R > 1, it loses on the hardest bin and
  wins on no more bins than at the smallest R.

  Args:
    wins: {bin: small wins (bool, or None when its budget is below the grid)},
      bins easiest first; wins_by_ratio: the same for every R (text keys).
  """
  if any(w is None for w in wins.values()):
    return None
  bins = sorted(wins, key=int)
  hardest_lost = not wins[bins[-1]]
  if ratio < 1:
    return hardest_lost and any(wins[b] for b in bins[:-(-len(bins) // 2)])
  smallest = wins_by_ratio[min(wins_by_ratio, key=float)]
  if any(w is None for w in smallest.values()):
    return None
  return hardest_lost and sum(map(bool, wins.values())) <= sum(map(bool, smallest.values()))


def build(workdir: str) -> tuple[str, dict]:
  """(report markdown, results) from the workdir's files; draws the figures.

  Raises:
    ValueError: a required file is missing (names it).
  """
  for name in REQUIRED:
    if not epath.Path(os.path.join(workdir, name)).exists():
      raise ValueError(f"report: {os.path.join(workdir, name)} is missing; run the study "
                       "stages first (difficulty, sweep_search, sweep_revisions, select)")
  rows = (outcomes.read_table(os.path.join(workdir, REQUIRED[0]))
          + outcomes.read_table(os.path.join(workdir, REQUIRED[1])))
  difficulty = io_utils.read_json(os.path.join(workdir, layout.DIFFICULTY))
  select = io_utils.read_json(os.path.join(workdir, layout.SELECT))
  extra = {name: _read_optional(workdir, name) for name in OPTIONAL}
  flops = extra[layout.FLOPS_MATCHED]
  attempts = _read_optional(workdir, ATTEMPTS)
  bins = dict(zip(difficulty["questions"], difficulty["oracle_bins"], strict=True))
  # The exact verifier's rows check the engine; the figures show the study's.
  search_rows = [r for r in rows if r["method"] != "revisions"
                 and not outcomes.uses_exact_verifier(r["params"])]
  revision_rows = [r for r in rows if r["method"] == "revisions"
                   and not outcomes.uses_exact_verifier(r["params"])]
  figures = {"fig3_search.png": lambda p: search_figure.plot(search_rows, p),
             "fig3_search_by_bin.png":
                 lambda p: study_figures.search_by_bin(search_rows + revision_rows, bins, p),
             "fig4_8_compute_optimal.png":
                 lambda p: study_figures.compute_optimal_vs_best_of_n(select, p),
             "fig6_7_revisions.png": lambda p: revision_figure.plot(revision_rows, p)}
  if flops:
    figures["fig9_flops_matched.png"] = lambda p: study_figures.flops_matched_bars(flops, p)
  verifier_stage = _read_optional(workdir, REVISION_VERIFIER)
  revisions = revision_section.results(
      rows, bins, attempts, verifier_stage and verifier_stage.get("summary"),
      _accuracy(rows, "best_of_n", "", 1),
      _accuracy(rows, "revisions", "s=1,p=1,select=majority", 1),
      dict(zip(difficulty["questions"], difficulty["pass_at_1"], strict=True))
      if "pass_at_1" in difficulty else None)
  if attempts and attempts.get("longest_chains"):
    figures["fig6_attempts.png"] = lambda p: revision_figure.plot_attempts(
        attempts["longest_chains"], revisions["policy_one_sample"], p)
  for name, draw in figures.items():
    draw(os.path.join(workdir, name))
  timings, compile_timings = {}, {}
  for path in _sorted_glob(os.path.join(workdir, layout.STAGES), "*.json"):
    record = io_utils.read_json(path)
    timings[record["stage"]] = round(record["seconds"], 1)
    if "compile_seconds" in record:  # (markers written before it was measured have none)
      compile_timings[record["stage"]] = record["compile_seconds"]
  curves = collections.defaultdict(dict)
  for row in rows:
    curves[f"{row['method']} {row['params']}".strip()].setdefault(row["generations"], [])
    curves[f"{row['method']} {row['params']}".strip()][row["generations"]].append(row["correct"])
  accuracy = {name: {g: float(np.mean(v)) for g, v in sorted(by_g.items())}
              for name, by_g in curves.items()}
  accuracy_intervals = {name: {g: search_checks.mean_interval(v) for g, v in sorted(by_g.items())}
                        for name, by_g in curves.items()}
  eval_prm = extra[layout.EVAL_PRM] or {}
  step_rates = {int(q): rates for q, rates in
                difficulty.get("step_success", {}).get("rates", {}).items()}
  checks = search_checks_section.results(rows, bins, extra[layout.EVAL_PRM],
                                         step_rates=step_rates)
  findings = _findings(rows, select, attempts, flops, checks)
  context = {  # measured facts that explain the findings
      "prm_step_auc": eval_prm.get("step_auc_vs_exact", {}).get("prm"),
      "orm_step_auc": eval_prm.get("step_auc_vs_exact", {}).get("orm"),
      "policy_one_sample_accuracy": revisions["policy_one_sample"],
      "revision_first_attempt_accuracy": revisions["first_attempt"],
      "revision_first_attempt_vs_policy": revisions["first_attempt_vs_policy"]}
  results = {"accuracy_by_generations": accuracy,
             "accuracy_by_generations_interval": accuracy_intervals,
             "search_checks": checks, "select": select, "context": context,
             "difficulty": {k: difficulty[k] for k in ("num_samples", "num_bins",
                                                       "bin_agreement", "prediction_cost")},
             "revisions": revisions, "flops_matched": flops,
             "eval_policy": extra[layout.EVAL_POLICY], "eval_prm": extra[layout.EVAL_PRM],
             "findings": findings, "stage_seconds": timings,
             "stage_compile_seconds": compile_timings, "figures": sorted(figures)}
  return _markdown(results, len(difficulty["questions"])), json.loads(json.dumps(results))


def _markdown(results: dict, num_questions: int) -> str:
  lines = ["# Test-time compute study", "",
           f"{num_questions} test questions; every number below is in `results.json`.", "",
           "## The paper's findings and ours", "",
           "| paper's finding | paper's number | ours | holds? |", "|---|---|---|---|"]
  for f in results["findings"]:
    holds = {True: "yes", False: "no", None: "see text"}[f["holds"]]
    lines.append(f"| {f['finding']} | {f['paper']} | {f['ours']} | {holds} |")
  c = results["context"]
  lines += ["", "Measured context: the PRM's step ROC AUC against the task's exact step "
            f"labels is {_fmt(c['prm_step_auc'])} (ORM {_fmt(c['orm_step_auc'])}); search "
            "can only prune as well as its PRM ranks steps. One policy sample is right on "
            f"{_fmt(c['policy_one_sample_accuracy'])} of the questions, the revision model's "
            f"first attempt on {_fmt(c['revision_first_attempt_accuracy'])}"]
  versus = c.get("revision_first_attempt_vs_policy")
  if versus:  # many samples a question: the comparison that is not one draw each
    lines[-1] += (f"; as pass@1 on the same questions, {_fmt(versus['first_attempt'])} "
                  f"against {_fmt(versus['policy'])} (difference "
                  f"{interval_text(versus['difference'], versus['interval'])})")
  lines[-1] += ": revisions start from what the fine-tuning left of the policy."
  lines += [""] + search_checks_section.markdown(results["search_checks"])
  lines += ["", "## Search (Fig. 3)", "", "![](fig3_search.png)", "",
            "![](fig3_search_by_bin.png)", "",
            "| configuration | accuracy [95% interval] at each generation count |",
            "|---|---|"]
  for name, by_g in results["accuracy_by_generations"].items():
    intervals = results["accuracy_by_generations_interval"][name]
    lines.append(f"| {name} | " + ", ".join(
        f"{g}: {interval_text(a, intervals[g])}" for g, a in by_g.items()) + " |")
  lines += ["", "## Compute-optimal vs best-of-N (Figs. 4 and 8)", "",
            "![](fig4_8_compute_optimal.png)", "",
            "Efficiency ratio: the budget best-of-N needs to match compute-optimal's "
            "accuracy, over the budget (>1: compute-optimal is more efficient; n/a: "
            "best-of-N never matches it on the grid).", "",
            "| bins | family | " + " | ".join(
                f"N={g}" for g, _ in _by_budget(results["select"]["oracle"]["search"]["budgets"]))
            + " |",
            "|---|---|" + "---|" * len(results["select"]["oracle"]["search"]["budgets"])]
  for kind in ("oracle", "predicted"):
    for family, by in results["select"][kind].items():
      lines.append(f"| {kind} | {family} | " + " | ".join(
          interval_text(v["efficiency_ratio"], v.get("efficiency_ratio_interval"), 2)
          for _, v in _by_budget(by["budgets"])) + " |")
  cost = results["difficulty"]["prediction_cost"]
  lines += ["", f"Predicted bins agree with the oracle's on "
            f"{results['difficulty']['bin_agreement']:.2f} of the questions; predicting "
            f"costs {cost['generations_per_question']} generations and "
            f"{cost['policy_flops_per_question'] + cost['prm_flops_per_question']:.3g} FLOPs "
            "per question.", ""] + revision_section.markdown(results["revisions"])
  flops = results["flops_matched"]
  if flops:
    lines += ["", "## FLOPs-matched (Fig. 9)", "", "![](fig9_flops_matched.png)", "",
              f"Small policy {flops['params']['small']:,} parameters, large "
              f"{flops['params']['large']:,} ({flops['params']['ratio']:.2f}x).", "",
              "| R | multiplier (paper / with verifier / exact) | bin | large | small "
              "(paper count) | small (exact FLOPs) |", "|---|---|---|---|---|---|"]
    for r, by in flops["ratios"].items():
      m = by["multipliers"]
      for b, v in by["per_bin"].items():
        lines.append(f"| {r} | {m['paper']:.1f} / {m['paper_with_verifier']:.1f} / "
                     f"{m['exact']:.1f} | {b} | {v['large_accuracy']:.3f} | "
                     f"{_fmt(v['paper']['small_accuracy'])} {v['paper']['note']} | "
                     f"{_fmt(v['exact']['small_accuracy'])} {v['exact']['note']} |")
  else:
    lines += ["", "## FLOPs-matched", "", "Not run (stage `flops_matched`)."]
  compiling = results.get("stage_compile_seconds", {})
  lines += ["", "## Stage timings", "",
            "Seconds of wall time; of them, tracing, lowering and compiling programs "
            "(or loading them from the compilation cache).", "",
            "| stage | seconds | compiling |", "|---|---|---|"]
  lines += [f"| {s} | {t} | {compiling.get(s, '—')} |"
            for s, t in results["stage_seconds"].items()]
  lines.append(f"| total | {sum(results['stage_seconds'].values()):.1f} | "
               f"{sum(compiling.values()):.1f} |")
  return "\n".join(lines) + "\n"
