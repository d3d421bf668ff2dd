"""Tests of the staged pipeline on the `tiny` config: outputs, skipping, resuming, guards.

One session-scoped run builds a finished workdir; tests that change a workdir
work on a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import FinishedStudy as _Finished
from conftest import tiny_config as _tiny_config

from ttscale import io_utils, outcomes, pipeline
from ttscale.data import arith_builder, tfds_source
from ttscale.data.tokenizer import Tokenizer, train_tokenizer
from ttscale.pipeline import registry
from ttscale.search import revision_sweep, search_sweep
from ttscale.tasks import get_task
from ttscale.tasks.arith import ERROR_KINDS
from ttscale.testing import tree_digest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
POLICY_STAGES = ("data", "train_policy", "eval_policy")
REVISION_STAGES = ("revision_data", "train_revision", "train_revision_verifier",
                   "sweep_revisions")
STAGE_NAMES = (*POLICY_STAGES, "train_large", "prm_labels", "train_prm", "train_orm",
               "eval_prm", "sweep_search", *REVISION_STAGES)
# Every stage that writes training metrics (`train_large`: the study stages' larger policy).
TRAINING_STAGES = ("train_policy", "train_prm", "train_orm", "train_revision",
                   "train_revision_verifier", "train_large")


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
  test_levels = [e.level for e in tfds_source.read_examples(sources["test"])]
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
  `sweep_revisions`), or anything is written (or the workdir created) first."""
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
  size = original.vocab_size
  with pytest.raises(ValueError, match=f"tokenizer='{original.fingerprint}' in the workdir.* "
                     f"\\(vocabulary of {size} tokens in the workdir, {size} now\\)"):
    _run(_tiny_config(), workdir, ["eval_policy"])
  assert tree_digest(workdir) == before


_LOAD_POLICY_CHECKSUM = """
import sys
import jax, numpy as np
from configs import arith
from ttscale import pipeline
policy = pipeline.Context(arith.get_config("tiny"), sys.argv[1]).load_policy()
print(jax.device_count(), sum(float(np.abs(np.asarray(x)).sum())
                              for x in jax.tree.leaves(policy.params)))
"""


def test_a_policy_saved_on_eight_devices_loads_on_one(finished):
  # The session trained on 8 devices; a user may evaluate on one.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  # The repository root, where `configs` is a package (configs/ itself on the
  # path would shadow the stdlib `math` with configs/math.py).
  env["PYTHONPATH"] = REPO
  process = subprocess.run(
      [sys.executable, "-c", _LOAD_POLICY_CHECKSUM, finished.workdir],
      capture_output=True, text=True, env=env, timeout=120, check=False)
  assert process.returncode == 0, process.stderr[-2000:]
  devices, checksum = process.stdout.split()
  policy = pipeline.Context(_tiny_config(), finished.workdir).load_policy()
  expected = sum(float(np.abs(np.asarray(x)).sum()) for x in jax.tree.leaves(policy.params))
  assert int(devices) == 1
  assert float(checksum) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ verifiers


