"""The search sweep stage (`pipeline/search_stages.py`): its settings, one
graded row per question and setting, the same rows on a re-run, resumed after
a kill, and the table's guard."""

from __future__ import annotations

import json
import os

import pytest
from conftest import FinishedStudy, tiny_config
from stage_runs import (
  KilledAndResumed,
  assert_resumed_equals_uninterrupted,
  expect_one_line_error,
  kill_after_call,
  killed_and_resumed,
  marker,
  remove,
  run_stages,
  without_seconds,
)

from ttscale import layout, outcomes, pipeline
from ttscale.pipeline import registry
from ttscale.search import search_sweep
from ttscale.tasks import get_task

# The tiny sweep, as (method, params, N): best-of-N at every N; at N=4, beam
# and lookahead k=3 with M=√N=2 and M=4, lookahead k=1 with M=√N, DVTS with
# M=2; then best-of-N with the exact verifier up to N=2.
TINY_SEARCH_SETTINGS = (
    ("best_of_n", "", 1), ("best_of_n", "", 2), ("best_of_n", "", 4),
    ("beam", "M=2,k=0", 4), ("lookahead", "M=2,k=3", 4),
    ("beam", "M=4,k=0", 4), ("lookahead", "M=4,k=3", 4),
    ("lookahead", "M=2,k=1", 4), ("dvts", "M=2,k=0", 4),
    ("best_of_n", "verifier=exact", 1), ("best_of_n", "verifier=exact", 2))


def _search_config(*methods: str):
  """The tiny config, its sweep restricted to `methods` with the learned PRM."""
  config = tiny_config()
  config.search.methods = methods
  config.search.verifiers = ("prm",)
  return config


def _search_rows(workdir: str) -> list[dict]:
  return outcomes.read_table(os.path.join(workdir, layout.SEARCH_TABLE))


def _of_methods(rows: list[dict], methods) -> list[dict]:
  """The rows of `methods` with the learned PRM (as `_search_config` sweeps)."""
  return [row for row in rows
          if row["method"] in methods and not outcomes.uses_exact_verifier(row["params"])]


def _without_sweep(finished: FinishedStudy, destination: str) -> str:
  """A copy of the finished workdir as before its sweep: no table, no marker."""
  workdir = finished.copy(destination)
  remove(workdir, "outcomes", layout.marker("sweep_search"))
  return workdir


def _generations(method: str, params: str, budget: int) -> int:
  """The paper's count, from the table's own fields: N, or N·(k+1) with lookahead."""
  if method != "lookahead":
    return budget
  return budget * (int(dict(p.split("=") for p in params.split(","))["k"]) + 1)


def test_tiny_sweep_settings_are_the_papers_at_budgets_up_to_four():
  """Fails if the tiny config's sweep is not the settings the search tests
  below expect (so their counts would test another sweep)."""
  search = tiny_config().search
  assert (search.max_budget, search.best_of_n_max_budget) == (4, 4)
  settings = search_sweep.sweep_settings(search)
  assert tuple((s.method, s.params, s.budget) for s in settings) == TINY_SEARCH_SETTINGS


def test_exact_verifier_sweeps_only_its_methods():
  """Fails if `search.exact_methods` does not restrict the exact verifier's
  settings (and only its: the PRM's stay), or if an unknown one is accepted."""
  search = tiny_config().search
  search.update(max_budget=16, best_of_n_max_budget=16, exact_max_budget=16,
                exact_methods=("beam",))
  settings = search_sweep.sweep_settings(search)
  assert {s.method for s in settings if s.verifier == "exact"} == {"beam"}
  assert {s.method for s in settings if s.verifier == "prm"} == set(search.methods)
  config = tiny_config()
  config.search.exact_methods = ("beam", "greedy")
  with pytest.raises(ValueError, match="search.exact_methods: unknown method 'greedy'"):
    registry.check_config(config)


def test_finished_sweep_has_one_graded_row_per_question_and_setting(finished):
  """Fails if the finished workdir's search table misses or repeats a
  (question, setting) of the tiny sweep, holds another question, seed or
  setting, counts generations other than N (N·(k+1) for lookahead), reports
  no FLOPs, or marks a row correct other than by grading its answer against
  the test question's reference (or with another question's level)."""
  config = tiny_config()
  rows = _search_rows(finished.workdir)
  num_questions = config.search.num_questions
  keys = [(r["question_index"], r["method"], r["params"], r["budget"], r["seed"])
          for r in rows]
  expected = [(q, *setting, config.seed)
              for setting in TINY_SEARCH_SETTINGS for q in range(num_questions)]
  assert len(keys) == len(set(keys)), "a row is repeated"
  assert sorted(keys) == sorted(expected)
  task = get_task(config.task)
  test = pipeline.Context(config, finished.workdir).examples("test")
  for row in rows:
    where = (row["question_index"], row["method"], row["params"], row["budget"])
    example = test[row["question_index"]]
    assert row["generations"] == _generations(row["method"], row["params"], row["budget"]), where
    assert row["flops"] > 0, where
    assert row["correct"] == task.grade(row["answer"], example.answer), where
    assert row["level"] == example.level, where
  summary = marker(finished.workdir, "sweep_search")["summary"]
  assert summary["num_rows"] == len(rows)
  assert summary["num_settings"] == len(TINY_SEARCH_SETTINGS)
  assert os.path.getsize(os.path.join(finished.workdir, "sweep_search.png")) > 0


