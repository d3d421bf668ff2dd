"""The revision sweep stage (`pipeline/revision_sweep_stages.py`): one graded
row per question, split and selector, rows chosen from saved units by each
selector, resumed after a kill, and the table's guard."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import FinishedStudy, tiny_config
from stage_runs import (
  KilledAndResumed,
  assert_resumed_equals_uninterrupted,
  expect_one_line_error,
  killed_and_resumed,
  marker,
  read_json,
  remove,
  run_stages,
  without_seconds,
)

from ttscale import io_utils, layout, outcomes, pipeline
from ttscale.search import revision_pool, revision_sweep
from ttscale.search.budget import FlopsRate
from ttscale.tasks import get_task

REVISION_TABLE = layout.REVISION_TABLE
REVISION_UNITS = layout.REVISION_UNITS
REVISION_STAGES = ("revision_data", "train_revision", "train_revision_verifier",
                   "sweep_revisions")
# The tiny config sweeps the exact verifier too: its rows say
# "select=hierarchical,verifier=exact" and are called "hierarchical_exact" here.
REVISION_SELECTORS = ("hierarchical", "hierarchical_prm", "majority", "hierarchical_exact")
# Every split s·p = N (s = 1, 2, ..., N) of the tiny grid N = 1, 2, 4, as (s, p).
TINY_REVISION_SPLITS = ((1, 1), (1, 2), (2, 1), (1, 4), (2, 2), (4, 1))


def _revision_rows(workdir: str) -> list[dict]:
  return outcomes.read_table(os.path.join(workdir, REVISION_TABLE))


def _split_of(params: str) -> tuple[int, int, str]:
  """(s, p, selector) of a revisions row's params "s=..,p=..,select=..[,verifier=exact]"."""
  fields = dict(p.split("=") for p in params.split(","))
  if fields.pop("verifier", None) == "exact":
    assert fields["select"] == "hierarchical", params
    fields["select"] = "hierarchical_exact"
  assert sorted(fields) == ["p", "s", "select"], params
  return int(fields["s"]), int(fields["p"]), fields["select"]


def _revision_params(sequential: int, chains: int, selector: str) -> str:
  if selector == "hierarchical_exact":
    return f"s={sequential},p={chains},select=hierarchical,verifier=exact"
  return f"s={sequential},p={chains},select={selector}"


def _unit_files(workdir: str) -> list[str]:
  """The sweep's saved pool files, sorted by name (= run order)."""
  return sorted(os.listdir(os.path.join(workdir, REVISION_UNITS)))


def _pools(workdir: str) -> list[tuple[revision_sweep.Unit, dict]]:
  """Every saved pool, with its unit (chain lengths and questions)."""
  pools = []
  for name in _unit_files(workdir):
    saved = read_json(os.path.join(workdir, REVISION_UNITS, name))
    part = saved["part"]
    pools.append((revision_sweep.Unit(tuple(part["chain_lengths"]), part["first"],
                                      part["last"]), saved))
  return pools


def _split_for(workdir: str, sequential: int, chains: int, question: int):
  """(unit, saved pool, split view) of the pool that holds `question`."""
  for unit, saved in _pools(workdir):
    if unit.first <= question < unit.last:
      return unit, saved, revision_sweep.split_view(saved, unit, sequential, chains)
  raise AssertionError(f"no pool holds question {question}")


def _rates(config, workdir: str) -> dict:
  ctx = pipeline.Context(config, workdir)
  return {"revision": FlopsRate.of(ctx.policy_config()),
          "revision_verifier": FlopsRate.of(ctx.verifier_config("revision_verifier")),
          "prm": FlopsRate.of(ctx.verifier_config("prm"))}