def _through_eval_policy(finished: _Finished, destination: str) -> str:
  """A new workdir holding only the finished one's data and policy stages
  (the larger policy too: the verifiers' trunk).

  Its metrics file keeps only the policies' lines, as after a run that ended
  with `train_large`.
  """
  os.makedirs(os.path.join(destination, "stages"))
  for name in ("data", "policy", "large"):
    shutil.copytree(os.path.join(finished.workdir, name), os.path.join(destination, name))
  for name in ("tokenizer.model", "eval_policy.json",
               *(os.path.join("stages", f"{stage}.json")
                 for stage in (*POLICY_STAGES, "train_large"))):
    shutil.copyfile(os.path.join(finished.workdir, name), os.path.join(destination, name))
  with open(os.path.join(destination, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for stage in ("train_policy", "train_large")
                 for r in _read_metrics(finished.workdir, stage))
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


def test_finished_workdir_eval_prm_scores_by_first_error_cover_the_pool(finished):
  """Fails if the PRM's scores by first-error kind do not count every pooled
  solution once, name a kind the task does not, or hold a score outside [0, 1]."""
  config = _tiny_config()
  evaluation = _read_json(os.path.join(finished.workdir, "eval_prm.json"))
  by_kind = evaluation["prm_score_by_first_error"]
  assert set(by_kind) <= {"right", *ERROR_KINDS}
  assert sum(v["count"] for v in by_kind.values()) == (
      config.eval_prm.num_questions * config.eval_prm.pool_size)
  assert all(0.0 <= v["mean_score"] <= 1.0 for v in by_kind.values())


# ------------------------------------------------------------------- search

SEARCH_TABLE = os.path.join("outcomes", "search.jsonl")

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
  config = _tiny_config()
  config.search.methods = methods
  config.search.verifiers = ("prm",)
  return config


def _search_rows(workdir: str) -> list[dict]:
  return outcomes.read_table(os.path.join(workdir, SEARCH_TABLE))


def _without_seconds(rows: list[dict]) -> list[dict]:
  """Rows without their wall-clock field."""
  return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _of_methods(rows: list[dict], methods) -> list[dict]:
  """The rows of `methods` with the learned PRM (as `_search_config` sweeps)."""
  return [row for row in rows
          if row["method"] in methods and not outcomes.uses_exact_verifier(row["params"])]


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
  """Fails if the tiny config's sweep is not the settings the search tests
  below expect (so their counts would test another sweep)."""
  search = _tiny_config().search
  assert (search.max_budget, search.best_of_n_max_budget) == (4, 4)
  settings = search_sweep.sweep_settings(search)
  assert tuple((s.method, s.params, s.budget) for s in settings) == TINY_SEARCH_SETTINGS


def test_exact_verifier_sweeps_only_its_methods():
  """Fails if `search.exact_methods` does not restrict the exact verifier's
  settings (and only its: the PRM's stay), or if an unknown one is accepted."""
  search = _tiny_config().search
  search.update(max_budget=16, best_of_n_max_budget=16, exact_max_budget=16,
                exact_methods=("beam",))
  settings = search_sweep.sweep_settings(search)
  assert {s.method for s in settings if s.verifier == "exact"} == {"beam"}
  assert {s.method for s in settings if s.verifier == "prm"} == set(search.methods)
  config = _tiny_config()
  config.search.exact_methods = ("beam", "greedy")
  with pytest.raises(ValueError, match="search.exact_methods: unknown method 'greedy'"):
    registry.check_config(config)


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
  per_question = sum(method in methods and not outcomes.uses_exact_verifier(params)
                     for method, params, _ in TINY_SEARCH_SETTINGS)
  assert len(original) == per_question * _tiny_config().search.num_questions
  assert _without_seconds(_search_rows(workdir)) == _without_seconds(original)
  accuracy = _marker(workdir, "sweep_search")["summary"]["accuracy"]
  original_accuracy = _marker(finished.workdir, "sweep_search")["summary"]["accuracy"]
  assert accuracy == {name: curve for name, curve in original_accuracy.items()
                      if name.split()[0] in methods and "verifier=exact" not in name}


_KILLED_METHODS = ("best_of_n", "beam")


@pytest.fixture(scope="session")
def sweep_killed_and_resumed(finished, tmp_path_factory) -> _KilledAndResumed:
  """A best-of-N and beam sweep killed (Ctrl-C) right after its 2nd append
  (best-of-N's pool, all its budgets; then beam M=2), then cut mid-row as by a
  kill during the 3rd append's write, re-run."""
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
      pipeline.run(_search_config(*_KILLED_METHODS), workdir, ["sweep_search"],
                   log=killed_log.append)
  assert not os.path.exists(os.path.join(workdir, "stages", "sweep_search.json"))
  with open(path, "rb") as f:
    after_kill = f.read()
  with open(path, "ab") as f:
    f.write(after_kill.splitlines(keepends=True)[-1][:40])  # a cut row, no newline
  return _KilledAndResumed(workdir, killed_log, after_kill,
                           _run(_search_config(*_KILLED_METHODS), workdir, ["sweep_search"]))


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
  original = _of_methods(_search_rows(finished.workdir), _KILLED_METHODS)
  assert _without_seconds(resumed) == _without_seconds(original)
  with open(os.path.join(run.workdir, SEARCH_TABLE), "rb") as f:
    assert f.read().startswith(run.after_kill)


def test_sweep_resumed_after_a_kill_runs_only_the_batches_not_in_the_table(
    sweep_killed_and_resumed):
  """Fails if the kill did not land mid-sweep (best-of-N at N=1, 2, 4 and beam
  M=2 in the table, beam M=4 not), or if the re-run searches again batches
  whose rows are all in the table (beam M=4 is the only setting left: 2
  batches of rows/N = 4 questions)."""
  run = sweep_killed_and_resumed
  killed = [json.loads(line) for line in run.after_kill.decode().splitlines()]
  config = _tiny_config()
  num_questions = config.search.num_questions
  assert [(r["method"], r["params"], r["budget"], r["question_index"]) for r in killed] == [
      *(("best_of_n", "", n, q) for n in (1, 2, 4) for q in range(num_questions)),
      *(("beam", "M=2,k=0", 4, q) for q in range(num_questions))]
  summary = _marker(run.workdir, "sweep_search")["summary"]
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


# ------------------------------------------------------------------ revisions

REVISION_TABLE = os.path.join("outcomes", "revisions.jsonl")
REVISION_UNITS = os.path.join("revisions", "sweep")
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
  """The sweep's saved unit files, sorted by name (= run order)."""
  return sorted(os.listdir(os.path.join(workdir, REVISION_UNITS)))


def _unit_for(workdir: str, budget: int, sequential: int, question: int) -> tuple[int, dict]:
  """(first question, unit) of the saved unit of (N, s) that holds `question`."""
  prefix = f"N{budget:04d}_s{sequential:04d}_q"
  firsts = [int(name[len(prefix):-len(".json")]) for name in _unit_files(workdir)
            if name.startswith(prefix)]
  first = max(f for f in firsts if f <= question)
  return first, _read_json(os.path.join(workdir, REVISION_UNITS, f"{prefix}{first:05d}.json"))


def test_revision_data_mixes_in_the_policy_data_the_config_asks_for(finished):
  """Fails if the revision model's training records are not the trajectories
  plus `revision.policy_data_fraction` of all records as reference solutions
  of the training questions after the revision and revision-verifier ones,
  with no previous attempt."""
  config = _tiny_config()
  fraction = config.revision.policy_data_fraction
  assert 0 < fraction < 1, "the tiny config must mix policy data for this test"
  records = [json.loads(line) for line in open(
      os.path.join(finished.workdir, "revision", "trajectories.jsonl"))]
  mixed = [r for r in records if r["source"] == "policy_data"]
  trajectories = [r for r in records if r["source"] == "trajectory"]
  assert len(mixed) + len(trajectories) == len(records) and trajectories
  assert len(mixed) == round(len(trajectories) * fraction / (1 - fraction))
  train = pipeline.Context(config, finished.workdir).examples("train")
  first = config.revision.num_questions + config.revision.verifier_questions
  assert [r["question_index"] for r in mixed] == list(range(first, first + len(mixed)))
  for record in mixed:
    example = train[record["question_index"]]
    assert (record["question"], record["target"], record["previous"]) == (
        example.question, example.solution, [])
  summary = _marker(finished.workdir, "revision_data")["summary"]
  assert (summary["num_policy_data_records"], summary["num_trajectories"]) == (
      len(mixed), len(trajectories))


def test_revision_sweep_writes_the_attempt_analysis_of_its_longest_chains(finished):
  """Fails if `revisions/attempts.json` is not the per-attempt accuracy of the
  s=4, p=1 units' chains (the tiny sweep's longest) and the transitions of
  every unit."""
  attempts = _read_json(os.path.join(finished.workdir, "revisions", "attempts.json"))
  longest = [np.asarray(_read_json(os.path.join(finished.workdir, REVISION_UNITS, name))
                        ["correct"], bool)
             for name in _unit_files(finished.workdir) if name.startswith("N0004_s0004_")]
  correct = np.concatenate(longest)
  assert correct.shape == (_tiny_config().sweep_revisions.num_questions, 1, 4)
  assert attempts["longest_chains"]["accuracy"] == pytest.approx(
      correct.mean(axis=(0, 1)).tolist())
  every = [np.asarray(_read_json(os.path.join(finished.workdir, REVISION_UNITS, name))
                      ["correct"], bool) for name in _unit_files(finished.workdir)]
  before = np.concatenate([c[..., :-1].reshape(-1) for c in every])
  assert attempts["transitions"]["correct_to_incorrect"]["of"] == int(before.sum())
  assert attempts["transitions"]["incorrect_to_correct"]["of"] == int((~before).sum())
  assert attempts["fresh_baseline"]["num_questions"] == _tiny_config().sweep_revisions.num_questions


def test_tiny_revision_sweep_is_every_split_of_budgets_up_to_four():
  """Fails if the tiny config's revision sweep is not the six splits the
  revision tests below expect (so their counts would test another sweep)."""
  config = _tiny_config()
  assert config.sweep_revisions.max_budget == 4 and not config.sweep_revisions.splits
  assert tuple(revision_sweep.sweep_splits(config.sweep_revisions)) == TINY_REVISION_SPLITS


def test_finished_revision_sweep_has_one_graded_row_per_question_split_and_selector(finished):
  """Fails if a revision stage did not finish (marker and log line), if the
  revisions table misses or repeats a (question, split, selector) of the tiny
  sweep or holds another question, seed or method, counts generations other
  than the budget s·p, or grades a row other than by its answer against the
  test question's reference; or if a saved unit holds other than p chains of
  s attempts per question, or a row's answer is not one of its attempts'."""
  config = _tiny_config()
  for name in REVISION_STAGES:
    assert any(line.startswith(f"stage {name}: done") for line in finished.log), name
    assert _marker(finished.workdir, name)["stage"] == name
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
    first, unit = _unit_for(finished.workdir, s * p, s, row["question_index"])
    attempts = unit["answers"][row["question_index"] - first]
    assert [len(chain) for chain in attempts] == [s] * p, where
    flat = [a for chain in attempts for a in chain]
    assert row["answer"] in flat or (row["answer"] is None and all(a is None for a in flat)), \
        where
  summary = _marker(finished.workdir, "sweep_revisions")["summary"]
  assert summary["num_rows"] == len(rows) == len(expected)
  assert summary["num_units"] == summary["units_run"] == len(_unit_files(finished.workdir))
  assert os.path.getsize(os.path.join(finished.workdir, "sweep_revisions.png")) > 0


def test_finished_revision_sweep_counts_the_flops_of_what_each_selector_runs(finished):
  """Fails if a revisions row's FLOPs are not its question's policy FLOPs in
  the saved unit plus those of the verifier its selector reads (the revision
  verifier for hierarchical, the base PRM for hierarchical_prm, none for
  majority and the exact verifier)."""
  verifier = {"hierarchical": "revision_verifier", "hierarchical_prm": "prm"}
  for row in _revision_rows(finished.workdir):
    s, p, selector = _split_of(row["params"])
    q = row["question_index"]
    first, unit = _unit_for(finished.workdir, s * p, s, q)
    expected = unit["flops"]["policy"][q - first]
    assert expected > 0, (q, row["params"])
    if selector in verifier:
      assert unit["flops"][verifier[selector]][q - first] > 0, (q, row["params"])
      expected += unit["flops"][verifier[selector]][q - first]
    assert row["flops"] == pytest.approx(expected, rel=1e-9), (q, row["params"])


def _crafted_unit(references: list[str]) -> tuple[dict, dict]:
  """A saved unit of split s=2, p=2 for questions 0-5 whose selectors pick
  different answers, and {(question, selector): the answer each must pick}.

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
  unit = {
      "answers": answers,
      "correct": [[[a == r for a in chain] for chain in question]
                  for question, r in zip(answers, references, strict=True)],
      # The exact verifier: 1 for a right attempt (here: the right answer).
      "scores": {"revision_verifier": rv, "prm": prm,
                 "exact": [[[float(a == r) for a in chain] for chain in question]
                           for question, r in zip(answers, references, strict=True)]},
      "flops": {"policy": [100.0 * (q + 1) for q in range(6)], "exact": [0.0] * 6,
                "revision_verifier": [10.0 * (q + 1) for q in range(6)],
                "prm": [1.0 * (q + 1) for q in range(6)]},
      "seconds": 6.0, "generated_tokens": 0,
      # What the unit is (`resumable`): else it is refused as another unit's.
      "part": {"sequential": 2, "chains": 2, "first": 0, "last": 6},
  }
  return unit, expected


def test_revision_sweep_rows_come_from_the_saved_unit_by_each_selector(finished, tmp_path):
  """Fails if a re-run sweep runs again a unit saved before a kill instead of
  reusing it, or makes its rows otherwise than: majority the most frequent
  answer; hierarchical the answer of the largest total of per-chain picks
  weighted by their score sums, with the revision verifier's scores
  (hierarchical) or the base PRM's (hierarchical_prm), not the flat sum;
  none when no attempt has an answer; graded against the reference; FLOPs
  of what the selector ran; wall time shared by the unit's questions.
  (The tiny models never write an answer, so the finished run cannot tell.)"""
  config = _tiny_config()
  assert config.sweep_revisions.num_questions == 6
  workdir = finished.copy(str(tmp_path / "workdir"))
  os.remove(os.path.join(workdir, "stages", "sweep_revisions.json"))
  path = os.path.join(workdir, REVISION_TABLE)
  kept = [row for row in _revision_rows(workdir) if not row["params"].startswith("s=2,p=2,")]
  with open(path, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in kept)
  test = pipeline.Context(config, workdir).examples("test")
  unit, expected = _crafted_unit([e.answer for e in test[:6]])
  io_utils.write_json_atomic(os.path.join(workdir, REVISION_UNITS, "N0004_s0002_q00000.json"),
                             unit)
  log = _run(config, workdir, ["sweep_revisions"])
  assert any(line.startswith("stage sweep_revisions: done") for line in log), log
  assert _marker(workdir, "sweep_revisions")["summary"]["units_run"] == 0
  rows = _revision_rows(workdir)
  assert rows[:len(kept)] == kept
  task = get_task(config.task)
  flops = {"hierarchical": "revision_verifier", "hierarchical_prm": "prm"}
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
    assert row["flops"] == pytest.approx(
        unit["flops"]["policy"][q] + (unit["flops"][flops[selector]][q]
                                      if selector in flops else 0.0)), where
    assert row["seconds"] == pytest.approx(1.0), where


def _without_revision_sweep(finished: _Finished, destination: str) -> str:
  """A copy of the finished workdir as before its revision sweep: no table,
  no saved units, no marker."""
  workdir = finished.copy(destination)
  os.remove(os.path.join(workdir, REVISION_TABLE))
  os.remove(os.path.join(workdir, REVISION_TABLE + ".meta.json"))
  shutil.rmtree(os.path.join(workdir, REVISION_UNITS))
  os.remove(os.path.join(workdir, "stages", "sweep_revisions.json"))
  return workdir


def test_revision_sweep_rerun_with_the_same_seed_writes_the_same_rows(finished, tmp_path):
  """Fails if the revision sweep's rows depend on anything but the seed and
  the unit (split and questions): e.g. on wall time or on a random stream
  shared across units."""
  workdir = _without_revision_sweep(finished, str(tmp_path / "workdir"))
  log = _run(_tiny_config(), workdir, ["sweep_revisions"])
  assert any(line.startswith("stage sweep_revisions: done") for line in log), log
  original = _revision_rows(finished.workdir)
  assert _without_seconds(_revision_rows(workdir)) == _without_seconds(original)
  summary = _marker(workdir, "sweep_revisions")["summary"]
  original_summary = _marker(finished.workdir, "sweep_revisions")["summary"]
  for field in ("accuracy", "sequential_vs_parallel", "transitions", "longest_chains"):
    assert summary[field] == original_summary[field], field


@pytest.fixture(scope="session")
def revision_sweep_killed_and_resumed(finished, tmp_path_factory) -> _KilledAndResumed:
  """A revision sweep killed while appending its 3rd unit's rows (4 of them
  written, the 5th cut mid-line), after saving that unit: the first unit's
  file and those of the units not yet run deleted; re-run.

  `after_kill` is (table bytes, {kept unit file: (inode, mtime in ns, bytes)}).
  """
  workdir = finished.copy(str(tmp_path_factory.mktemp("revisions_resumed") / "workdir"))
  os.remove(os.path.join(workdir, "stages", "sweep_revisions.json"))
  num_questions = _tiny_config().sweep_revisions.num_questions
  per_unit = num_questions * len(REVISION_SELECTORS)  # units 1-3 hold every question
  path = os.path.join(workdir, REVISION_TABLE)
  with open(path, "rb") as f:
    lines = f.read().splitlines(keepends=True)
  kept_rows = b"".join(lines[:2 * per_unit + 4])
  with open(path, "wb") as f:
    f.write(kept_rows + lines[2 * per_unit + 4][:40])  # a cut row, no newline
  units = _unit_files(workdir)
  assert units[:3] == ["N0001_s0001_q00000.json", "N0002_s0001_q00000.json",
                       "N0002_s0002_q00000.json"]
  for name in [units[0], *units[3:]]:
    os.remove(os.path.join(workdir, REVISION_UNITS, name))
  kept_units = {}
  for name in units[1:3]:
    unit_path = os.path.join(workdir, REVISION_UNITS, name)
    with open(unit_path, "rb") as f:
      kept_units[name] = (os.stat(unit_path).st_ino, os.stat(unit_path).st_mtime_ns, f.read())
  return _KilledAndResumed(workdir, [], (kept_rows, kept_units),
                           _run(_tiny_config(), workdir, ["sweep_revisions"]))


def test_revision_sweep_resumed_after_a_kill_gives_the_uninterrupted_table(
    finished, revision_sweep_killed_and_resumed):
  """Fails if a resumed revision sweep's table differs from the uninterrupted
  one (a row lost, repeated, out of order, or from a unit run again with
  another random stream), if the rows present are rewritten rather than kept
  as the file's first lines, or if the cut row survives."""
  run = revision_sweep_killed_and_resumed
  assert any(line.startswith("stage sweep_revisions: done") for line in run.resumed_log)
  resumed = _revision_rows(run.workdir)
  original = _revision_rows(finished.workdir)
  assert _without_seconds(resumed) == _without_seconds(original)
  kept_rows, _ = run.after_kill
  with open(os.path.join(run.workdir, REVISION_TABLE), "rb") as f:
    assert f.read().startswith(kept_rows)