def test_finished_sweep_logs_its_progress_to_the_end(finished):
  """Fails if the sweep does not report its progress through the log as
  `sweep_search: done/total`, or its last such line is not at the total."""
  progress = [line.split()[1] for line in finished.log
              if line.startswith("sweep_search: ") and "/" in line.split()[1]]
  assert progress, finished.log
  done, total = progress[-1].split("/")
  assert done == total and int(total) > 0, progress


def test_sweep_rerun_with_the_same_seed_writes_the_same_rows(finished, tmp_path):
  """Fails if a sweep's rows depend on anything but the seed, the setting and
  the batch: e.g. on wall time, on which other settings ran before (here the
  lookahead ones are left out), or on a random stream shared across settings."""
  methods = ("best_of_n", "beam")
  workdir = _without_sweep(finished, str(tmp_path / "workdir"))
  log = run_stages(_search_config(*methods), workdir, ["sweep_search"])
  assert any(line.startswith("stage sweep_search: done") for line in log), log
  original = _of_methods(_search_rows(finished.workdir), methods)
  per_question = sum(method in methods and not outcomes.uses_exact_verifier(params)
                     for method, params, _ in TINY_SEARCH_SETTINGS)
  assert len(original) == per_question * tiny_config().search.num_questions
  assert without_seconds(_search_rows(workdir)) == without_seconds(original)
  accuracy = marker(workdir, "sweep_search")["summary"]["accuracy"]
  original_accuracy = marker(finished.workdir, "sweep_search")["summary"]["accuracy"]
  assert accuracy == {name: curve for name, curve in original_accuracy.items()
                      if name.split()[0] in methods and "verifier=exact" not in name}


_KILLED_METHODS = ("best_of_n", "beam")


def _killed_sweep_config():
  return _search_config(*_KILLED_METHODS)


def _killed_rows(path: str) -> list[dict]:
  """The rows of the killed sweep's methods, without wall times."""
  return without_seconds(_of_methods(outcomes.read_table(path), _KILLED_METHODS))


@pytest.fixture(scope="session")
def sweep_killed_and_resumed(finished, tmp_path_factory) -> KilledAndResumed:
  """A best-of-N and beam sweep killed (Ctrl-C) right after its 2nd append
  (best-of-N's pool, all its budgets; then beam M=2), then cut mid-row as by a
  kill during the 3rd append's write, re-run. `after_kill`: the table's bytes."""
  workdir = _without_sweep(finished, str(tmp_path_factory.mktemp("sweep_resumed") / "workdir"))

  def cut_a_row(workdir: str) -> bytes:
    path = os.path.join(workdir, layout.SEARCH_TABLE)
    with open(path, "rb") as f:
      after_kill = f.read()
    with open(path, "ab") as f:
      f.write(after_kill.splitlines(keepends=True)[-1][:40])  # a cut row, no newline
    return after_kill

  return killed_and_resumed(workdir, ["sweep_search"],
                            kill=kill_after_call(outcomes.OutcomeTable, "append", 2),
                            cut=cut_a_row, config=_killed_sweep_config)


def test_sweep_resumed_after_a_kill_gives_the_uninterrupted_table(
    finished, sweep_killed_and_resumed):
  """Fails if a resumed sweep's table differs from an uninterrupted one's
  (a row lost, repeated, or drawn from another random stream because the
  batch ran in another position), if the rows written before the kill are
  rewritten rather than kept as the file's first lines, or if the cut row
  left by a kill during a write survives."""
  run = sweep_killed_and_resumed
  assert_resumed_equals_uninterrupted(run, finished, "sweep_search",
                                      {layout.SEARCH_TABLE: _killed_rows})
  with open(os.path.join(run.workdir, layout.SEARCH_TABLE), "rb") as f:
    assert f.read().startswith(run.after_kill)


