"""The study's analysis stages: difficulty bins and compute-optimal selection.

- `difficulty`: `difficulty.num_samples` fresh policy samples for each studied
  test question (the first `difficulty.num_questions`): oracle difficulty bins
  by pass@1, predicted difficulty bins by the mean PRM score of the same
  samples (no ground truth), with what the prediction costs.
- `select`: pure numpy over the outcome tables, no model runs — per bin and
  generation budget, the strategy chosen by two-fold cross-validation, for the
  search family, the revision family and both, on oracle and predicted bins;
  the efficiency ratio against best-of-N (`scaling/compute_optimal.py`).
"""

from __future__ import annotations

import numpy as np
from etils import epath

from ttscale import io_utils, outcomes
from ttscale.pipeline.context import Context
from ttscale.pipeline.revision_stages import REVISION_TABLE
from ttscale.pipeline.search_stages import SEARCH_TABLE
from ttscale.pipeline.verifier_stages import labelled_records, sample_pool
from ttscale.report import study_report
from ttscale.scaling import compute_optimal, flops_matched
from ttscale.scaling.difficulty import quantile_bins
from ttscale.search import generate, sampling, scoring, step_success
from ttscale.search.budget import FlopsRate, budget_grid

DIFFICULTY = "difficulty.json"
SELECT = "select.json"
KINDS = ("oracle", "predicted")
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


def stage_difficulty(ctx: Context) -> dict:
  """Oracle and predicted difficulty bins of the studied test questions."""
  cfg, d = ctx.config, ctx.config.difficulty
  test = ctx.examples("test")[:d.num_questions]
  pool = sample_pool(ctx, ctx.path("difficulty_samples.json"), [e.question for e in test],
                     d.num_samples, cfg.seed + 20, "difficulty (samples)")
  records, _ = labelled_records(ctx, test, pool, set(), None, 0)
  correct = np.array([r["correct"] for r in records]).reshape(len(test), d.num_samples)
  prm = ctx.load_verifier("prm")
  scores = scoring.last_step_scores(prm, records, cfg.sampling.batch_size, ctx.mesh,
                                    ctx.rules).reshape(len(test), d.num_samples)
  pass_at_1 = correct.mean(axis=1)
  predicted = scores.mean(axis=1)
  oracle_bins = quantile_bins(pass_at_1, d.num_bins)
  predicted_bins = quantile_bins(predicted, d.num_bins)
  policy_rate, prm_rate = FlopsRate.of(ctx.policy_config()), FlopsRate.of(prm.config)
  prompt_flops = sum(float(policy_rate.decode(0, len(records[q * d.num_samples]["prompt"]) - 1))
                     for q in range(len(test)))
  sample_flops = sum(float(policy_rate.decode(len(r["prompt"]) - 1, len(r["tokens"])))
                     for r in records)
  prm_flops = sum(float(prm_rate.decode(0, len(r["prompt"]) + len(r["tokens"])))
                  for r in records)
  agreement = float(np.mean(oracle_bins == predicted_bins))
  step_success = _hardest_step_success(ctx, test, oracle_bins)
  result = {
      "questions": list(range(len(test))), "levels": [e.level for e in test],
      "num_samples": d.num_samples, "num_bins": d.num_bins,
      "pass_at_1": pass_at_1.tolist(), "predicted_score": predicted.tolist(),
      "oracle_bins": oracle_bins.tolist(), "predicted_bins": predicted_bins.tolist(),
      "bin_agreement": agreement,
      "prediction_cost": {
          "generations_per_question": d.num_samples,
          "policy_flops_per_question": (prompt_flops + sample_flops) / len(test),
          "prm_flops_per_question": prm_flops / len(test)},
  }
  if step_success:
    result["step_success"] = step_success
  io_utils.write_json_atomic(ctx.path(DIFFICULTY), result)
  by_bin = {int(b): round(float(pass_at_1[oracle_bins == b].mean()), 3)
            for b in np.unique(oracle_bins)}
  ctx.log(f"difficulty: pass@1 per oracle bin {by_bin}; predicted bins agree with the "
          f"oracle's on {agreement:.2f} of the questions")
  return {"pass_at_1_per_oracle_bin": by_bin, "bin_agreement": agreement,
          "prediction_cost": result["prediction_cost"]}


