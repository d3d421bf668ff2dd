"""The search sweep: every configuration of the paper at every budget, into
the outcome table, a work unit at a time.

One row per (question, method, hyperparameters, budget, seed); a re-run
skips the rows already in the table, so a kill loses at most the unit in
flight. Best-of-N's budgets share one pool of samples per question
(`sweep_programs`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import jax

from ttscale import outcomes
from ttscale.data.tokenizer import Tokenizer
from ttscale.search import common, runner, sampling
from ttscale.search.budget import (
  VERIFIERS,
  SearchSetting,
  budget_grid,
  paper_settings,
  parse_setting,
)
from ttscale.tasks.base import Example, Task


def search_options(config) -> runner.SearchOptions:
  """The options every program of the sweep shares, from the study's config."""
  return runner.SearchOptions(
      rule=sampling.SamplingRule(config.sampling.temperature, config.sampling.top_p),
      max_new_tokens=config.sampling.max_new_tokens,
      max_step_tokens=config.search.max_step_tokens, max_rounds=config.search.max_rounds,
      rows=config.search.rows, aggregation=config.search.step_aggregation)


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


Unit = tuple[SearchSetting, list[SearchSetting], list[tuple[int, list[int]]]]


def sweep_units(settings: list[SearchSetting], tokenizer: Tokenizer, task: Task,
                questions: list[str], options: runner.SearchOptions, devices: list
                ) -> list[Unit]:
  """The sweep's work units, in order: (program, the settings whose rows it
  gives, its numbered batches of question indices).

  A unit is `2 · len(devices)` batches of one program, one per device in
  turn; the table is appended after each unit, so a kill loses at most one.
  """
  window = 2 * len(devices)
  units = []
  for program, row_settings in sweep_programs(settings):
    per_batch = runner.questions_per_batch(program.budget, options.rows)
    batches = list(enumerate(runner.batch_by_length(tokenizer, task, questions, per_batch)))
    units += [(program, row_settings, batches[first:first + window])
              for first in range(0, len(batches), window)]
  return units


def run_sweep(table: outcomes.OutcomeTable, units: list[Unit], models: common.SearchModels,
              policy_params, prm_params, tokenizer: Tokenizer, task: Task,
              test: list[Example], *, options: runner.SearchOptions, seed: int,
              devices: list, on_unit: Callable[[str], None] = lambda note: None) -> int:
  """Runs the `units` on the `test` questions, appending the rows not yet in
  `table`; returns how many batches ran (a batch whose rows are all in the
  table does not). `on_unit(note)` after each unit, for progress."""
  questions = [e.question for e in test]
  width = runner.prompt_width(tokenizer, task, questions)
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
          program, models, policy_params, prm_params, tokenizer, task,
          [[questions[i] for i in indices] for _, indices in todo], options=options,
          width=width, rngs=[jax.random.fold_in(key, number) for number, _ in todo],
          devices=devices)
      new_rows = []
      for (_, indices), batch_results in zip(todo, results, strict=True):
        for i, result in zip(indices, batch_results, strict=True):
          wanted = [s for _, s in missing([i])]
          by_budget = (runner.prefix_results(result, task, [s.budget for s in wanted])
                       if program.method == "best_of_n" else {program.budget: result})
          new_rows += [_outcome(i, test[i], s, by_budget[s.budget], task, seed)
                       for s in wanted]
      # Batches go by prompt length; the table goes by budget, then question.
      table.append(sorted(new_rows, key=lambda row: (row.budget, row.question_index)))
      ran += len(todo)
    on_unit(f"{program.method} {program.params} N={program.budget}")
  return ran


def _outcome(index: int, example: Example, setting: SearchSetting,
             result: runner.QuestionResult, task: Task, seed: int) -> outcomes.Outcome:
  return outcomes.Outcome(
      question_index=index, level=example.level, method=setting.method,
      params=setting.params, budget=setting.budget, seed=seed, answer=result.answer,
      correct=task.grade(result.answer, example.answer), generations=setting.generations,
      flops=result.flops, seconds=result.seconds,
      distinct_prefixes=result.distinct_prefixes)
