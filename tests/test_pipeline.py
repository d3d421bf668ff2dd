"""Tests of the staged pipeline on the `tiny` config: outputs, skipping, resuming, guards.

One session-scoped run builds a finished workdir; tests that change a workdir
work on a copy of it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ttscale import io_utils, outcomes, pipeline
from ttscale.data import arith_builder
from ttscale.data.tokenizer import Tokenizer, train_tokenizer
from ttscale.search.budget import budget_grid, paper_settings
from ttscale.tasks import get_task
from ttscale.testing import tree_digest

CONFIG_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "arith.py")
POLICY_STAGES = ("data", "train_policy", "eval_policy")
STAGE_NAMES = (*POLICY_STAGES, "prm_labels", "train_prm", "train_orm", "eval_prm",
               "sweep_search")
TRAINING_STAGES = ("train_policy", "train_prm", "train_orm")


def _tiny_config():
  """A fresh `configs/arith.py:tiny` (tests may change it)."""
  spec = importlib.util.spec_from_file_location("arith_config", CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")




def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _read_metrics(workdir: str, stage: str | None = None) -> list[dict]:
  """The metric records of `stage` (default: of every stage), in file order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if stage is None or r["stage"] == stage]


def _without_speed(evaluation: dict) -> dict:
  """An `eval_policy.json` without its wall-clock field."""
  return {k: v for k, v in evaluation.items() if k != "sampled_tokens_per_second"}


def _run(config, workdir: str, stages=None) -> list[str]:
  """Runs the pipeline; returns its log lines."""
  log: list[str] = []
  pipeline.run(config, workdir, stages, log=log.append)
  return log


class _Finished:
  """A workdir after one full run, and that run's log."""

  def __init__(self, workdir: str, log: list[str]):
    self.workdir = workdir
    self.log = log

  def copy(self, destination: str) -> str:
    shutil.copytree(self.workdir, destination)
    return destination


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> _Finished:
  workdir = str(tmp_path_factory.mktemp("pipeline") / "workdir")
  return _Finished(workdir, _run(_tiny_config(), workdir))


def test_full_run_writes_markers_metrics_and_one_eval_row_per_test_level(finished):
  config = _tiny_config()
  for name in STAGE_NAMES:
    assert any(line.startswith(f"stage {name}: done") for line in finished.log), finished.log
    marker = _read_json(os.path.join(finished.workdir, "stages", f"{name}.json"))
    assert marker["stage"] == name
  metrics = _read_metrics(finished.workdir)
  assert {r["stage"] for r in metrics} == set(TRAINING_STAGES)
  for stage in TRAINING_STAGES:  # log_every=3, num_steps=6 (the verifiers: + validation)
    steps = [r["step"] for r in metrics if r["stage"] == stage and "loss" in r]
    assert steps == [3, 6], (stage, steps)

  sources = arith_builder.build_arith_data(config.task, config.data,
                                           os.path.join(finished.workdir, "data"))
  test_levels = [e.level for e in arith_builder.read_examples(sources["test"])]
  evaluation = _read_json(os.path.join(finished.workdir, "eval_policy.json"))
  rows = evaluation["levels"]
  assert sorted(rows) == sorted(str(level) for level in set(test_levels))
  for level, row in rows.items():
    assert row["num_questions"] == test_levels.count(int(level))
    assert 0.0 <= row["pass_at_1"] <= 1.0
    assert 0.0 <= row["greedy_accuracy"] <= 1.0
  assert sum(row["num_questions"] for row in rows.values()) == config.data.num_test
  assert evaluation["num_samples"] == config.eval.num_samples


def test_rerun_of_a_finished_workdir_skips_every_stage_and_changes_nothing(
    finished, tmp_path):
  workdir = finished.copy(str(tmp_path / "workdir"))
  before = tree_digest(workdir)
  started = time.time()
  log = _run(_tiny_config(), workdir)
  seconds = time.time() - started
  for name in STAGE_NAMES:
    assert any(line.startswith(f"stage {name}: already done") for line in log), log
  assert not any(line.endswith(": running") for line in log), log
  assert tree_digest(workdir) == before  # markers, metrics, eval: all as they were
  assert seconds < 5.0