def test_revision_sweep_resumed_after_a_kill_runs_only_the_units_it_lacks(
    finished, revision_sweep_killed_and_resumed):
  """Fails if the re-run runs again a unit whose rows are all in the table
  (the 1st, its file deleted) or one saved before the kill (the 2nd, and the
  3rd whose rows were cut short), rewrites a saved unit, or runs a missing
  unit otherwise than the uninterrupted sweep did."""
  run = revision_sweep_killed_and_resumed
  _, kept_units = run.after_kill
  for name, before in kept_units.items():
    unit_path = os.path.join(run.workdir, REVISION_UNITS, name)
    with open(unit_path, "rb") as f:
      assert (os.stat(unit_path).st_ino, os.stat(unit_path).st_mtime_ns, f.read()) == before, \
          f"{name} was rewritten"
  original_units = _unit_files(finished.workdir)
  summary = _marker(run.workdir, "sweep_revisions")["summary"]
  assert summary["num_units"] == len(original_units) > 3
  assert summary["units_run"] == len(original_units) - 3
  for name in original_units[3:]:
    resumed = _read_json(os.path.join(run.workdir, REVISION_UNITS, name))
    original = _read_json(os.path.join(finished.workdir, REVISION_UNITS, name))
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
  config = _tiny_config()
  rows = config.sweep_revisions.rows
  config.sweep_revisions.rows = rows // 2
  with open(os.path.join(workdir, REVISION_TABLE), "rb") as f:
    table = f.read()
  message = _expect_one_line_error(workdir, ["sweep_revisions"], "sweep_revisions.rows",
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
  config = _tiny_config()
  config.sweep_revisions.splits = ("2x2", "1x1")
  log = _run(config, workdir, ["sweep_revisions"])
  assert any(line.startswith("stage sweep_revisions: done") for line in log), log
  summary = _marker(workdir, "sweep_revisions")["summary"]
  assert summary["units_run"] == 0 and summary["num_units"] == 2
  with open(os.path.join(workdir, REVISION_TABLE), "rb") as f:
    assert f.read() == table


# What each revision stage leaves in the workdir, besides its marker.
_REVISION_OUTPUTS = {
    "revision_data": ("revision",),
    "train_revision": (os.path.join("revision", "state"), os.path.join("revision", "best")),
    "train_revision_verifier": ("revision_verifier",),
    "sweep_revisions": (REVISION_UNITS, REVISION_TABLE, REVISION_TABLE + ".meta.json",
                        "sweep_revisions.png"),
}


@pytest.mark.parametrize("missing", REVISION_STAGES[:-1])
def test_revision_sweep_without_its_models_names_the_missing_stage_and_touches_nothing(
    finished, tmp_path, missing):
  """Fails if `sweep_revisions` in a workdir that lacks a revision stage (and
  the ones after it) reports anything but the first missing stage, or writes
  (its table, its meta, a unit) before failing."""
  workdir = finished.copy(str(tmp_path / "workdir"))
  for stage in REVISION_STAGES[REVISION_STAGES.index(missing):]:
    os.remove(os.path.join(workdir, "stages", f"{stage}.json"))
    for output in _REVISION_OUTPUTS[stage]:
      path = os.path.join(workdir, output)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
  message = _expect_one_line_error(workdir, ["sweep_revisions"], missing)
  assert f"stage sweep_revisions needs stage {missing}" in message
  if missing == "train_revision":
    before = tree_digest(workdir)
    with pytest.raises(ValueError, match="'train_revision' stage first"):
      pipeline.Context(_tiny_config(), workdir).load_revision_model()
    assert tree_digest(workdir) == before


def _steps(directory: str) -> list[int]:
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.fixture(scope="session")
def train_revision_resumed(finished, tmp_path_factory) -> _KilledAndResumed:
  """`train_revision` killed after its next-to-last checkpoint, before the last
  one's validation (its marker, last state step and any best checkpoint of
  that step deleted), re-run. `after_kill`: the state steps left."""
  workdir = finished.copy(str(tmp_path_factory.mktemp("train_revision_resumed") / "workdir"))
  os.remove(os.path.join(workdir, "stages", "train_revision.json"))
  state_dir = os.path.join(workdir, "revision", "state")
  best_dir = os.path.join(workdir, "revision", "best")
  last = _steps(state_dir)[-1]
  shutil.rmtree(os.path.join(state_dir, str(last)))
  if last in _steps(best_dir):
    shutil.rmtree(os.path.join(best_dir, str(last)))
  return _KilledAndResumed(workdir, [], _steps(state_dir),
                           _run(_tiny_config(), workdir, ["train_revision"]))


def test_train_revision_resumes_from_its_checkpoint_and_trains_only_the_rest(
    finished, train_revision_resumed):
  """Fails if the resumed `train_revision` starts over instead of from the
  step-3 checkpoint, or ends with another best step, validation loss or
  metric lines than the uninterrupted run."""
  run = train_revision_resumed
  assert run.after_kill == [3]
  assert "train_revision: resumed from the checkpoint at step 3" in run.resumed_log
  trained = [line.split()[2] for line in run.resumed_log
             if line.startswith("train_revision: step ") and "/" in line.split()[2]]
  assert trained == ["6/6"]
  resumed = _marker(run.workdir, "train_revision")["summary"]
  original = _marker(finished.workdir, "train_revision")["summary"]
  assert resumed["best_step"] == original["best_step"]
  assert resumed["stopped_early"] == original["stopped_early"]
  assert resumed["best_validation_loss"] == pytest.approx(
      original["best_validation_loss"], abs=1e-6)
  got = _without_tokens_per_second(_read_metrics(run.workdir, "train_revision"))
  expected = _without_tokens_per_second(_read_metrics(finished.workdir, "train_revision"))
  assert [(r["step"], sorted(r)) for r in got] == [(r["step"], sorted(r)) for r in expected]
  for resumed_record, original_record in zip(got, expected, strict=True):
    assert resumed_record == pytest.approx(original_record, abs=1e-6)


def test_train_revision_resumed_keeps_the_uninterrupted_best_parameters(
    finished, train_revision_resumed):
  """Fails if the resumed run's best revision model holds other parameters
  than the uninterrupted run's (another step, or a resume that drifted)."""
  run = train_revision_resumed
  best = [_steps(os.path.join(w, "revision", "best")) for w in (run.workdir, finished.workdir)]
  assert best[0] == best[1] == [_marker(finished.workdir, "train_revision")["summary"][
      "best_step"]]
  resumed = pipeline.Context(_tiny_config(), run.workdir).load_revision_model().params
  original = pipeline.Context(_tiny_config(), finished.workdir).load_revision_model().params
  for got, expected in zip(jax.tree.leaves(resumed), jax.tree.leaves(original), strict=True):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("field, value, needle", [
    ("sampling.temperature", -1.0, "sampling.temperature=-1.0"),
    ("sampling.top_p", 0.0, "sampling.top_p=0.0"),
    ("model.num_kv_heads", 3, "model.num_kv_heads=3"),
    ("model.head_dim", 0, "model.head_dim=0"),
    ("large_model.num_heads", 3, "large_model.num_heads=3"),
    ("data.too_long", "sometimes", "data.too_long='sometimes'"),
    ("revision.keep_fraction", 1.5, "revision.keep_fraction=1.5"),
])
def test_bad_network_or_sampling_values_are_refused_before_any_stage_writes(
    tmp_path, field, value, needle):
  """Fails if a network or sampling value that a later stage would refuse lets
  the data stage (or anything) write first: the workdir must not even exist."""
  config = _tiny_config()
  block, name = field.split(".")
  config[block][name] = value
  workdir = str(tmp_path / "workdir")
  with pytest.raises(ValueError) as error:
    _run(config, workdir)
  assert "\n" not in str(error.value) and needle in str(error.value), str(error.value)
  assert not os.path.exists(workdir)


def test_a_cut_outcome_table_reruns_its_sweep_and_what_read_it(finished, tmp_path):
  """Fails if a table cut mid-line after its sweep finished (a kill during a
  later append, or damage) leaves the sweep marked done, so that re-running
  the sweep and select cannot repair it; the repaired table and select.json
  must equal the uninterrupted run's."""
  workdir = finished.copy(str(tmp_path / "workdir"))
  path = os.path.join(workdir, "outcomes", "search.jsonl")
  with open(path, "rb") as f:
    whole = f.read()
  with open(path, "wb") as f:
    f.write(whole[:-40])  # the last row cut short
  log = _run(_tiny_config(), workdir, ["sweep_search", "select"])
  assert any(line.startswith("stage sweep_search: to run again: outcomes/search.jsonl "
                             "changed") for line in log), log
  assert any(line.startswith("stage select: to run again: it reads what changed")
             for line in log), log
  assert any(line.startswith("stage sweep_search: done") for line in log), log
  # The cut row is sampled again, the same but for its wall time.
  assert _without_seconds(outcomes.read_table(path)) == _without_seconds(
      outcomes.read_table(os.path.join(finished.workdir, "outcomes", "search.jsonl")))
  assert _read_json(os.path.join(workdir, "select.json")) == _read_json(
      os.path.join(finished.workdir, "select.json"))
  # The report read select.json too: it is marked to run again.
  assert not os.path.exists(os.path.join(workdir, "stages", "report.json"))


def test_a_replaced_select_file_is_noticed_by_a_full_rerun(finished, tmp_path):
  """Fails if a full re-run keeps a select.json that changed after select
  finished (and the report made from it) instead of making both again."""
  workdir = finished.copy(str(tmp_path / "workdir"))
  path = os.path.join(workdir, "select.json")
  with open(path, "w") as f:
    json.dump({"replaced": True}, f)
  log = _run(_tiny_config(), workdir)
  for stage in ("select", "flops_matched", "report"):
    assert any(line.startswith(f"stage {stage}: done") for line in log), (stage, log)
  assert _read_json(path) == _read_json(os.path.join(finished.workdir, "select.json"))
  assert any(line.startswith("stage sweep_search: already done") for line in log), log
