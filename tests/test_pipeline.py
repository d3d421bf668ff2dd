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

from ttscale import pipeline
from ttscale.data import arith_builder
from ttscale.data.tokenizer import Tokenizer, train_tokenizer
from ttscale.testing import tree_digest

CONFIG_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "arith.py")
STAGE_NAMES = ("data", "train_policy", "eval_policy")


def _tiny_config():
  """A fresh `configs/arith.py:tiny` (tests may change it)."""
  spec = importlib.util.spec_from_file_location("arith_config", CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")




def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


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
  assert [r["step"] for r in metrics] == [3, 6]  # log_every=3, num_steps=6
  assert all(r["stage"] == "train_policy" for r in metrics)

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
  original_steps = [r["step"] for r in _read_metrics(finished.workdir)]
  assert [r["step"] for r in _read_metrics(workdir)] == original_steps


def test_resume_from_a_mid_training_checkpoint_reproduces_the_evaluation(
    finished, resumed_mid_training):
  workdir, _ = resumed_mid_training
  resumed = _read_json(os.path.join(workdir, "eval_policy.json"))
  original = _read_json(os.path.join(finished.workdir, "eval_policy.json"))
  assert _without_speed(resumed) == _without_speed(original)


def test_resume_from_a_mid_training_checkpoint_logs_the_uninterrupted_metrics(
    finished, resumed_mid_training):
  workdir, _ = resumed_mid_training
  original = [r["loss"] for r in _read_metrics(finished.workdir)]
  assert [r["loss"] for r in _read_metrics(workdir)] == pytest.approx(original, abs=1e-6)


def test_unknown_stage_is_rejected_before_anything_is_written(tmp_path):
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / "sentinel").write_text("untouched")
  before = tree_digest(str(workdir))
  with pytest.raises(ValueError) as error:
    pipeline.run(_tiny_config(), str(workdir), ["data", "bogus"], log=lambda _: None)
  message = str(error.value)
  assert "--stages" in message and "'bogus'" in message
  assert all(name in message for name in STAGE_NAMES)
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