def test_revision_sweep_writes_the_attempt_analysis_of_its_longest_chains(finished):
  """Fails if `revisions/attempts.json` is not the per-attempt accuracy of the
  pools' 4-attempt chains (the tiny sweep's longest, one per question) and
  the transitions of every chain of every pool, each counted once."""
  attempts = read_json(os.path.join(finished.workdir, "revisions", "attempts.json"))
  pools = _pools(finished.workdir)
  assert [unit.lengths for unit, _ in pools] == [(4, 2, 1, 1)] * len(pools)
  correct = np.concatenate([np.asarray(saved["correct"][0], bool) for _, saved in pools])
  assert correct.shape == (tiny_config().sweep_revisions.num_questions, 1, 4)
  assert attempts["longest_chains"]["accuracy"] == pytest.approx(
      correct.mean(axis=(0, 1)).tolist())
  every = [np.asarray(group, bool) for _, saved in pools for group in saved["correct"]]
  before = np.concatenate([c[..., :-1].reshape(-1) for c in every])
  assert attempts["transitions"]["correct_to_incorrect"]["of"] == int(before.sum())
  assert attempts["transitions"]["incorrect_to_correct"]["of"] == int((~before).sum())
  assert attempts["fresh_baseline"]["num_questions"] == tiny_config().sweep_revisions.num_questions
  # The arithmetic task names its errors: every longest-chain attempt has a kind,
  # None exactly when the task's grading of its steps finds no error.
  kinds = [q for _, saved in pools for q in saved["first_errors"][0]]
  assert len(kinds) == correct.shape[0]
  shares = attempts["longest_chains"]["first_errors"]
  assert [sum(v[k] for v in shares.values()) for k in range(4)] == pytest.approx([1.0] * 4)
  right = np.array([[[k is None for k in chain] for chain in q] for q in kinds])
  assert shares.get("right", [0.0] * 4) == pytest.approx(right.mean(axis=(0, 1)).tolist())


def test_tiny_revision_sweep_is_every_split_of_budgets_up_to_four():
  """Fails if the tiny config's revision sweep is not the six splits the
  revision tests below expect (so their counts would test another sweep)."""
  config = tiny_config()
  assert config.sweep_revisions.max_budget == 4 and not config.sweep_revisions.splits
  assert tuple(revision_sweep.sweep_splits(config.sweep_revisions)) == TINY_REVISION_SPLITS


def test_finished_revision_sweep_has_one_graded_row_per_question_split_and_selector(finished):
  """Fails if a revision stage did not finish (marker and log line), if the
  revisions table misses or repeats a (question, split, selector) of the tiny
  sweep or holds another question, seed or method, counts generations other
  than the budget s·p, or grades a row other than by its answer against the
  test question's reference; or if a split read off a saved pool holds other
  than p chains of s attempts per question, or a row's answer is not one of
  its attempts'."""
  config = tiny_config()
  for name in REVISION_STAGES:
    assert any(line.startswith(f"stage {name}: done") for line in finished.log), name
    assert marker(finished.workdir, name)["stage"] == name
  rows = _revision_rows(finished.workdir)
  num_questions = config.sweep_revisions.num_questions
  keys = [(r["question_index"], r["method"], r["params"], r["budget"], r["seed"])
          for r in rows]
  expected = [(q, "revisions", _revision_params(s, p, selector), s * p, config.seed)
              for s, p in TINY_REVISION_SPLITS for selector in REVISION_SELECTORS
              for q in range(num_questions)]
  assert len(keys) == len(set(keys)), "a row is repeated"
  assert sorted(keys) == sorted(expected)
  task = get_task(config.task)
  test = pipeline.Context(config, finished.workdir).examples("test")
  for row in rows:
    s, p, _ = _split_of(row["params"])
    where = (row["question_index"], row["params"])
    example = test[row["question_index"]]
    assert row["generations"] == row["budget"] == s * p, where
    assert row["flops"] > 0 and row["seconds"] >= 0, where
    assert row["correct"] == task.grade(row["answer"], example.answer), where
    assert row["level"] == example.level, where
    unit, _, split = _split_for(finished.workdir, s, p, row["question_index"])
    attempts = split["answers"][row["question_index"] - unit.first]
    assert attempts.shape == (p, s), where
    flat = list(attempts.reshape(-1))
    assert row["answer"] in flat or (row["answer"] is None and all(a is None for a in flat)), \
        where
  summary = marker(finished.workdir, "sweep_revisions")["summary"]
  assert summary["num_rows"] == len(rows) == len(expected)
  assert summary["num_units"] == summary["units_run"] == len(_unit_files(finished.workdir))
  assert os.path.getsize(os.path.join(finished.workdir, "sweep_revisions.png")) > 0


