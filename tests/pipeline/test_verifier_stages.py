"""The verifiers' stages (`pipeline/verifier_stages.py`): labels and training
resumed after a kill, missing prerequisites and checkpoint guards, and what
`eval_prm` writes."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config
from stage_runs import (
  KilledAndResumed,
  assert_resumed_equals_uninterrupted,
  expect_one_line_error,
  kill_after_call,
  kill_at_log,
  killed_and_resumed,
  marker,
  metrics_of,
  read_json,
  through_eval_policy,
  through_prm_labels,
)

from ttscale import io_utils, layout, pipeline
from ttscale.data.tokenizer import Tokenizer, train_tokenizer
from ttscale.tasks.arith import ERROR_KINDS


def _part_files(workdir: str) -> dict[str, tuple[int, int, bytes]]:
  """{part file name: (inode, mtime in ns, content)} of `prm_labels/parts`."""
  parts_dir = os.path.join(workdir, "prm_labels", "parts")
  files = {}
  for name in sorted(os.listdir(parts_dir)):
    path = os.path.join(parts_dir, name)
    with open(path, "rb") as f:
      files[name] = (os.stat(path).st_ino, os.stat(path).st_mtime_ns, f.read())
  return files


@pytest.fixture(scope="session")
def prm_labels_killed_and_resumed(finished, tmp_path_factory) -> KilledAndResumed:
  """`prm_labels` killed (Ctrl-C) right after its 2nd rollout part was written, re-run."""
  workdir = through_eval_policy(
      finished, str(tmp_path_factory.mktemp("prm_labels_resumed") / "workdir"))
  parts_dir = os.path.join(workdir, layout.PRM_LABELS_PARTS)

  def after_kill(workdir: str) -> dict:
    assert not os.path.exists(os.path.join(workdir, layout.PRM_LABELS))
    return _part_files(workdir)

  return killed_and_resumed(
      workdir, ["prm_labels"], cut=after_kill,
      kill=kill_after_call(io_utils, "write_json_atomic", 2,
                           when=lambda path, value: os.path.dirname(
                               os.path.abspath(path)) == parts_dir))


def test_prm_labels_resumed_after_a_kill_gives_the_uninterrupted_labels(
    finished, prm_labels_killed_and_resumed):
  """Fails if a resumed `prm_labels` labels other steps, in another order, or
  with other rollout counts than an uninterrupted run (e.g. parts re-cut on
  resume, a part's randomness depending on what ran before it in-process)."""
  run = prm_labels_killed_and_resumed
  assert_resumed_equals_uninterrupted(run, finished, "prm_labels",
                                      {layout.PRM_LABELS: io_utils.read_jsonl},
                                      summary_fields=("num_solutions", "num_steps"))
  # Every part holds the counts and token totals of the uninterrupted run's.
  parts = {name: json.loads(content) for name, (_, _, content) in _part_files(run.workdir).items()}
  original_parts = {name: json.loads(content)
                    for name, (_, _, content) in _part_files(finished.workdir).items()}
  assert sorted(parts) == sorted(original_parts)
  for name, part in parts.items():
    assert part["num_correct"] == original_parts[name]["num_correct"], name
    assert part["generated_tokens"] == original_parts[name]["generated_tokens"], name


def test_prm_labels_resume_reuses_the_parts_written_before_the_kill(
    finished, prm_labels_killed_and_resumed):
  """Fails if the kill did not land mid-stage (too few parts in the tiny
  config), if a re-run rewrites a finished part, or if the summary does not
  count the parts it found on disk."""
  run = prm_labels_killed_and_resumed
  original_summary = marker(finished.workdir, "prm_labels")["summary"]
  assert original_summary["num_parts"] > 2  # else the kill would not be mid-stage
  assert sorted(run.after_kill) == ["00000.json", "00001.json"]
  after_rerun = _part_files(run.workdir)
  for name, before in run.after_kill.items():
    assert after_rerun[name] == before, f"{name} was rewritten"
  summary = marker(run.workdir, "prm_labels")["summary"]
  assert summary["parts_resumed"] == 2
  assert summary["num_parts"] == original_summary["num_parts"] == len(after_rerun)
  timing = ("rollout_seconds", "rollout_tokens_per_second", "parts_resumed")
  assert ({k: v for k, v in summary.items() if k not in timing}
          == {k: v for k, v in original_summary.items() if k not in timing})


@pytest.fixture(scope="session")
def train_prm_killed_and_resumed(finished, tmp_path_factory) -> KilledAndResumed:
  """`train_prm` killed (Ctrl-C) after its step-3 checkpoint, at the step-6 log, re-run."""
  workdir = through_prm_labels(
      finished, str(tmp_path_factory.mktemp("train_prm_resumed") / "workdir"))
  state_dir = os.path.join(workdir, layout.checkpoints("prm", "state"))
  return killed_and_resumed(
      workdir, ["train_prm"], kill=kill_at_log("train_prm: step 6/"),
      cut=lambda workdir: sorted(n for n in os.listdir(state_dir) if n != "spec.json"))


def test_train_prm_resumed_after_a_kill_trains_only_the_remaining_steps(
    train_prm_killed_and_resumed):
  """Fails if the kill did not follow the step-3 checkpoint, or if the re-run
  starts over instead of resuming from it."""
  run = train_prm_killed_and_resumed
  assert run.after_kill == ["3"]
  assert "train_prm: resumed from the checkpoint at step 3" in run.resumed_log
  trained = [line.split()[2] for line in run.resumed_log
             if line.startswith("train_prm: step ") and "/" in line.split()[2]]
  assert trained == ["6/6"]


def test_train_prm_resumed_after_a_kill_matches_the_uninterrupted_run(
    finished, train_prm_killed_and_resumed):
  """Fails if the resumed run keeps another best step or validation loss, or
  logs other metric lines (e.g. the killed run's step-6 line left in the
  file, or an early-stopping history not read back from it)."""
  assert_resumed_equals_uninterrupted(
      train_prm_killed_and_resumed, finished, "train_prm",
      {layout.METRICS: metrics_of("train_prm", "tokens_per_second")},
      summary_fields=("best_step", "stopped_early", "best_validation_loss"))


def test_train_prm_resumed_after_a_kill_keeps_the_uninterrupted_best_parameters(
    finished, train_prm_killed_and_resumed):
  """Fails if the best checkpoint of the resumed run holds other parameters
  than the uninterrupted run's (another step, or a resume that drifted)."""
  run = train_prm_killed_and_resumed
  best_steps = [sorted(n for n in os.listdir(os.path.join(w, "prm", "best")) if n != "spec.json")
                for w in (run.workdir, finished.workdir)]
  assert best_steps[0] == best_steps[1]
  resumed = pipeline.Context(tiny_config(), run.workdir).load_verifier("prm").params
  original = pipeline.Context(tiny_config(), finished.workdir).load_verifier("prm").params
  for got, expected in zip(jax.tree.leaves(resumed), jax.tree.leaves(original), strict=True):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-6)