@pytest.fixture(scope="session")
def resumed_after_last_checkpoint(finished, tmp_path_factory):
  """A copy killed after the final checkpoint, before the stage markers, re-run."""
  workdir = finished.copy(str(tmp_path_factory.mktemp("resumed") / "workdir"))
  os.remove(os.path.join(workdir, "stages", "train_policy.json"))
  os.remove(os.path.join(workdir, "stages", "eval_policy.json"))
  return workdir, _run(_tiny_config(), workdir)


def test_resume_after_the_last_checkpoint_trains_no_step_again(
    finished, resumed_after_last_checkpoint):
  workdir, log = resumed_after_last_checkpoint
  assert "train_policy: resumed from the checkpoint at step 6" in log
  assert not any(line.startswith("train_policy: step ") for line in log), log
  assert any(line.startswith("stage data: already done") for line in log)
  with open(os.path.join(workdir, "metrics.jsonl"), "rb") as resumed, \
      open(os.path.join(finished.workdir, "metrics.jsonl"), "rb") as original:
    assert resumed.read() == original.read()


def test_resume_after_the_last_checkpoint_reproduces_the_evaluation(
    finished, resumed_after_last_checkpoint):
  workdir, _ = resumed_after_last_checkpoint
  for name in STAGE_NAMES:
    assert os.path.exists(os.path.join(workdir, "stages", f"{name}.json"))
  resumed = _read_json(os.path.join(workdir, "eval_policy.json"))
  original = _read_json(os.path.join(finished.workdir, "eval_policy.json"))
  assert _without_speed(resumed) == _without_speed(original)


@pytest.fixture(scope="session")
def resumed_mid_training(finished, tmp_path_factory):
  """A copy killed after the step-3 checkpoint (step 6 and the markers gone), re-run."""
  workdir = finished.copy(str(tmp_path_factory.mktemp("resumed_mid") / "workdir"))
  shutil.rmtree(os.path.join(workdir, "policy", "6"))
  os.remove(os.path.join(workdir, "stages", "train_policy.json"))
  os.remove(os.path.join(workdir, "stages", "eval_policy.json"))
  return workdir, _run(_tiny_config(), workdir)


def test_resume_from_a_mid_training_checkpoint_trains_only_the_remaining_steps(
    finished, resumed_mid_training):
  workdir, log = resumed_mid_training
  assert "train_policy: resumed from the checkpoint at step 3" in log
  trained = [line.split()[2] for line in log if line.startswith("train_policy: step ")]
  assert trained == ["6/6"]  # log_every=3: steps 4-6 in one record
  original_steps = [r["step"] for r in _read_metrics(finished.workdir, "train_policy")]
  assert [r["step"] for r in _read_metrics(workdir, "train_policy")] == original_steps


def test_resume_from_a_mid_training_checkpoint_reproduces_the_evaluation(
    finished, resumed_mid_training):
  workdir, _ = resumed_mid_training
  resumed = _read_json(os.path.join(workdir, "eval_policy.json"))
  original = _read_json(os.path.join(finished.workdir, "eval_policy.json"))
  assert _without_speed(resumed) == _without_speed(original)


def test_resume_from_a_mid_training_checkpoint_logs_the_uninterrupted_metrics(
    finished, resumed_mid_training):
  workdir, _ = resumed_mid_training
  original = [r["loss"] for r in _read_metrics(finished.workdir, "train_policy")]
  resumed = [r["loss"] for r in _read_metrics(workdir, "train_policy")]
  assert resumed == pytest.approx(original, abs=1e-6)


def test_unknown_stage_is_rejected_before_anything_is_written(tmp_path):
  """Fails if an unknown `--stages` entry is accepted, is not named, the
  message does not list every stage in pipeline order (through
  `sweep_search`), or anything is written (or the workdir created) first."""
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / "sentinel").write_text("untouched")
  before = tree_digest(str(workdir))
  with pytest.raises(ValueError) as error:
    pipeline.run(_tiny_config(), str(workdir), ["data", "bogus"], log=lambda _: None)
  message = str(error.value)
  assert "--stages" in message and "'bogus'" in message
  assert ", ".join(STAGE_NAMES) in message
  assert tree_digest(str(workdir)) == before
  missing = tmp_path / "never_created"
  with pytest.raises(ValueError, match="bogus"):
    pipeline.run(_tiny_config(), str(missing), ["bogus"], log=lambda _: None)
  assert not missing.exists()


