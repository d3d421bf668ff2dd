"""The study's analysis stages: difficulty bins, compute-optimal selection, the
FLOPs-matched comparison and the report (the analysis itself in `scaling/`).

- `difficulty`: fresh policy samples of the studied test questions: oracle
  bins by pass@1, predicted bins by the mean PRM score of the same samples.
- `select`: pure numpy over the outcome tables, no model runs
  (`scaling/compute_optimal.py`).
- `flops_matched`: the larger policy's greedy answers against the small one
  with compute-optimal test-time compute (`scaling/flops_matched.py`).
"""

from __future__ import annotations

import numpy as np

from ttscale import io_utils, layout, outcomes
from ttscale.pipeline.context import Context
from ttscale.report import study_report
from ttscale.scaling import compute_optimal, difficulty, flops_matched
from ttscale.search import generate, sampling, scoring, step_success
from ttscale.search.budget import FlopsRate, budget_grid
from ttscale.training.labelled_records import labelled_records, prompt_tokens


def read_outcome_rows(ctx: Context) -> list[dict]:
  """Rows of both parts of the outcome table (search, then revisions)."""
  return (ctx.read(layout.SEARCH_TABLE, "sweep_search", outcomes.read_table)
          + ctx.read(layout.REVISION_TABLE, "sweep_revisions", outcomes.read_table))


def stage_difficulty(ctx: Context) -> dict:
  """Oracle and predicted difficulty bins of the studied test questions."""
  cfg, d = ctx.config, ctx.config.difficulty
  test = ctx.examples("test")[:d.num_questions]
  pool = ctx.sample_pool(layout.DIFFICULTY_SAMPLES, [e.question for e in test],
                         d.num_samples, cfg.seed + 20, "difficulty (samples)")
  records, _ = labelled_records(ctx.tokenizer, ctx.task, test, pool, set(), None, 0)
  correct = np.array([r["correct"] for r in records]).reshape(len(test), d.num_samples)
  prm = ctx.load_verifier("prm")
  scores = scoring.last_step_scores(prm, records, cfg.sampling.batch_size, ctx.mesh,
                                    ctx.rules).reshape(len(test), d.num_samples)
  pass_at_1, predicted = correct.mean(axis=1), scores.mean(axis=1)
  oracle_bins = difficulty.quantile_bins(pass_at_1, d.num_bins)
  predicted_bins = difficulty.quantile_bins(predicted, d.num_bins)
  agreement = float(np.mean(oracle_bins == predicted_bins))
  cost = difficulty.prediction_cost([(len(r["prompt"]), len(r["tokens"])) for r in records],
                                    d.num_samples, FlopsRate.of(ctx.policy_config()),
                                    FlopsRate.of(prm.config))
  result = {
      "questions": list(range(len(test))), "levels": [e.level for e in test],
      "num_samples": d.num_samples, "num_bins": d.num_bins,
      "pass_at_1": pass_at_1.tolist(), "predicted_score": predicted.tolist(),
      "oracle_bins": oracle_bins.tolist(), "predicted_bins": predicted_bins.tolist(),
      "bin_agreement": agreement, "prediction_cost": cost,
  }
  # What the engine check's "perfect search" needs: the policy's per-step
  # success rates on the two hardest bins, with the exact verifier swept.
  samples = d.step_success_samples
  if samples > 0 and "exact" in cfg.search.verifiers:
    hardest = set(np.unique(oracle_bins)[-2:].tolist())
    questions = [q for q, b in enumerate(oracle_bins.tolist()) if b in hardest]
    rates = step_success.step_success_rates(
        ctx.load_policy(), ctx.tokenizer, ctx.task, [test[q] for q in questions],
        num_samples=samples, rule=ctx.sampling_rule(),
        max_step_tokens=cfg.search.max_step_tokens, batch_size=cfg.sampling.batch_size,
        seed=cfg.seed + 21, mesh=ctx.mesh, rules=ctx.rules)
    result["step_success"] = {"num_samples": samples,
                              "rates": {str(q): r for q, r in zip(questions, rates, strict=True)}}
  io_utils.write_json_atomic(ctx.path(layout.DIFFICULTY), result)
  by_bin = {int(b): round(float(pass_at_1[oracle_bins == b].mean()), 3)
            for b in np.unique(oracle_bins)}
  ctx.log(f"difficulty: pass@1 per oracle bin {by_bin}; predicted bins agree with the "
          f"oracle's on {agreement:.2f} of the questions")
  return {"pass_at_1_per_oracle_bin": by_bin, "bin_agreement": agreement,
          "prediction_cost": cost}


