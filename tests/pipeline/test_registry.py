"""The pipeline as a whole (`pipeline/registry.py`, `pipeline/stages.py`): a
full run, re-runs that skip, config guards before any write, and outputs
changed after their stage finished.

One session-scoped run builds a finished workdir (`conftest.finished`);
tests that change a workdir work on a copy of it.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import tiny_config
from stage_runs import read_json, read_metrics, run_stages, without_seconds

from ttscale import layout, outcomes, pipeline
from ttscale.data import arith_builder, tfds_source
from ttscale.testing import tree_digest

STAGE_NAMES = ("data", "train_policy", "eval_policy", "train_large", "prm_labels",
               "train_prm", "train_orm", "eval_prm", "sweep_search", "revision_data",
               "train_revision", "train_revision_verifier", "sweep_revisions")
# Every stage that writes training metrics (`train_large`: the study stages' larger policy).
TRAINING_STAGES = ("train_policy", "train_prm", "train_orm", "train_revision",
                   "train_revision_verifier", "train_large")


def test_full_run_writes_markers_metrics_and_one_eval_row_per_test_level(finished):
  config = tiny_config()
  for name in STAGE_NAMES:
    assert any(line.startswith(f"stage {name}: done") for line in finished.log), finished.log
    marker = read_json(os.path.join(finished.workdir, "stages", f"{name}.json"))
    assert marker["stage"] == name
  metrics = read_metrics(finished.workdir)
  assert {r["stage"] for r in metrics} == set(TRAINING_STAGES)
  for stage in TRAINING_STAGES:  # log_every=3, num_steps=6 (the verifiers: + validation)
    steps = [r["step"] for r in metrics if r["stage"] == stage and "loss" in r]
    assert steps == [3, 6], (stage, steps)

  sources = arith_builder.build_arith_data(config.task, config.data,
                                           os.path.join(finished.workdir, "data"))
  test_levels = [e.level for e in tfds_source.read_examples(sources["test"])]
  evaluation = read_json(os.path.join(finished.workdir, "eval_policy.json"))
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
  log = run_stages(tiny_config(), workdir)
  seconds = time.time() - started
  for name in STAGE_NAMES:
    assert any(line.startswith(f"stage {name}: already done") for line in log), log
  assert not any(line.endswith(": running") for line in log), log
  assert tree_digest(workdir) == before  # markers, metrics, eval: all as they were
  assert seconds < 5.0


def test_unknown_stage_is_rejected_before_anything_is_written(tmp_path):
  """Fails if an unknown `--stages` entry is accepted, is not named, the
  message does not list every stage in pipeline order (through
  `sweep_revisions`), or anything is written (or the workdir created) first."""
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / "sentinel").write_text("untouched")
  before = tree_digest(str(workdir))
  with pytest.raises(ValueError) as error:
    pipeline.run(tiny_config(), str(workdir), ["data", "bogus"], log=lambda _: None)
  message = str(error.value)
  assert "--stages" in message and "'bogus'" in message
  assert ", ".join(STAGE_NAMES) in message
  assert tree_digest(str(workdir)) == before
  missing = tmp_path / "never_created"
  with pytest.raises(ValueError, match="bogus"):
    pipeline.run(tiny_config(), str(missing), ["bogus"], log=lambda _: None)
  assert not missing.exists()


def test_resume_with_another_model_shape_names_the_field_and_touches_nothing(
    finished, tmp_path):
  # Killed before the stage markers were written, restarted with another shape.
  workdir = finished.copy(str(tmp_path / "workdir"))
  os.remove(os.path.join(workdir, "stages", "train_policy.json"))
  os.remove(os.path.join(workdir, "stages", "eval_policy.json"))
  config = tiny_config()
  config.model.num_layers = 2
  before = tree_digest(workdir)
  with pytest.raises(ValueError, match=r"model\.num_layers=1 in the workdir, 2 now"):
    run_stages(config, workdir)
  assert tree_digest(workdir) == before


def test_rerun_of_a_finished_workdir_with_another_model_shape_is_refused(finished, tmp_path):
  workdir = finished.copy(str(tmp_path / "workdir"))
  config = tiny_config()
  config.model.num_layers = 2
  before = tree_digest(workdir)
  with pytest.raises(ValueError, match=r"model\.num_layers=1 in the workdir, 2 now"):
    run_stages(config, workdir)
  assert tree_digest(workdir) == before


@pytest.mark.parametrize("field, value, needle", [
    ("sampling.temperature", -1.0, "sampling.temperature=-1.0"),
    ("sampling.top_p", 0.0, "sampling.top_p=0.0"),
    ("model.num_kv_heads", 3, "model.num_kv_heads=3"),
    ("model.head_dim", 0, "model.head_dim=0"),
    ("large_model.num_heads", 3, "large_model.num_heads=3"),
    ("data.too_long", "sometimes", "data.too_long='sometimes'"),
    ("revision.keep_fraction", 1.5, "revision.keep_fraction=1.5"),
    ("revision.policy_data", "solutions", "revision.policy_data='solutions'"),
])
def test_bad_network_or_sampling_values_are_refused_before_any_stage_writes(
    tmp_path, field, value, needle):
  """Fails if a network or sampling value that a later stage would refuse lets
  the data stage (or anything) write first: the workdir must not even exist."""
  config = tiny_config()
  block, name = field.split(".")
  config[block][name] = value
  workdir = str(tmp_path / "workdir")
  with pytest.raises(ValueError) as error:
    run_stages(config, workdir)
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
  log = run_stages(tiny_config(), workdir, ["sweep_search", "select"])
  assert any(line.startswith("stage sweep_search: to run again: outcomes/search.jsonl "
                             "changed") for line in log), log
  assert any(line.startswith("stage select: to run again: it reads what changed")
             for line in log), log
  assert any(line.startswith("stage sweep_search: done") for line in log), log
  # The cut row is sampled again, the same but for its wall time.
  assert without_seconds(outcomes.read_table(path)) == without_seconds(
      outcomes.read_table(os.path.join(finished.workdir, "outcomes", "search.jsonl")))
  assert read_json(os.path.join(workdir, "select.json")) == read_json(
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
  log = run_stages(tiny_config(), workdir)
  for stage in ("select", "flops_matched", "report"):
    assert any(line.startswith(f"stage {stage}: done") for line in log), (stage, log)
  assert read_json(path) == read_json(os.path.join(finished.workdir, "select.json"))


def test_every_stage_is_declared_once_with_prerequisites_before_it():
  """Fails if a stage record requires a stage that is not declared before it,
  depends on a config block the config lacks, or vouches for or records a
  path it does not write; or if two stages write one file."""
  config = tiny_config()
  seen, written = [], {}
  for name, stage in pipeline.STAGES.items():
    assert stage.name == name
    assert set(stage.required(config)) <= set(seen), name
    assert set(stage.inputs) <= set(config), name
    assert set(stage.vouches_for) <= set(stage.writes), name
    for fingerprint in stage.made_with:
      assert any(fingerprint.path == path or fingerprint.path.startswith(path + "/")
                 for path in stage.writes), (name, fingerprint.path)
    for path in stage.writes:
      if path != layout.METRICS:  # every training stage appends its metrics
        assert path not in written, (path, name, written.get(path))
        written[path] = name
    seen.append(name)