def test_resume_with_another_model_shape_names_the_field_and_touches_nothing(
    finished, tmp_path):
  # Killed before the stage markers were written, restarted with another shape.
  workdir = finished.copy(str(tmp_path / "workdir"))
  os.remove(os.path.join(workdir, "stages", "train_policy.json"))
  os.remove(os.path.join(workdir, "stages", "eval_policy.json"))
  config = _tiny_config()
  config.model.num_layers = 2
  before = tree_digest(workdir)
  with pytest.raises(ValueError, match=r"model\.num_layers=1 in the workdir, 2 now"):
    _run(config, workdir)
  assert tree_digest(workdir) == before


def test_rerun_of_a_finished_workdir_with_another_model_shape_is_refused(finished, tmp_path):
  workdir = finished.copy(str(tmp_path / "workdir"))
  config = _tiny_config()
  config.model.num_layers = 2
  before = tree_digest(workdir)
  with pytest.raises(ValueError, match=r"model\.num_layers=1 in the workdir, 2 now"):
    _run(config, workdir)
  assert tree_digest(workdir) == before


def test_evaluation_with_another_tokenizer_names_it_and_leaves_the_workdir_untouched(
    finished, tmp_path):
  workdir = finished.copy(str(tmp_path / "workdir"))
  os.remove(os.path.join(workdir, "stages", "eval_policy.json"))
  tokenizer_path = os.path.join(workdir, "tokenizer.model")
  original = Tokenizer.load(tokenizer_path)
  # The same characters with their frequencies reversed: same vocabulary size
  # (so the model shape still matches), other ids.
  special_ids = {original.pad_id, original.unk_id, original.bos_id, original.eos_id,
                 original.step_id}
  pieces = [original.id_to_piece(i) for i in range(original.vocab_size)
            if i not in special_ids]
  corpus = ["".join(piece * (count + 1) for count, piece in enumerate(pieces))]
  replacement = train_tokenizer(corpus, str(tmp_path / "other.model"))
  assert replacement.vocab_size == original.vocab_size
  assert replacement.fingerprint != original.fingerprint
  shutil.copyfile(str(tmp_path / "other.model"), tokenizer_path)
  before = tree_digest(workdir)
  with pytest.raises(ValueError, match=f"tokenizer='{original.fingerprint}' in the workdir"):
    _run(_tiny_config(), workdir, ["eval_policy"])
  assert tree_digest(workdir) == before


_LOAD_POLICY_CHECKSUM = """
import importlib.util, sys
import jax, numpy as np
from ttscale import pipeline
spec = importlib.util.spec_from_file_location("arith_config", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
policy = pipeline.Context(module.get_config("tiny"), sys.argv[2]).load_policy()
print(jax.device_count(), sum(float(np.abs(np.asarray(x)).sum())
                              for x in jax.tree.leaves(policy.params)))
"""


def test_a_policy_saved_on_eight_devices_loads_on_one(finished):
  # The session trained on 8 devices; a user may evaluate on one.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = os.path.dirname(CONFIG_PATH) + os.pathsep + os.path.join(
      os.path.dirname(CONFIG_PATH), os.pardir)
  process = subprocess.run(
      [sys.executable, "-c", _LOAD_POLICY_CHECKSUM, CONFIG_PATH, finished.workdir],
      capture_output=True, text=True, env=env, timeout=120, check=False)
  assert process.returncode == 0, process.stderr[-2000:]
  devices, checksum = process.stdout.split()
  policy = pipeline.Context(_tiny_config(), finished.workdir).load_policy()
  expected = sum(float(np.abs(np.asarray(x)).sum()) for x in jax.tree.leaves(policy.params))
  assert int(devices) == 1
  assert float(checksum) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ verifiers