def stage_select(ctx: Context) -> dict:
  """Compute-optimal selection by cross-validation, per family and kind of bins."""
  cfg = ctx.config
  bins_file = ctx.read(layout.DIFFICULTY, "difficulty")
  rows = read_outcome_rows(ctx)
  if not cfg.search.select_exact:  # the exact verifier checks the engine; it is no strategy
    rows = [row for row in rows if not outcomes.uses_exact_verifier(row["params"])]
  result = compute_optimal.select_strategies(
      rows, bins_file, cfg.seed + 21,
      {"best_of_n": budget_grid(cfg.search.best_of_n_max_budget),
       "revisions": budget_grid(cfg.sweep_revisions.max_budget)})
  io_utils.write_json_atomic(ctx.path(layout.SELECT), result)
  summary = {}
  for kind in compute_optimal.KINDS:
    for family in compute_optimal.FAMILIES:
      ratios = {g: v["efficiency_ratio"] for g, v in result[kind][family]["budgets"].items()}
      summary[f"{kind}/{family}"] = ratios
      ctx.log(f"select: {kind:9s} {family:9s} budget {result[kind][family]['baseline']} "
              "needs / budget: " + " ".join(
          f"N={g}:{'>grid' if r is None else f'{r:.2f}'}" for g, r in ratios.items()))
  return {"efficiency_ratio": summary}


def stage_flops_matched(ctx: Context) -> dict:
  """The small policy with compute-optimal test-time compute vs the larger
  policy's greedy answers, per oracle bin, at FLOPs-matched budgets."""
  cfg = ctx.config
  bins_file = ctx.read(layout.DIFFICULTY, "difficulty")
  choice = ctx.read(layout.SELECT, "select")
  questions = bins_file["questions"]
  test = ctx.examples("test")[:len(questions)]
  large = ctx.load_policy(large=True)
  greedy = generate.sample_solutions(
      large, ctx.tokenizer, ctx.task, [e.question for e in test], num_samples=1,
      rule=sampling.SamplingRule(temperature=0.0), max_new_tokens=cfg.sampling.max_new_tokens,
      batch_size=cfg.sampling.batch_size, seed=cfg.seed + 22, mesh=ctx.mesh, rules=ctx.rules)
  large_correct = np.array([ctx.task.grade(ctx.task.extract_answer(t[0]), e.answer)
                            for t, e in zip(greedy.texts, test, strict=True)])
  prompts = [len(prompt_tokens(ctx.tokenizer, ctx.task, e.question)) for e in test]
  lengths = [len(t[0]) + 1 for t in greedy.tokens]  # the end token was decoded too
  large_rate = FlopsRate.of(large.config)
  bon_one = [r["flops"] for r in read_outcome_rows(ctx)
             if r["method"] == "best_of_n" and r["params"] == "" and r["budget"] == 1
             and r["question_index"] in set(questions)]
  result = flops_matched.flops_matched_table(
      small_params=ctx.policy_config().num_params(), large_params=large.config.num_params(),
      large_correct=large_correct,
      large_flops=float(np.mean([large_rate.decode(0, p + n)
                                 for p, n in zip(prompts, lengths, strict=True)])),
      tokens_per_query=float(np.mean(np.add(prompts, lengths))),
      small_per_generation=float(np.mean(bon_one)),
      bins=np.asarray(bins_file["oracle_bins"]), budgets=choice["oracle"]["both"]["budgets"],
      inference_ratios=cfg.flops_matched.inference_ratios)
  io_utils.write_json_atomic(ctx.path(layout.FLOPS_MATCHED), result)
  summary = {}
  for r, by_ratio in result["ratios"].items():
    wins = {b: v["paper"]["small_wins"] for b, v in by_ratio["per_bin"].items()}
    summary[r] = {"multiplier": round(by_ratio["multipliers"]["paper"], 2), "small_wins": wins}
    ctx.log(f"flops_matched: R={r}: small may spend {by_ratio['multipliers']['paper']:.1f} "
            f"generations; small + compute-optimal beats the {result['params']['ratio']:.1f}x "
            f"model in bins {[b for b, w in wins.items() if w]}")
  return summary


def stage_report(ctx: Context) -> dict:
  """`report.md`, the figures and `results.json`, from the workdir's files."""
  markdown, results = study_report.build(ctx.workdir)
  io_utils.write_json_atomic(ctx.path(layout.RESULTS), results)
  io_utils.write_bytes_atomic(ctx.path(layout.REPORT), markdown.encode())
  for finding in results["findings"]:
    holds = {True: "holds", False: "does not hold", None: "see report"}[finding["holds"]]
    ctx.log(f"report: {finding['finding']}: {finding['ours']} ({holds})")
  return {"findings": [{k: f[k] for k in ("finding", "ours", "holds")}
                       for f in results["findings"]],
          "figures": results["figures"]}
