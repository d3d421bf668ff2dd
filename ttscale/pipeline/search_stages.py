"""The search sweep: every configuration of the paper at every budget, into the
outcome table, and its figure.

`sweep_search` appends one row per (question, method, hyperparameters,
budget, seed) to `outcomes/search.jsonl`, a batch at a time; a re-run skips
the rows already there, so a kill loses at most the batch in flight.
Best-of-N's budgets share one pool of samples per question (`sweep_programs`).
"""

from __future__ import annotations

import collections
import zlib

import jax
import numpy as np

from ttscale import outcomes
from ttscale.pipeline.context import Context
from ttscale.progress import Progress
from ttscale.report import search_figure
from ttscale.scaling import search_checks
from ttscale.search import common, runner, sampling
from ttscale.search.budget import (
  VERIFIERS,
  SearchSetting,
  budget_grid,
  paper_settings,
  parse_setting,
)
from ttscale.search.exact_verifier import ExactVerifier

SEARCH_TABLE = ("outcomes", "search.jsonl")


def search_options(ctx: Context) -> runner.SearchOptions:
  cfg = ctx.config
  return runner.SearchOptions(
      rule=sampling.SamplingRule(cfg.sampling.temperature, cfg.sampling.top_p),
      max_new_tokens=cfg.sampling.max_new_tokens,
      max_step_tokens=cfg.search.max_step_tokens, max_rounds=cfg.search.max_rounds,
      rows=cfg.search.rows, aggregation=cfg.search.step_aggregation)


def search_table_meta(ctx: Context) -> dict:
  """What the search rows depend on: a table made otherwise is not appended to."""
  # Which settings run (methods, verifiers, budget caps, distinct beams: each
  # is named in its rows' params) decides which rows exist, not what they
  # hold: a table can be extended with more of them.
  search = {k: v for k, v in ctx.config.search.to_dict().items()
            if k not in ("methods", "max_budget", "best_of_n_max_budget", "extra_settings",
                         "verifiers", "exact_max_budget", "exact_methods",
                         "distinct_beams")}
  return {"policy": ctx.policy_spec(), "prm": ctx.verifier_spec("prm"),
          "sampling": ctx.config.sampling.to_dict(), "search": search,
          "seed": ctx.config.seed}


def sweep_settings(search_config) -> list[SearchSetting]:
  """The paper's settings of `search.methods` for each of `search.verifiers`
  (the exact verifier's only of `search.exact_methods`, up to
  `search.exact_max_budget`), then
  `search.extra_settings` (texts for `budget.parse_setting`), each once."""
  grid = budget_grid(search_config.max_budget)
  best_of_n_grid = budget_grid(search_config.best_of_n_max_budget)
  settings = []
  for verifier in search_config.verifiers:
    if verifier not in VERIFIERS:
      raise ValueError(f"search.verifiers: unknown verifier {verifier!r}; expected some of "
                       f"{', '.join(VERIFIERS)}")
    exact = verifier == "exact"
    methods = [m for m in search_config.methods
               if not exact or m in search_config.get("exact_methods", search_config.methods)]
    settings += [s for s in paper_settings(
                     grid, best_of_n_grid, distinct=search_config.distinct_beams,
                     verifier=verifier)
                 if s.method in methods
                 and (not exact or s.budget <= search_config.exact_max_budget)]
  for text in search_config.extra_settings:
    setting = parse_setting(text, grid)
    if setting not in settings:
      settings.append(setting)
  return settings


def sweep_programs(settings: list[SearchSetting]
                   ) -> list[tuple[SearchSetting, list[SearchSetting]]]:
  """(the program that runs, the settings whose rows it gives), in sweep order.

  Best-of-N at every budget comes from one pool per verifier: a program at
  the largest best-of-N budget, whose first n samples give best-of-n
  (`runner.prefix_results`), which halves best-of-N's cost over the grid.
  Every other setting is its own program.
  """
  programs = []
  for verifier in dict.fromkeys(s.verifier for s in settings):
    best_of_n = sorted((s for s in settings
                        if s.method == "best_of_n" and s.verifier == verifier),
                       key=lambda s: s.budget)
    if best_of_n:
      programs.append((best_of_n[-1], best_of_n))
  return programs + [(s, [s]) for s in settings if s.method != "best_of_n"]


def setting_key(setting) -> int:
  """A stable integer per setting, for its random stream."""
  return zlib.crc32(f"{setting.method}/{setting.params}/{setting.budget}".encode())