def _through_eval_policy(finished: _Finished, destination: str) -> str:
  """A new workdir holding only the finished one's data and policy stages.

  Its metrics file keeps only the policy's lines, as after a run that ended
  with `eval_policy`.
  """
  os.makedirs(os.path.join(destination, "stages"))
  for name in ("data", "policy"):
    shutil.copytree(os.path.join(finished.workdir, name), os.path.join(destination, name))
  for name in ("tokenizer.model", "eval_policy.json",
               *(os.path.join("stages", f"{stage}.json") for stage in POLICY_STAGES)):
    shutil.copyfile(os.path.join(finished.workdir, name), os.path.join(destination, name))
  with open(os.path.join(destination, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in _read_metrics(finished.workdir, "train_policy"))
  return destination


def _through_prm_labels(finished: _Finished, destination: str) -> str:
  """`_through_eval_policy` plus the finished workdir's `prm_labels` stage."""
  _through_eval_policy(finished, destination)
  shutil.copytree(os.path.join(finished.workdir, "prm_labels"),
                  os.path.join(destination, "prm_labels"))
  shutil.copyfile(os.path.join(finished.workdir, "stages", "prm_labels.json"),
                  os.path.join(destination, "stages", "prm_labels.json"))
  return destination


def _marker(workdir: str, stage: str) -> dict:
  return _read_json(os.path.join(workdir, "stages", f"{stage}.json"))


def _part_files(workdir: str) -> dict[str, tuple[int, int, bytes]]:
  """{part file name: (inode, mtime in ns, content)} of `prm_labels/parts`."""
  parts_dir = os.path.join(workdir, "prm_labels", "parts")
  files = {}
  for name in sorted(os.listdir(parts_dir)):
    path = os.path.join(parts_dir, name)
    with open(path, "rb") as f:
      files[name] = (os.stat(path).st_ino, os.stat(path).st_mtime_ns, f.read())
  return files


class _KilledAndResumed:
  """A workdir whose stage was killed once and re-run."""

  def __init__(self, workdir: str, killed_log: list[str], after_kill, resumed_log: list[str]):
    self.workdir = workdir
    self.killed_log = killed_log
    self.after_kill = after_kill  # what the kill left behind (per fixture)
    self.resumed_log = resumed_log


@pytest.fixture(scope="session")
def prm_labels_killed_and_resumed(finished, tmp_path_factory) -> _KilledAndResumed:
  """`prm_labels` killed (Ctrl-C) right after its 2nd rollout part was written, re-run."""
  workdir = _through_eval_policy(
      finished, str(tmp_path_factory.mktemp("prm_labels_resumed") / "workdir"))
  parts_dir = os.path.join(workdir, "prm_labels", "parts")
  written: list[str] = []
  write_json_atomic = io_utils.write_json_atomic

  def write_then_kill_at_the_second_part(path, value):
    write_json_atomic(path, value)
    if os.path.dirname(os.path.abspath(path)) == parts_dir:
      written.append(path)
      if len(written) == 2:
        raise KeyboardInterrupt

  killed_log: list[str] = []
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(io_utils, "write_json_atomic", write_then_kill_at_the_second_part)
    with pytest.raises(KeyboardInterrupt):
      pipeline.run(_tiny_config(), workdir, ["prm_labels"], log=killed_log.append)
  after_kill = _part_files(workdir)
  assert not os.path.exists(os.path.join(workdir, "stages", "prm_labels.json"))
  assert not os.path.exists(os.path.join(workdir, "prm_labels", "labels.jsonl"))
  return _KilledAndResumed(workdir, killed_log, after_kill,
                           _run(_tiny_config(), workdir, ["prm_labels"]))


def test_prm_labels_resumed_after_a_kill_gives_the_uninterrupted_labels(
    finished, prm_labels_killed_and_resumed):
  """Fails if a resumed `prm_labels` labels other steps, in another order, or
  with other rollout counts than an uninterrupted run (e.g. parts re-cut on
  resume, a part's randomness depending on what ran before it in-process)."""
  run = prm_labels_killed_and_resumed
  assert any(line.startswith("stage prm_labels: done") for line in run.resumed_log)
  resumed = io_utils.read_jsonl(os.path.join(run.workdir, "prm_labels", "labels.jsonl"))
  original = io_utils.read_jsonl(os.path.join(finished.workdir, "prm_labels", "labels.jsonl"))
  assert len(resumed) == len(original) == _marker(finished.workdir, "prm_labels")[
      "summary"]["num_solutions"]
  for number, (got, expected) in enumerate(zip(resumed, original, strict=True)):
    assert got == expected, f"record {number}"
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
  original_summary = _marker(finished.workdir, "prm_labels")["summary"]
  assert original_summary["num_parts"] > 2  # else the kill would not be mid-stage
  assert sorted(run.after_kill) == ["00000.json", "00001.json"]
  after_rerun = _part_files(run.workdir)
  for name, before in run.after_kill.items():
    assert after_rerun[name] == before, f"{name} was rewritten"
  summary = _marker(run.workdir, "prm_labels")["summary"]
  assert summary["parts_resumed"] == 2
  assert summary["num_parts"] == original_summary["num_parts"] == len(after_rerun)
  timing = ("rollout_seconds", "rollout_tokens_per_second", "parts_resumed")
  assert ({k: v for k, v in summary.items() if k not in timing}
          == {k: v for k, v in original_summary.items() if k not in timing})


@pytest.fixture(scope="session")
def train_prm_killed_and_resumed(finished, tmp_path_factory) -> _KilledAndResumed:
  """`train_prm` killed (Ctrl-C) after its step-3 checkpoint, at the step-6 log, re-run."""
  workdir = _through_prm_labels(
      finished, str(tmp_path_factory.mktemp("train_prm_resumed") / "workdir"))
  killed_log: list[str] = []

  def log_then_kill_at_step_6(line: str) -> None:
    killed_log.append(line)
    if line.startswith("train_prm: step 6/"):
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    pipeline.run(_tiny_config(), workdir, ["train_prm"], log=log_then_kill_at_step_6)
  state_dir = os.path.join(workdir, "prm", "state")
  after_kill = sorted(name for name in os.listdir(state_dir) if name != "spec.json")
  return _KilledAndResumed(workdir, killed_log, after_kill,
                           _run(_tiny_config(), workdir, ["train_prm"]))


def _without_tokens_per_second(records: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in records]


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
  run = train_prm_killed_and_resumed
  resumed = _marker(run.workdir, "train_prm")["summary"]
  original = _marker(finished.workdir, "train_prm")["summary"]
  assert resumed["best_step"] == original["best_step"]
  assert resumed["stopped_early"] == original["stopped_early"]
  assert resumed["best_validation_loss"] == pytest.approx(
      original["best_validation_loss"], abs=1e-6)
  got = _without_tokens_per_second(_read_metrics(run.workdir, "train_prm"))
  expected = _without_tokens_per_second(_read_metrics(finished.workdir, "train_prm"))
  assert [(r["step"], sorted(r)) for r in got] == [(r["step"], sorted(r)) for r in expected]
  for resumed_record, original_record in zip(got, expected, strict=True):
    assert resumed_record == pytest.approx(original_record, abs=1e-6)


def test_train_prm_resumed_after_a_kill_keeps_the_uninterrupted_best_parameters(
    finished, train_prm_killed_and_resumed):
  """Fails if the best checkpoint of the resumed run holds other parameters
  than the uninterrupted run's (another step, or a resume that drifted)."""
  run = train_prm_killed_and_resumed
  best_steps = [sorted(n for n in os.listdir(os.path.join(w, "prm", "best")) if n != "spec.json")
                for w in (run.workdir, finished.workdir)]
  assert best_steps[0] == best_steps[1]
  resumed = pipeline.Context(_tiny_config(), run.workdir).load_verifier("prm").params
  original = pipeline.Context(_tiny_config(), finished.workdir).load_verifier("prm").params
  for got, expected in zip(jax.tree.leaves(resumed), jax.tree.leaves(original), strict=True):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-6)