def test_train_prm_without_a_policy_names_train_policy_and_touches_nothing(
    finished, tmp_path):
  """Fails if `train_prm` in a workdir that has data but no policy reports
  anything but the missing policy stage, or writes before failing."""
  workdir = str(tmp_path / "workdir")
  os.makedirs(os.path.join(workdir, "stages"))
  shutil.copytree(os.path.join(finished.workdir, "data"), os.path.join(workdir, "data"))
  for name in (layout.TOKENIZER, layout.marker("data")):
    shutil.copyfile(os.path.join(finished.workdir, name), os.path.join(workdir, name))
  expect_one_line_error(workdir, ["train_prm"], "train_policy")


def test_train_prm_before_prm_labels_names_prm_labels_and_touches_nothing(
    finished, tmp_path):
  """Fails if `train_prm` with a policy but no labels reports anything but the
  missing `prm_labels` stage, or writes (checkpoint directories) first."""
  workdir = through_eval_policy(finished, str(tmp_path / "workdir"))
  expect_one_line_error(workdir, ["train_prm"], "prm_labels")


def test_eval_prm_before_train_prm_names_train_prm_and_touches_nothing(finished, tmp_path):
  """Fails if `eval_prm` with labels but no trained PRM reports anything but
  the missing `train_prm` stage, or samples and writes its pool first."""
  workdir = through_prm_labels(finished, str(tmp_path / "workdir"))
  expect_one_line_error(workdir, ["eval_prm"], "train_prm")


