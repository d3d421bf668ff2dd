"""The policy's stages (`pipeline/policy_stages.py`): training resumed from its
checkpoints, the tokenizer guard, and a policy trained on 8 devices loaded on one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import tiny_config
from stage_runs import (
  assert_resumed_equals_uninterrupted,
  killed_and_resumed,
  metrics_of,
  read_json,
  read_metrics,
  remove,
  run_stages,
)

from ttscale import layout, pipeline
from ttscale.data.tokenizer import Tokenizer, train_tokenizer
from ttscale.testing import tree_digest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
_POLICY_STAGES = ("train_policy", "eval_policy")


@pytest.fixture(scope="session")
def resumed_after_last_checkpoint(finished, tmp_path_factory):
  """A copy killed after the final checkpoint, before the stage markers, re-run."""
  return killed_and_resumed(
      finished.copy(str(tmp_path_factory.mktemp("resumed") / "workdir")), None,
      cut=lambda workdir: remove(workdir, *map(layout.marker, _POLICY_STAGES)))


@pytest.fixture(scope="session")
def resumed_mid_training(finished, tmp_path_factory):
  """A copy killed after the step-3 checkpoint (step 6 and the markers gone), re-run."""
  return killed_and_resumed(
      finished.copy(str(tmp_path_factory.mktemp("resumed_mid") / "workdir")), None,
      cut=lambda workdir: remove(workdir, os.path.join(layout.POLICY, "6"),
                                 *map(layout.marker, _POLICY_STAGES)))


@pytest.mark.parametrize("when", ["after_last_checkpoint", "mid_training"])
def test_policy_resumed_after_a_kill_equals_the_uninterrupted_run(finished, request, when):
  """Fails if the resumed policy evaluates otherwise, or its metric lines
  (losses to 1e-6) differ from the uninterrupted run's."""
  run = request.getfixturevalue(f"resumed_{when}")
  assert_resumed_equals_uninterrupted(
      run, finished, "eval_policy",
      {layout.EVAL_POLICY: read_json,
       layout.METRICS: metrics_of("train_policy", "tokens_per_second")},
      summary_fields=("overall",))


def test_resume_after_the_last_checkpoint_trains_no_step_again(
    finished, resumed_after_last_checkpoint):
  run = resumed_after_last_checkpoint
  assert "train_policy: resumed from the checkpoint at step 6" in run.resumed_log
  assert not any(line.startswith("train_policy: step ") for line in run.resumed_log)
  assert any(line.startswith("stage data: already done") for line in run.resumed_log)
  with open(os.path.join(run.workdir, layout.METRICS), "rb") as resumed, \
      open(os.path.join(finished.workdir, layout.METRICS), "rb") as original:
    assert resumed.read() == original.read()


def test_resume_from_a_mid_training_checkpoint_trains_only_the_remaining_steps(
    finished, resumed_mid_training):
  run = resumed_mid_training
  assert "train_policy: resumed from the checkpoint at step 3" in run.resumed_log
  trained = [line.split()[2] for line in run.resumed_log
             if line.startswith("train_policy: step ")]
  assert trained == ["6/6"]  # log_every=3: steps 4-6 in one record
  original_steps = [r["step"] for r in read_metrics(finished.workdir, "train_policy")]
  assert [r["step"] for r in read_metrics(run.workdir, "train_policy")] == original_steps


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
    run_stages(tiny_config(), workdir, ["eval_policy"])
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
  policy = pipeline.Context(tiny_config(), finished.workdir).load_policy()
  expected = sum(float(np.abs(np.asarray(x)).sum()) for x in jax.tree.leaves(policy.params))
  assert int(devices) == 1
  assert float(checksum) == pytest.approx(expected, rel=1e-6)