def _hardest_step_success(ctx: Context, test, oracle_bins: np.ndarray) -> dict | None:
  """The policy's per-step success rates on the two hardest oracle bins' questions
  (what the engine check's "perfect search" needs), when the exact verifier
  is swept and `difficulty.step_success_samples` > 0."""
  cfg, samples = ctx.config, ctx.config.difficulty.step_success_samples
  if samples <= 0 or "exact" not in cfg.search.verifiers:
    return None
  hardest = set(np.unique(oracle_bins)[-2:].tolist())
  questions = [q for q, b in enumerate(oracle_bins.tolist()) if b in hardest]
  rates = step_success.step_success_rates(
      ctx.load_policy(), ctx.tokenizer, ctx.task, [test[q] for q in questions],
      num_samples=samples,
      rule=sampling.SamplingRule(cfg.sampling.temperature, cfg.sampling.top_p),
      max_step_tokens=cfg.search.max_step_tokens, batch_size=cfg.sampling.batch_size,
      seed=cfg.seed + 21, mesh=ctx.mesh, rules=ctx.rules)
  return {"num_samples": samples,
          "rates": {str(q): r for q, r in zip(questions, rates, strict=True)}}


def read_difficulty(ctx: Context) -> dict:
  path = ctx.path(DIFFICULTY)
  if not epath.Path(path).exists():
    raise ValueError(f"{path} is missing: run the 'difficulty' stage first")
  return io_utils.read_json(path)


def read_outcome_rows(ctx: Context) -> list[dict]:
  """Rows of both parts of the outcome table (search, then revisions)."""
  rows = []
  for parts, stage in ((SEARCH_TABLE, "sweep_search"), (REVISION_TABLE, "sweep_revisions")):
    path = ctx.path(*parts)
    if not epath.Path(path).exists():
      raise ValueError(f"{path} is missing: run the '{stage}' stage first")
    rows.extend(outcomes.read_table(path))
  return rows


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


def stage_select(ctx: Context) -> dict:
  """Compute-optimal selection by cross-validation, per family and kind of bins."""
  cfg = ctx.config
  difficulty = read_difficulty(ctx)
  rows = read_outcome_rows(ctx)
  if not cfg.search.select_exact:  # the exact verifier checks the engine; it is no strategy
    rows = [row for row in rows if not outcomes.uses_exact_verifier(row["params"])]
  questions = difficulty["questions"]
  check_budgets(rows, questions, {
      "best_of_n": budget_grid(cfg.search.best_of_n_max_budget),
      "revisions": budget_grid(cfg.sweep_revisions.max_budget)})
  result = {"num_questions": len(questions), "num_bins": difficulty["num_bins"]}
  for kind in KINDS:
    bins = np.asarray(difficulty[f"{kind}_bins"])
    result[kind] = {family: compute_optimal.compute_optimal(
        rows, questions, bins, ctx.config.seed + 21, keep, baseline)
        for family, (keep, baseline) in FAMILIES.items()}
  io_utils.write_json_atomic(ctx.path(SELECT), result)
  summary = {}
  for kind in KINDS:
    for family in FAMILIES:
      ratios = {g: v["efficiency_ratio"] for g, v in result[kind][family]["budgets"].items()}
      summary[f"{kind}/{family}"] = ratios
      ctx.log(f"select: {kind:9s} {family:9s} budget {result[kind][family]['baseline']} "
              "needs / budget: " + " ".join(
          f"N={g}:{'>grid' if r is None else f'{r:.2f}'}" for g, r in ratios.items()))
  return {"efficiency_ratio": summary}


# ------------------------------------------------------------------ FLOPs-matched

FLOPS_MATCHED = "flops_matched.json"