def test_finished_revision_sweep_counts_the_flops_of_what_each_selector_runs(finished):
  """Fails if a revisions row's FLOPs are not the revision model's FLOPs of
  its split's attempts (`revision_pool.policy_flops`) plus those of the
  verifier its selector reads (the revision verifier for hierarchical, the
  base PRM for hierarchical_prm, none for majority and the exact verifier)."""
  config = tiny_config()
  rates = _rates(config, finished.workdir)
  verifier = {"hierarchical": "revision_verifier", "hierarchical_prm": "prm"}
  for row in _revision_rows(finished.workdir):
    s, p, selector = _split_of(row["params"])
    q = row["question_index"]
    unit, saved, split = _split_for(finished.workdir, s, p, q)
    flops = revision_sweep.split_flops(split, saved["prompt_lengths"], rates)
    expected = revision_pool.policy_flops(rates["revision"], split["context_lengths"],
                                          split["token_counts"])[q - unit.first]
    assert expected == flops["policy"][q - unit.first] > 0, (q, row["params"])
    if selector in verifier:
      assert flops[verifier[selector]][q - unit.first] > 0, (q, row["params"])
      expected += flops[verifier[selector]][q - unit.first]
    assert row["flops"] == pytest.approx(expected, rel=1e-9), (q, row["params"])


def _crafted_split(references: list[str]) -> tuple[dict, dict]:
  """Split s=2, p=2 of questions 0-5 whose selectors pick different answers,
  and {(question, selector): the answer each must pick}.

  Even questions: chains [W1, W1] and [R, W2] (R the reference). Majority
  picks W1; by revision-verifier scores [.1, .1], [.9, .2] chain 2 picks R
  with weight .9 > .2; by PRM scores [.1, .1], [.1, .8] it picks W2.
  Odd questions: chains [R, W1] and [W1, W2]. By revision-verifier scores
  [.5, .45], [.45, .4] the chains pick R (.5) and W1 (.45): R, although W1
  has the larger flat sum (.9); by PRM scores [.1, .2], [.3, .1] both pick
  W1; majority W1. The exact verifier (1 on the right answer) picks R in
  every question with one. Question 5: no attempt has an answer.
  """
  answers, rv, prm, expected = [], [], [], {}
  for q, r in enumerate(references[:5]):
    w1, w2 = str(int(r) + 1), str(int(r) + 2)
    if q % 2 == 0:
      answers.append([[w1, w1], [r, w2]])
      rv.append([[.1, .1], [.9, .2]])
      prm.append([[.1, .1], [.1, .8]])
      expected.update({(q, "hierarchical"): r, (q, "hierarchical_prm"): w2,
                       (q, "majority"): w1, (q, "hierarchical_exact"): r})
    else:
      answers.append([[r, w1], [w1, w2]])
      rv.append([[.5, .45], [.45, .4]])
      prm.append([[.1, .2], [.3, .1]])
      expected.update({(q, "hierarchical"): r, (q, "hierarchical_prm"): w1,
                       (q, "majority"): w1, (q, "hierarchical_exact"): r})
  answers.append([[None, None], [None, None]])
  rv.append([[.9, .9], [.9, .9]])
  prm.append([[.9, .9], [.9, .9]])
  expected.update({(5, selector): None for selector in REVISION_SELECTORS})
  split = {"answers": answers, "revision_verifier": rv, "prm": prm,
           # The exact verifier: 1 for a right attempt (here: the right answer).
           "exact": [[[float(a == r) for a in chain] for chain in question]
                     for question, r in zip(answers, references, strict=True)]}
  return split, expected