@pytest.mark.parametrize("stage", ["train_prm", "eval_prm"])
def test_prm_checkpoint_of_another_vocabulary_names_vocab_size_and_touches_nothing(
    finished, tmp_path, stage):
  """Fails if a PRM checkpoint made with another vocabulary than the workdir's
  tokenizer is used (or reported by a later field than `vocab_size`), or if
  the check writes anything."""
  workdir = str(tmp_path / "workdir")
  shutil.copytree(os.path.join(finished.workdir, "prm"), os.path.join(workdir, "prm"))
  original = Tokenizer.load(os.path.join(finished.workdir, "tokenizer.model"))
  # The workdir's characters plus letters: a bigger vocabulary.
  special_ids = {original.pad_id, original.unk_id, original.bos_id, original.eos_id,
                 original.step_id}
  pieces = [original.id_to_piece(i) for i in range(original.vocab_size)
            if i not in special_ids]
  texts = ["".join(pieces), "the quick brown fox jumps over the lazy dog"]
  tokenizer = train_tokenizer(texts, os.path.join(workdir, "tokenizer.model"))
  assert tokenizer.vocab_size > original.vocab_size
  message = expect_one_line_error(workdir, [stage], "vocab_size")
  assert f"vocab_size={original.vocab_size} in the workdir, {tokenizer.vocab_size} now" \
      in message


def test_finished_workdir_eval_prm_has_every_curve_at_every_budget(finished):
  """Fails if `eval_prm.json` lacks a section, a selection method (one per
  aggregation, the ORM ones, majority vote, pass@N) or a budget 1, 2, ...,
  pool_size, or if some method beats pass@N, the oracle, at some budget."""
  config = tiny_config()
  evaluation = read_json(os.path.join(finished.workdir, "eval_prm.json"))
  assert {"step_auc_vs_exact", "calibration", "accuracy_vs_n"} <= set(evaluation)
  assert set(evaluation["step_auc_vs_exact"]) == {"prm", "orm"}
  assert {"ece", "reliability"} <= set(evaluation["calibration"])
  assert os.path.getsize(os.path.join(finished.workdir, "eval_prm.png")) > 0
  pool_size = config.eval_prm.pool_size
  assert evaluation["pool_size"] == pool_size
  budgets = [str(2 ** i) for i in range(pool_size.bit_length())]
  assert budgets[0] == "1" and budgets[-1] == str(pool_size)
  curves = evaluation["accuracy_vs_n"]
  for how in config.eval_prm.aggregations:
    assert any(f"({how})" in method and "PRM" in method for method in curves), (how, curves)
  assert any("ORM" in method for method in curves)
  assert "majority vote" in curves and "pass@N" in curves
  for method, curve in curves.items():
    assert list(curve) == budgets, method
    for budget, (mean, stderr) in curve.items():
      assert 0.0 <= mean <= 1.0 and stderr >= 0.0, (method, budget)
      assert curves["pass@N"][budget][0] >= mean - 1e-9, (method, budget)


def test_finished_workdir_eval_prm_scores_by_first_error_cover_the_pool(finished):
  """Fails if the PRM's scores by first-error kind do not count every pooled
  solution once, name a kind the task does not, or hold a score outside [0, 1]."""
  config = tiny_config()
  evaluation = read_json(os.path.join(finished.workdir, "eval_prm.json"))
  by_kind = evaluation["prm_score_by_first_error"]
  assert set(by_kind) <= {"right", *ERROR_KINDS}
  assert sum(v["count"] for v in by_kind.values()) == (
      config.eval_prm.num_questions * config.eval_prm.pool_size)
  assert all(0.0 <= v["mean_score"] <= 1.0 for v in by_kind.values())


# ------------------------------------------------------------------- search