def test_sweep_resumed_after_a_kill_runs_only_the_batches_not_in_the_table(
    sweep_killed_and_resumed):
  """Fails if the kill did not land mid-sweep (best-of-N at N=1, 2, 4 and beam
  M=2 in the table, beam M=4 not), or if the re-run searches again batches
  whose rows are all in the table (beam M=4 is the only setting left: 2
  batches of rows/N = 4 questions)."""
  run = sweep_killed_and_resumed
  killed = [json.loads(line) for line in run.after_kill.decode().splitlines()]
  config = tiny_config()
  num_questions = config.search.num_questions
  assert [(r["method"], r["params"], r["budget"], r["question_index"]) for r in killed] == [
      *(("best_of_n", "", n, q) for n in (1, 2, 4) for q in range(num_questions)),
      *(("beam", "M=2,k=0", 4, q) for q in range(num_questions))]
  summary = marker(run.workdir, "sweep_search")["summary"]
  assert summary["batches_run"] == -(-num_questions // (config.search.rows // 4)) == 2
  assert summary["num_rows"] == 5 * num_questions


@pytest.mark.parametrize("killed", [False, True], ids=["finished", "killed"])
def test_sweep_with_another_max_rounds_names_it_and_leaves_the_table_untouched(
    finished, tmp_path, killed):
  """Fails if a sweep with another `search.max_rounds` appends to (or
  rewrites) a table made with the tiny config's, or reports it other than
  as a one-line error naming the field and both values: when the sweep had
  finished (its stage record) and when it was killed before its record, so
  that only the table's meta remembers the settings."""
  workdir = finished.copy(str(tmp_path / "workdir"))
  if killed:
    os.remove(os.path.join(workdir, "stages", "sweep_search.json"))
  config = tiny_config()
  rounds = config.search.max_rounds
  config.search.max_rounds = rounds + 1
  with open(os.path.join(workdir, layout.SEARCH_TABLE), "rb") as f:
    table = f.read()
  message = expect_one_line_error(workdir, ["sweep_search"], "search.max_rounds",
                                   config=config)
  assert f"search.max_rounds={rounds} in the workdir, {rounds + 1} now" in message
  with open(os.path.join(workdir, layout.SEARCH_TABLE), "rb") as f:
    assert f.read() == table


# ------------------------------------------------------------------ revisions


def _search_inputs(finished: FinishedStudy):
  """(context, policy, PRM, search models, search options) of the finished study."""
  from ttscale.search import common

  config = tiny_config()
  ctx = pipeline.Context(config, finished.workdir, log=lambda line: None)
  policy, prm = ctx.load_policy(), ctx.load_verifier("prm")
  models = common.SearchModels(policy.graphdef, prm.graphdef, policy.config, prm.config)
  return ctx, policy, prm, models, search_sweep.search_options(config)


def test_search_batches_do_not_depend_on_how_many_devices_run_them(finished):
  """Fails if a batch's candidates depend on the device that runs it or on
  the other batches of its group: e.g. a group's padding copy kept, batches
  returned out of order, or a random key given to another batch's device.
  Four batches on one device, then on three (a group of three and a group of
  one padded to three)."""
  import jax

  from ttscale.search import runner
  from ttscale.search.budget import SearchSetting

  ctx, policy, prm, models, options = _search_inputs(finished)
  questions = [e.question for e in ctx.examples("test")][:4]
  setting = SearchSetting("beam", 2, beam_width=2)
  per_batch = runner.questions_per_batch(setting.budget, options.rows)
  batches = [[q] * per_batch for q in questions]

  def search(devices):
    found = runner.search_batches(
        setting, models, policy.params, prm.params, ctx.tokenizer, ctx.task, batches,
        options=options, width=runner.prompt_width(ctx.tokenizer, ctx.task, questions),
        rngs=[jax.random.key(b) for b in range(len(batches))], devices=devices)
    return [(r.answer, r.candidates, r.scores.tolist(), r.flops)
            for batch in found for r in batch]

  one, three = search(jax.devices()[:1]), search(jax.devices()[:3])
  assert one == three
  # Each batch its own draws: the same question under 4 keys is not searched alike.
  assert len({tuple(candidates) for _, candidates, _, _ in one[::per_batch]}) > 1


def test_tree_settings_sharing_one_program_search_as_with_a_program_each(finished,
                                                                         monkeypatch):
  """Fails if beam search and DVTS at one budget do not share one compiled
  program, or if sharing it (widths as inputs) changes what a setting finds:
  each against its own program, compiled with its widths fixed."""
  import jax

  from ttscale.search import runner
  from ttscale.search.budget import SearchSetting

  ctx, policy, prm, models, options = _search_inputs(finished)
  questions = [e.question for e in ctx.examples("test")][:2]
  settings = [SearchSetting("dvts", 4, beam_width=2), SearchSetting("beam", 4, beam_width=2)]

  def search(setting):
    per_batch = runner.questions_per_batch(setting.budget, options.rows)
    found = runner.search_batches(
        setting, models, policy.params, prm.params, ctx.tokenizer, ctx.task,
        [(questions * per_batch)[:per_batch]], options=options,
        width=runner.prompt_width(ctx.tokenizer, ctx.task, questions),
        rngs=[jax.random.key(7)])
    return [(r.answer, r.candidates, r.scores.tolist(), r.flops, r.distinct_prefixes)
            for r in found[0]]

  programs = runner.compiled_search.cache_info().currsize
  shared = [search(setting) for setting in settings]
  assert runner.compiled_search.cache_info().currsize <= programs + 1
  monkeypatch.setattr(runner, "program_setting", lambda setting: setting)
  assert [search(setting) for setting in settings] == shared
  assert shared[0] != shared[1], "DVTS and beam search must differ on these questions"