def _crafted_pool(unit: revision_sweep.Unit, split: dict, references: list[str]) -> dict:
  """A saved pool of `unit` (chains of 4, 2, 1, 1 attempts) whose split
  s=2, p=2 is `split`'s questions: its chains 0 and 1 start with them; every
  other attempt has no answer. Contexts grow by 40 tokens an attempt."""
  assert unit.lengths == (4, 2, 1, 1)
  questions = range(unit.first, unit.last)

  def pool(values, filler):
    return [[[values[q][0] + [filler] * 2] for q in questions],
            [[values[q][1]] for q in questions],
            [[[filler]] * 2 for _ in questions]]

  answers = pool(split["answers"], None)
  return {
      "answers": answers,
      "correct": [[[[a == references[q] for a in chain] for chain in question]
                   for q, question in zip(questions, group, strict=True)] for group in answers],
      "scores": {name: pool(split[name], 0.0) for name in ("revision_verifier", "prm", "exact")},
      "context_lengths": [[[[10 + 40 * j for j in range(length)]] * count for _ in questions]
                          for length, count in ((4, 1), (2, 1), (1, 2))],
      "token_counts": [[[[30] * length] * count for _ in questions]
                       for length, count in ((4, 1), (2, 1), (1, 2))],
      "prompt_lengths": [10] * len(questions),
      "seconds": 4.0, "generated_tokens": 0,
      # What the unit is (`resumable`): else it is refused as another unit's.
      "part": unit.description,
  }


def test_revision_sweep_rows_come_from_the_saved_pools_by_each_selector(finished, tmp_path):
  """Fails if a re-run sweep runs again a pool saved before a kill instead of
  reusing it, or makes its rows otherwise than: majority the most frequent
  answer; hierarchical the answer of the largest total of per-chain picks
  weighted by their score sums, with the revision verifier's scores
  (hierarchical) or the base PRM's (hierarchical_prm), not the flat sum;
  none when no attempt has an answer; graded against the reference; FLOPs
  of the split's attempts and of the verifier the selector read; the pool's
  wall time per question times the split's share of its FLOPs.
  (The tiny models never write an answer, so the finished run cannot tell.)"""
  config = tiny_config()
  assert config.sweep_revisions.num_questions == 6
  workdir = finished.copy(str(tmp_path / "workdir"))
  os.remove(os.path.join(workdir, "stages", "sweep_revisions.json"))
  path = os.path.join(workdir, REVISION_TABLE)
  kept = [row for row in _revision_rows(workdir) if not row["params"].startswith("s=2,p=2,")]
  with open(path, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in kept)
  test = pipeline.Context(config, workdir).examples("test")
  references = [e.answer for e in test[:6]]
  split, expected = _crafted_split(references)
  units = [unit for unit, _ in _pools(workdir)]
  assert [(u.first, u.last) for u in units] == [(0, 2), (2, 4), (4, 6)]
  for unit in units:
    io_utils.write_json_atomic(os.path.join(workdir, REVISION_UNITS, unit.file_name),
                               _crafted_pool(unit, split, references))
  log = run_stages(config, workdir, ["sweep_revisions"])
  assert any(line.startswith("stage sweep_revisions: done") for line in log), log
  assert marker(workdir, "sweep_revisions")["summary"]["units_run"] == 0
  rows = _revision_rows(workdir)
  assert rows[:len(kept)] == kept
  task = get_task(config.task)
  rates = _rates(config, workdir)
  # Per question: the split's policy FLOPs (a shared first context prefilled
  # once), the pool's, and the two verifiers' over the split's 4 attempts.
  contexts, tokens = np.array([[[10, 50], [10, 50]]]), np.full((1, 2, 2), 30)
  split_policy = revision_pool.policy_flops(rates["revision"], contexts, tokens)[0]
  # The pool ran a group at a time; each group's chains share a first context.
  pool_policy = sum(revision_pool.policy_flops(rates["revision"], np.array([group]),
                                               np.full((1, len(group), len(group[0])), 30))[0]
                    for group in ([[10, 50, 90, 130]], [[10, 50]], [[10], [10]]))
  verifier_flops = {
      "hierarchical": revision_pool.verifier_flops(rates["revision_verifier"], contexts,
                                                   tokens)[0],
      "hierarchical_prm": revision_pool.verifier_flops(rates["prm"], np.full((1, 2, 2), 10),
                                                       tokens)[0]}
  added = rows[len(kept):]
  assert sorted((r["question_index"], _split_of(r["params"])[2]) for r in added) == sorted(
      expected)
  for row in added:
    q, selector = row["question_index"], _split_of(row["params"])[2]
    where = (q, selector)
    assert row["answer"] == expected[where], where
    assert row["correct"] == (expected[where] == test[q].answer), where
    assert row["correct"] == task.grade(row["answer"], test[q].answer), where
    assert (row["budget"], row["generations"], row["level"]) == (4, 4, test[q].level), where
    assert row["flops"] == pytest.approx(split_policy + verifier_flops.get(selector, 0.0)), where
    assert row["seconds"] == pytest.approx(4.0 / 2 * split_policy / pool_policy), where