def _expect_one_line_error(workdir: str, stages: list[str], *needles: str,
                           config=None) -> str:
  """Runs `stages` (with `config`, default tiny); checks a one-line ValueError
  naming `needles`, nothing written."""
  before = tree_digest(workdir)
  with pytest.raises(ValueError) as error:
    _run(config or _tiny_config(), workdir, stages)
  message = str(error.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, message
  assert tree_digest(workdir) == before
  return message


def test_train_prm_without_a_policy_names_train_policy_and_touches_nothing(
    finished, tmp_path):
  """Fails if `train_prm` in a workdir that has data but no policy reports
  anything but the missing policy stage, or writes before failing."""
  workdir = str(tmp_path / "workdir")
  os.makedirs(os.path.join(workdir, "stages"))
  shutil.copytree(os.path.join(finished.workdir, "data"), os.path.join(workdir, "data"))
  for name in ("tokenizer.model", os.path.join("stages", "data.json")):
    shutil.copyfile(os.path.join(finished.workdir, name), os.path.join(workdir, name))
  _expect_one_line_error(workdir, ["train_prm"], "train_policy")


def test_train_prm_before_prm_labels_names_prm_labels_and_touches_nothing(
    finished, tmp_path):
  """Fails if `train_prm` with a policy but no labels reports anything but the
  missing `prm_labels` stage, or writes (checkpoint directories) first."""
  workdir = _through_eval_policy(finished, str(tmp_path / "workdir"))
  _expect_one_line_error(workdir, ["train_prm"], "prm_labels")


def test_eval_prm_before_train_prm_names_train_prm_and_touches_nothing(finished, tmp_path):
  """Fails if `eval_prm` with labels but no trained PRM reports anything but
  the missing `train_prm` stage, or samples and writes its pool first."""
  workdir = _through_prm_labels(finished, str(tmp_path / "workdir"))
  _expect_one_line_error(workdir, ["eval_prm"], "train_prm")


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
  message = _expect_one_line_error(workdir, [stage], "vocab_size")
  assert f"vocab_size={original.vocab_size} in the workdir, {tokenizer.vocab_size} now" \
      in message


def test_finished_workdir_eval_prm_has_every_curve_at_every_budget(finished):
  """Fails if `eval_prm.json` lacks a section, a selection method (one per
  aggregation, the ORM ones, majority vote, pass@N) or a budget 1, 2, ...,
  pool_size, or if some method beats pass@N, the oracle, at some budget."""
  config = _tiny_config()
  evaluation = _read_json(os.path.join(finished.workdir, "eval_prm.json"))
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


# ------------------------------------------------------------------- search

SEARCH_TABLE = os.path.join("outcomes", "search.jsonl")

# paper_settings(budget_grid(4)), the tiny sweep, as (method, params, N):
# best-of-N at every N; at N=4, beam and lookahead k=3 with M=√N=2 and M=4,
# and lookahead k=1 with M=√N.
TINY_SEARCH_SETTINGS = (
    ("best_of_n", "", 1), ("best_of_n", "", 2), ("best_of_n", "", 4),
    ("beam", "M=2,k=0", 4), ("lookahead", "M=2,k=3", 4),
    ("beam", "M=4,k=0", 4), ("lookahead", "M=4,k=3", 4),
    ("lookahead", "M=2,k=1", 4))


def _search_config(*methods: str):
  """The tiny config, its sweep restricted to `methods`."""
  config = _tiny_config()
  config.search.methods = methods
  return config


def _search_rows(workdir: str) -> list[dict]:
  return outcomes.read_table(os.path.join(workdir, SEARCH_TABLE))


def _without_seconds(rows: list[dict]) -> list[dict]:
  """Rows without their wall-clock field."""
  return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _of_methods(rows: list[dict], methods) -> list[dict]:
  return [row for row in rows if row["method"] in methods]


def _without_sweep(finished: _Finished, destination: str) -> str:
  """A copy of the finished workdir as before its sweep: no table, no marker."""
  workdir = finished.copy(destination)
  shutil.rmtree(os.path.join(workdir, "outcomes"))
  os.remove(os.path.join(workdir, "stages", "sweep_search.json"))
  return workdir


def _generations(method: str, params: str, budget: int) -> int:
  """The paper's count, from the table's own fields: N, or N·(k+1) with lookahead."""
  if method != "lookahead":
    return budget
  return budget * (int(dict(p.split("=") for p in params.split(","))["k"]) + 1)


def test_tiny_sweep_settings_are_the_papers_at_budgets_up_to_four():
  """Fails if the tiny config's sweep is not the eight settings the search
  tests below expect (so their counts would test another sweep)."""
  search = _tiny_config().search
  assert (search.max_budget, search.best_of_n_max_budget) == (4, 4)
  settings = paper_settings(budget_grid(search.max_budget),
                            budget_grid(search.best_of_n_max_budget))
  assert tuple((s.method, s.params, s.budget) for s in settings) == TINY_SEARCH_SETTINGS


def test_finished_sweep_has_one_graded_row_per_question_and_setting(finished):
  """Fails if the finished workdir's search table misses or repeats a
  (question, setting) of the tiny sweep, holds another question, seed or
  setting, counts generations other than N (N·(k+1) for lookahead), reports
  no FLOPs, or marks a row correct other than by grading its answer against
  the test question's reference (or with another question's level)."""
  config = _tiny_config()
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
  summary = _marker(finished.workdir, "sweep_search")["summary"]
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
  log = _run(_search_config(*methods), workdir, ["sweep_search"])
  assert any(line.startswith("stage sweep_search: done") for line in log), log
  original = _of_methods(_search_rows(finished.workdir), methods)
  assert len(original) == 5 * _tiny_config().search.num_questions
  assert _without_seconds(_search_rows(workdir)) == _without_seconds(original)
  accuracy = _marker(workdir, "sweep_search")["summary"]["accuracy"]
  original_accuracy = _marker(finished.workdir, "sweep_search")["summary"]["accuracy"]
  assert accuracy == {name: curve for name, curve in original_accuracy.items()
                      if name.split()[0] in methods}


@pytest.fixture(scope="session")
def sweep_killed_and_resumed(finished, tmp_path_factory) -> _KilledAndResumed:
  """A best-of-N-only sweep killed (Ctrl-C) right after its 2nd append (the
  rows of N=1 and N=2), then cut mid-row as by a kill during the 3rd
  append's write, re-run."""
  workdir = _without_sweep(finished, str(tmp_path_factory.mktemp("sweep_resumed") / "workdir"))
  path = os.path.join(workdir, SEARCH_TABLE)
  append = outcomes.OutcomeTable.append
  appended: list[int] = []

  def append_then_kill_at_the_second(self, rows):
    append(self, rows)
    appended.append(len(self))
    if len(appended) == 2:
      raise KeyboardInterrupt

  killed_log: list[str] = []
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(outcomes.OutcomeTable, "append", append_then_kill_at_the_second)
    with pytest.raises(KeyboardInterrupt):
      pipeline.run(_search_config("best_of_n"), workdir, ["sweep_search"],
                   log=killed_log.append)
  assert not os.path.exists(os.path.join(workdir, "stages", "sweep_search.json"))
  with open(path, "rb") as f:
    after_kill = f.read()
  with open(path, "ab") as f:
    f.write(after_kill.splitlines(keepends=True)[-1][:40])  # a cut row, no newline
  return _KilledAndResumed(workdir, killed_log, after_kill,
                           _run(_search_config("best_of_n"), workdir, ["sweep_search"]))


def test_sweep_resumed_after_a_kill_gives_the_uninterrupted_table(
    finished, sweep_killed_and_resumed):
  """Fails if a resumed sweep's table differs from an uninterrupted one's
  (a row lost, repeated, or drawn from another random stream because the
  batch ran in another position), if the rows written before the kill are
  rewritten rather than kept as the file's first lines, or if the cut row
  left by a kill during a write survives."""
  run = sweep_killed_and_resumed
  assert any(line.startswith("stage sweep_search: done") for line in run.resumed_log)
  resumed = _search_rows(run.workdir)
  original = _of_methods(_search_rows(finished.workdir), ("best_of_n",))
  assert _without_seconds(resumed) == _without_seconds(original)
  with open(os.path.join(run.workdir, SEARCH_TABLE), "rb") as f:
    assert f.read().startswith(run.after_kill)


def test_sweep_resumed_after_a_kill_runs_only_the_batches_not_in_the_table(
    sweep_killed_and_resumed):
  """Fails if the kill did not land mid-sweep (N=1 and N=2 in the table, N=4
  not), or if the re-run searches again batches whose rows are all in the
  table (N=4 is the only setting left: 2 batches of rows/N = 4 questions)."""
  run = sweep_killed_and_resumed
  killed = [json.loads(line) for line in run.after_kill.decode().splitlines()]
  config = _tiny_config()
  num_questions = config.search.num_questions
  assert [(r["budget"], r["question_index"]) for r in killed] == [
      *((1, q) for q in range(num_questions)), *((2, q) for q in range(num_questions))]
  summary = _marker(run.workdir, "sweep_search")["summary"]
  assert summary["batches_run"] == -(-num_questions // (config.search.rows // 4)) == 2
  assert summary["num_rows"] == 3 * num_questions


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
  config = _tiny_config()
  rounds = config.search.max_rounds
  config.search.max_rounds = rounds + 1
  with open(os.path.join(workdir, SEARCH_TABLE), "rb") as f:
    table = f.read()
  message = _expect_one_line_error(workdir, ["sweep_search"], "search.max_rounds",
                                   config=config)
  assert f"search.max_rounds={rounds} in the workdir, {rounds + 1} now" in message
  with open(os.path.join(workdir, SEARCH_TABLE), "rb") as f:
    assert f.read() == table