def stage_flops_matched(ctx: Context) -> dict:
  """The small policy with compute-optimal test-time compute vs the larger
  policy's greedy answers, per oracle bin, at FLOPs-matched budgets."""
  cfg = ctx.config
  difficulty = read_difficulty(ctx)
  choice = io_utils.read_json(_require(ctx, SELECT, "select"))
  questions = difficulty["questions"]
  test = ctx.examples("test")[:len(questions)]
  large = ctx.load_policy(large=True)
  greedy = generate.sample_solutions(
      large, ctx.tokenizer, ctx.task, [e.question for e in test], num_samples=1,
      rule=sampling.SamplingRule(temperature=0.0), max_new_tokens=cfg.sampling.max_new_tokens,
      batch_size=cfg.sampling.batch_size, seed=cfg.seed + 22, mesh=ctx.mesh, rules=ctx.rules)
  large_correct = np.array([ctx.task.grade(ctx.task.extract_answer(t[0]), e.answer)
                            for t, e in zip(greedy.texts, test, strict=True)])
  prompts = [len(ctx.tokenizer.encode(ctx.task.prompt(e.question))) + 1 for e in test]
  lengths = [len(t[0]) + 1 for t in greedy.tokens]  # the end token was decoded too
  large_rate = FlopsRate.of(large.config)
  tokens_per_query = float(np.mean(np.add(prompts, lengths)))
  large_flops = float(np.mean([large_rate.decode(0, p + n)
                               for p, n in zip(prompts, lengths, strict=True)]))
  small_params, large_params = ctx.policy_config().num_params(), large.config.num_params()
  rows = read_outcome_rows(ctx)
  bon_one = [r["flops"] for r in rows if r["method"] == "best_of_n" and r["params"] == ""
             and r["budget"] == 1 and r["question_index"] in set(questions)]
  small_per_generation = float(np.mean(bon_one))
  bins = np.asarray(difficulty["oracle_bins"])
  budgets = choice["oracle"]["both"]["budgets"]
  result = {"params": {"small": small_params, "large": large_params,
                       "ratio": large_params / small_params},
            "large_greedy_accuracy": float(large_correct.mean()),
            "large_flops_per_query": large_flops, "tokens_per_query": tokens_per_query,
            "small_flops_per_generation": small_per_generation, "ratios": {}}
  for r in cfg.flops_matched.inference_ratios:
    multipliers = {
        "paper": flops_matched.budget_multiplier(large_params / small_params, r),
        "paper_with_verifier": flops_matched.budget_multiplier(
            large_params / small_params, r, count_verifier=True),
        "exact": flops_matched.exact_multiplier(
            small_params, large_params, r, large_flops, tokens_per_query,
            small_per_generation)}
    per_bin = {}
    for b in sorted(np.unique(bins).tolist()):
      curve = {int(g): v["per_bin"][str(b)]["accuracy"] for g, v in budgets.items()}
      large_accuracy = float(large_correct[bins == b].mean())
      verdicts = {}
      for name, k in multipliers.items():
        small_accuracy, note = flops_matched.accuracy_at(curve, k)
        verdicts[name] = {
            "budget": k, "small_accuracy": small_accuracy, "note": note,
            "small_wins": None if small_accuracy is None else small_accuracy > large_accuracy}
      per_bin[int(b)] = {"large_accuracy": large_accuracy, **verdicts}
    result["ratios"][str(r)] = {"multipliers": multipliers, "per_bin": per_bin}
  io_utils.write_json_atomic(ctx.path(FLOPS_MATCHED), result)
  summary = {}
  for r, by_ratio in result["ratios"].items():
    wins = {b: v["paper"]["small_wins"] for b, v in by_ratio["per_bin"].items()}
    summary[r] = {"multiplier": round(by_ratio["multipliers"]["paper"], 2), "small_wins": wins}
    ctx.log(f"flops_matched: R={r}: small may spend {by_ratio['multipliers']['paper']:.1f} "
            f"generations; small + compute-optimal beats the {result['params']['ratio']:.1f}x "
            f"model in bins {[b for b, w in wins.items() if w]}")
  return summary


def _require(ctx: Context, name: str, stage: str) -> str:
  path = ctx.path(name)
  if not epath.Path(path).exists():
    raise ValueError(f"{path} is missing: run the '{stage}' stage first")
  return path


# ------------------------------------------------------------------ report


def stage_report(ctx: Context) -> dict:
  """`report.md`, the figures and `results.json`, from the workdir's files."""
  markdown, results = study_report.build(ctx.workdir)
  io_utils.write_json_atomic(ctx.path("results.json"), results)
  io_utils.write_bytes_atomic(ctx.path("report.md"), markdown.encode())
  for finding in results["findings"]:
    holds = {True: "holds", False: "does not hold", None: "see report"}[finding["holds"]]
    ctx.log(f"report: {finding['finding']}: {finding['ours']} ({holds})")
  return {"findings": [{k: f[k] for k in ("finding", "ours", "holds")}
                       for f in results["findings"]],
          "figures": results["figures"]}