def _without_revision_sweep(finished: FinishedStudy, destination: str) -> str:
  """A copy of the finished workdir as before its revision sweep: no table,
  no saved units, no marker."""
  workdir = finished.copy(destination)
  remove(workdir, REVISION_TABLE, REVISION_TABLE + ".meta.json", REVISION_UNITS,
         layout.marker("sweep_revisions"))
  return workdir


def test_revision_sweep_rerun_with_the_same_seed_writes_the_same_rows(finished, tmp_path):
  """Fails if the revision sweep's rows depend on anything but the seed and
  the unit (split and questions): e.g. on wall time or on a random stream
  shared across units."""
  workdir = _without_revision_sweep(finished, str(tmp_path / "workdir"))
  log = run_stages(tiny_config(), workdir, ["sweep_revisions"])
  assert any(line.startswith("stage sweep_revisions: done") for line in log), log
  original = _revision_rows(finished.workdir)
  assert without_seconds(_revision_rows(workdir)) == without_seconds(original)
  summary = marker(workdir, "sweep_revisions")["summary"]
  original_summary = marker(finished.workdir, "sweep_revisions")["summary"]
  for field in ("accuracy", "sequential_vs_parallel", "transitions", "longest_chains"):
    assert summary[field] == original_summary[field], field


@pytest.fixture(scope="session")
def revision_sweep_killed_and_resumed(finished, tmp_path_factory) -> KilledAndResumed:
  """A revision sweep killed while appending its 2nd pool's rows (4 of them
  written, the 5th cut mid-line), after saving that pool: the 1st pool's
  file (its rows all in the table) and the 3rd's (not yet run) deleted;
  re-run.

  `after_kill` is (table bytes, {kept pool file: (inode, mtime in ns, bytes)}).
  """
  config = tiny_config()
  per_question = len(TINY_REVISION_SPLITS) * len(REVISION_SELECTORS)

  def as_a_kill_left_it(workdir: str) -> tuple[bytes, dict]:
    remove(workdir, layout.marker("sweep_revisions"))
    units = [unit for unit, _ in _pools(workdir)]
    assert [(u.first, u.last) for u in units] == [(0, 2), (2, 4), (4, 6)]
    assert config.sweep_revisions.num_questions == 6
    path = os.path.join(workdir, REVISION_TABLE)
    with open(path, "rb") as f:
      lines = f.read().splitlines(keepends=True)
    written = 2 * per_question + 4  # the 1st pool's rows and 4 of the 2nd's
    kept_rows = b"".join(lines[:written])
    with open(path, "wb") as f:
      f.write(kept_rows + lines[written][:40])  # a cut row, no newline
    names = [unit.file_name for unit in units]
    remove(workdir, *(os.path.join(REVISION_UNITS, name) for name in (names[0], names[2])))
    unit_path = os.path.join(workdir, REVISION_UNITS, names[1])
    with open(unit_path, "rb") as f:
      kept = {names[1]: (os.stat(unit_path).st_ino, os.stat(unit_path).st_mtime_ns, f.read())}
    return kept_rows, kept

  return killed_and_resumed(
      finished.copy(str(tmp_path_factory.mktemp("revisions_resumed") / "workdir")),
      ["sweep_revisions"], cut=as_a_kill_left_it)