def stage_sweep_search(ctx: Context) -> dict:
  """Runs every search setting on the test questions; appends to the table."""
  cfg = ctx.config
  test = ctx.examples("test")[:cfg.search.num_questions]
  questions = [e.question for e in test]
  table = outcomes.OutcomeTable(ctx.path(*SEARCH_TABLE), search_table_meta(ctx))
  policy, prm = ctx.load_policy(), ctx.load_verifier("prm")
  settings = sweep_settings(cfg.search)
  exact = (ExactVerifier(ctx.tokenizer, ctx.task, questions)
           if any(s.verifier == "exact" for s in settings) else None)
  models = common.SearchModels(policy.graphdef, prm.graphdef, policy.config, prm.config,
                               exact_verifier=exact)
  options = search_options(ctx)
  width = runner.prompt_width(ctx.tokenizer, ctx.task, questions)
  seed = cfg.seed
  devices = list(ctx.mesh.devices.flat)
  # Work units: `window` batches of one program, one per device in turn; the
  # table is appended after each unit, so a kill loses at most one unit.
  window = 2 * len(devices)
  units = []
  for program, row_settings in sweep_programs(settings):
    per_batch = runner.questions_per_batch(program.budget, options.rows)
    batches = runner.batch_by_length(ctx.tokenizer, ctx.task, questions, per_batch)
    for first in range(0, len(batches), window):
      units.append((program, row_settings, list(enumerate(batches, 0))[first:first + window]))
  progress = Progress("sweep_search", len(units), ctx.log)
  ran = 0
  for program, row_settings, numbered in units:
    def missing(indices, row_settings=row_settings):
      return [(i, s) for i in indices for s in row_settings
              if not table.has((i, s.method, s.params, s.budget, seed))]
    todo = [(number, indices) for number, indices in numbered if missing(indices)]
    if todo:
      # A batch runs whole again (its shape and random stream are fixed);
      # only rows not yet in the table are appended.
      key = jax.random.fold_in(jax.random.key(seed), setting_key(program))
      results = runner.search_batches(
          program, models, policy.params, prm.params, ctx.tokenizer, ctx.task,
          [[questions[i] for i in indices] for _, indices in todo], options=options,
          width=width, rngs=[jax.random.fold_in(key, number) for number, _ in todo],
          devices=devices)
      new_rows = []
      for (_, indices), batch_results in zip(todo, results, strict=True):
        for i, result in zip(indices, batch_results, strict=True):
          wanted = [s for _, s in missing([i])]
          by_budget = (runner.prefix_results(result, ctx.task, [s.budget for s in wanted])
                       if program.method == "best_of_n" else {program.budget: result})
          new_rows += [outcomes.Outcome(
              question_index=i, level=test[i].level, method=s.method, params=s.params,
              budget=s.budget, seed=seed, answer=by_budget[s.budget].answer,
              correct=ctx.task.grade(by_budget[s.budget].answer, test[i].answer),
              generations=s.generations, flops=by_budget[s.budget].flops,
              seconds=by_budget[s.budget].seconds,
              distinct_prefixes=by_budget[s.budget].distinct_prefixes) for s in wanted]
      # Batches go by prompt length; the table goes by budget, then question.
      table.append(sorted(new_rows, key=lambda row: (row.budget, row.question_index)))
      ran += len(todo)
    progress.update(note=f"{program.method} {program.params} N={program.budget}")
  rows = table.rows()
  search_figure.plot(rows, ctx.path("sweep_search.png"))
  accuracy = collections.defaultdict(list)
  for row in rows:
    accuracy[(row["method"], row["params"], row["budget"])].append(row["correct"])
  curves = {f"{m} {p}".strip(): {} for m, p, _ in accuracy}
  for (m, p, n), values in sorted(accuracy.items(), key=lambda kv: kv[0][2]):
    curves[f"{m} {p}".strip()][n] = round(float(np.mean(values)), 4)
  for name, curve in curves.items():
    ctx.log(f"sweep_search: {name:24s} " + " ".join(f"N={n}:{a:.3f}" for n, a in curve.items()))
  diversity = search_checks.distinct_prefixes(rows)
  return {"num_rows": len(rows), "num_settings": len(settings), "batches_run": ran,
          "num_questions": len(test), "accuracy": curves,
          "distinct_prefixes_per_round": diversity}

