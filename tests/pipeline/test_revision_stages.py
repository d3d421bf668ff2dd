"""The revision stages (`pipeline/revision_stages.py`): the data mix, the
revision model resumed from its checkpoint, and missing prerequisites."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config
from stage_runs import (
  KilledAndResumed,
  assert_resumed_equals_uninterrupted,
  expect_one_line_error,
  killed_and_resumed,
  marker,
  metrics_of,
  remove,
  steps,
)

from ttscale import layout, pipeline
from ttscale.testing import tree_digest

REVISION_STAGES = ("revision_data", "train_revision", "train_revision_verifier",
                   "sweep_revisions")


def test_revision_data_mixes_in_the_policy_data_the_config_asks_for(finished):
  """Fails if the revision model's training records are not the trajectories
  plus `revision.policy_data_fraction` of all records as the policy's own
  samples (`revision.policy_data="samples"`, the default): each a sample of a
  revision question, right or wrong, with no previous attempt, held out with
  its question."""
  config = tiny_config()
  fraction = config.revision.policy_data_fraction
  assert 0 < fraction < 1 and config.revision.policy_data == "samples", (
      "the tiny config must mix the policy's samples in for this test")
  records = [json.loads(line) for line in open(
      os.path.join(finished.workdir, "revision", "trajectories.jsonl"))]
  mixed = [r for r in records if r["source"] == "policy_data"]
  trajectories = [r for r in records if r["source"] in ("trajectory", "keep")]
  assert len(mixed) + len(trajectories) == len(records) and trajectories
  assert len(mixed) == round(len(trajectories) * fraction / (1 - fraction))
  sample_parts = sorted(os.listdir(os.path.join(finished.workdir, "revision", "samples")))
  samples = [texts for part in sample_parts for texts in json.load(open(
      os.path.join(finished.workdir, "revision", "samples", part)))["texts"]]
  train = pipeline.Context(config, finished.workdir).examples("train")
  held_out = {r["question_index"]: r["holdout"] for r in trajectories}
  for record in mixed:
    q = record["question_index"]
    assert q < config.revision.num_questions and record["previous"] == []
    assert record["question"] == train[q].question
    assert record["target"] in samples[q]
    if q in held_out:
      assert record["holdout"] == held_out[q]
  assert len({r["question_index"] for r in mixed}) > 1
  summary = marker(finished.workdir, "revision_data")["summary"]
  assert (summary["num_policy_data_records"],
          summary["num_trajectories"] + summary["num_keep_trajectories"]) == (
      len(mixed), len(trajectories))


@pytest.mark.parametrize("missing", REVISION_STAGES[:-1])
def test_revision_sweep_without_its_models_names_the_missing_stage_and_touches_nothing(
    finished, tmp_path, missing):
  """Fails if `sweep_revisions` in a workdir that lacks a revision stage (and
  the ones after it) reports anything but the first missing stage, or writes
  (its table, its meta, a unit) before failing."""
  workdir = finished.copy(str(tmp_path / "workdir"))
  for stage in REVISION_STAGES[REVISION_STAGES.index(missing):]:
    remove(workdir, layout.marker(stage),
           *(path for path in pipeline.STAGES[stage].writes if path != layout.METRICS))
    if stage == "sweep_revisions":
      remove(workdir, layout.REVISION_TABLE + ".meta.json")
  message = expect_one_line_error(workdir, ["sweep_revisions"], missing)
  assert f"stage sweep_revisions needs stage {missing}" in message
  if missing == "train_revision":
    before = tree_digest(workdir)
    with pytest.raises(ValueError, match="'train_revision' stage first"):
      pipeline.Context(tiny_config(), workdir).load_revision_model()
    assert tree_digest(workdir) == before


@pytest.fixture(scope="session")
def train_revision_resumed(finished, tmp_path_factory) -> KilledAndResumed:
  """`train_revision` killed after its next-to-last checkpoint, before the last
  one's validation (its marker, last state step and any best checkpoint of
  that step deleted), re-run. `after_kill`: the state steps left."""
  def as_a_kill_left_it(workdir: str) -> list[int]:
    state_dir = os.path.join(workdir, layout.checkpoints("revision", "state"))
    best_dir = os.path.join(workdir, layout.checkpoints("revision", "best"))
    last = steps(state_dir)[-1]
    remove(workdir, layout.marker("train_revision"), os.path.join(state_dir, str(last)),
           os.path.join(best_dir, str(last)))
    return steps(state_dir)

  return killed_and_resumed(
      finished.copy(str(tmp_path_factory.mktemp("train_revision_resumed") / "workdir")),
      ["train_revision"], cut=as_a_kill_left_it)


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
  assert_resumed_equals_uninterrupted(
      run, finished, "train_revision",
      {layout.METRICS: metrics_of("train_revision", "tokens_per_second")},
      summary_fields=("best_step", "stopped_early", "best_validation_loss"))


def test_train_revision_resumed_keeps_the_uninterrupted_best_parameters(
    finished, train_revision_resumed):
  """Fails if the resumed run's best revision model holds other parameters
  than the uninterrupted run's (another step, or a resume that drifted)."""
  run = train_revision_resumed
  best = [steps(os.path.join(w, "revision", "best")) for w in (run.workdir, finished.workdir)]
  assert best[0] == best[1] == [marker(finished.workdir, "train_revision")["summary"][
      "best_step"]]
  resumed = pipeline.Context(tiny_config(), run.workdir).load_revision_model().params
  original = pipeline.Context(tiny_config(), finished.workdir).load_revision_model().params
  for got, expected in zip(jax.tree.leaves(resumed), jax.tree.leaves(original), strict=True):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-6)