def test_revision_sweep_resumed_after_a_kill_gives_the_uninterrupted_table(
    finished, revision_sweep_killed_and_resumed):
  """Fails if a resumed revision sweep's table differs from the uninterrupted
  one (a row lost, repeated, out of order, or from a pool run again with
  another random stream), if the rows present are rewritten rather than kept
  as the file's first lines, or if the cut row survives."""
  run = revision_sweep_killed_and_resumed
  assert_resumed_equals_uninterrupted(
      run, finished, "sweep_revisions",
      {REVISION_TABLE: lambda path: without_seconds(outcomes.read_table(path))},
      summary_fields=("accuracy", "sequential_vs_parallel"))
  kept_rows, _ = run.after_kill
  with open(os.path.join(run.workdir, REVISION_TABLE), "rb") as f:
    assert f.read().startswith(kept_rows)


def test_revision_sweep_resumed_after_a_kill_runs_only_the_pools_it_lacks(
    finished, revision_sweep_killed_and_resumed):
  """Fails if the re-run runs again a pool whose rows are all in the table
  (the 1st, its file deleted) or one saved before the kill (the 2nd, whose
  rows were cut short), rewrites a saved pool, or runs the missing one
  otherwise than the uninterrupted sweep did."""
  run = revision_sweep_killed_and_resumed
  _, kept_units = run.after_kill
  for name, before in kept_units.items():
    unit_path = os.path.join(run.workdir, REVISION_UNITS, name)
    with open(unit_path, "rb") as f:
      assert (os.stat(unit_path).st_ino, os.stat(unit_path).st_mtime_ns, f.read()) == before, \
          f"{name} was rewritten"
  original_units = _unit_files(finished.workdir)
  summary = marker(run.workdir, "sweep_revisions")["summary"]
  assert summary["num_units"] == len(original_units) == 3
  assert summary["units_run"] == 1
  name = original_units[2]
  resumed = read_json(os.path.join(run.workdir, REVISION_UNITS, name))
  original = read_json(os.path.join(finished.workdir, REVISION_UNITS, name))
  assert {k: v for k, v in resumed.items() if k != "seconds"} == {
      k: v for k, v in original.items() if k != "seconds"}, name


@pytest.mark.parametrize("killed", [False, True], ids=["finished", "killed"])
def test_revision_sweep_with_other_rows_names_the_field_and_leaves_the_table_untouched(
    finished, tmp_path, killed):
  """Fails if a revision sweep with another `sweep_revisions.rows` (other
  units, so other random streams) appends to or rewrites a table made with
  the tiny config's, or reports it other than as a one-line error naming the
  field and both values: with the sweep finished (its stage record) and
  killed before its record (only the table's meta remembers)."""
  workdir = finished.copy(str(tmp_path / "workdir"))
  if killed:
    os.remove(os.path.join(workdir, "stages", "sweep_revisions.json"))
  config = tiny_config()
  rows = config.sweep_revisions.rows
  config.sweep_revisions.rows = rows // 2
  with open(os.path.join(workdir, REVISION_TABLE), "rb") as f:
    table = f.read()
  message = expect_one_line_error(workdir, ["sweep_revisions"], "sweep_revisions.rows",
                                   config=config)
  assert f"sweep_revisions.rows={rows} in the workdir, {rows // 2} now" in message
  with open(os.path.join(workdir, REVISION_TABLE), "rb") as f:
    assert f.read() == table


def test_revision_sweep_of_splits_already_in_the_table_runs_nothing(finished, tmp_path):
  """Fails if `sweep_revisions.splits` (which rows to run, not what they
  hold) is taken for another setup of the table, or if a sweep of splits
  whose rows are all present runs a unit or changes the table."""
  workdir = finished.copy(str(tmp_path / "workdir"))
  os.remove(os.path.join(workdir, "stages", "sweep_revisions.json"))
  with open(os.path.join(workdir, REVISION_TABLE), "rb") as f:
    table = f.read()
  config = tiny_config()
  config.sweep_revisions.splits = ("2x2", "1x1")
  log = run_stages(config, workdir, ["sweep_revisions"])
  assert any(line.startswith("stage sweep_revisions: done") for line in log), log
  summary = marker(workdir, "sweep_revisions")["summary"]
  # Pools of 2x2 and 1x1 only: chains of 2, 2 attempts, a question per pool.
  assert summary["units_run"] == 0 and summary["num_units"] == 6
  with open(os.path.join(workdir, REVISION_TABLE), "rb") as f:
    assert f.read() == table


# What each revision stage leaves in the workdir, besides its marker.
