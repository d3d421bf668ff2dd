"""Tests of the arithmetic-chain TFDS builder (array_record, no TensorFlow)."""

from __future__ import annotations

import collections

import ml_collections
import pytest

from ttscale.data import arith_builder
from ttscale.data.arith_builder import (
  build_arith_data,
  draw_splits,
  make_config,
  split_seed,
)
from ttscale.data.tfds_source import read_examples
from ttscale.tasks.arith import ArithTask, canonical_solution, evaluate

TASK_CONFIG = {
  "name": "arith",
  "min_ops": 1,
  "max_ops": 4,
  "max_operand": 29,
  "max_multiplier": 9,
  "max_abs_value": 999,
}
DATA_CONFIG = {
  "num_train": 200,
  "num_validation": 50,
  "num_test": 50,
  "seed": 0,
  "batch_size": 8,  # not the builder's business: ignored
}
SIZES = {"train": 200, "validation": 50, "test": 50}


def _record_files(data_dir):
  return sorted(data_dir.rglob("*.array_record*"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  sources = build_arith_data(TASK_CONFIG, DATA_CONFIG, str(data_dir))
  examples = {split: read_examples(source) for split, source in sources.items()}
  return data_dir, examples


def test_split_sizes(built):
  _, examples = built
  assert {
    split: len(split_examples) for split, split_examples in examples.items()
  } == SIZES


def test_held_out_questions_are_unique_and_absent_from_train(built):
  _, examples = built
  questions = {
    split: [e.question for e in split_examples]
    for split, split_examples in examples.items()
  }
  for held_out in ("validation", "test"):
    assert len(set(questions[held_out])) == len(questions[held_out])
    assert not set(questions[held_out]) & set(questions["train"])
  assert not set(questions["validation"]) & set(questions["test"])


def test_records_decode_to_consistent_examples(built):
  _, examples = built
  for split_examples in examples.values():
    for example in split_examples:
      assert isinstance(example.question, str)
      assert example.solution == canonical_solution(example.question)
      assert example.answer == str(evaluate(example.question))
      assert 1 <= example.level <= 4
      assert example.level == example.question.count("+") + example.question.count(
        "-"
      ) + example.question.count("*")


def test_second_call_reuses_prepared_data(built, monkeypatch):
  data_dir, examples = built
  files_before = {path: path.stat().st_mtime_ns for path in _record_files(data_dir)}
  assert files_before

  def fail_if_regenerated(*args, **kwargs):
    raise AssertionError("the dataset was generated a second time")

  monkeypatch.setattr(arith_builder, "draw_splits", fail_if_regenerated)
  config = ml_collections.ConfigDict(DATA_CONFIG)
  sources = build_arith_data(TASK_CONFIG, config, str(data_dir))
  assert {split: read_examples(source) for split, source in sources.items()} == examples
  assert {
    path: path.stat().st_mtime_ns for path in _record_files(data_dir)
  } == files_before


def test_other_settings_live_beside_the_first_dataset(built):
  data_dir, examples = built
  other_sources = build_arith_data(
    TASK_CONFIG, {**DATA_CONFIG, "seed": 1}, str(data_dir)
  )
  other_test = read_examples(other_sources["test"])
  assert len(other_test) == SIZES["test"]
  assert other_test != examples["test"]
  config_dirs = {path.name for path in (data_dir / "arith_chains").iterdir()}
  assert len(config_dirs) == 2


def test_config_name_changes_with_every_setting():
  task = ArithTask(max_ops=4)
  names = {
    make_config(task, SIZES, 0).name,
    make_config(task, {**SIZES, "train": 201}, 0).name,
    make_config(task, {**SIZES, "validation": 51}, 0).name,
    make_config(task, {**SIZES, "test": 51}, 0).name,
    make_config(task, SIZES, 1).name,
    make_config(ArithTask(max_ops=5), SIZES, 0).name,
    make_config(ArithTask(max_ops=4, max_abs_value=998), SIZES, 0).name,
  }
  assert len(names) == 7
  assert (
    make_config(task, SIZES, 0).name == make_config(ArithTask(max_ops=4), SIZES, 0).name
  )


def test_draw_splits_is_deterministic_and_seeds_differ_per_split():
  task = ArithTask(max_ops=4)
  assert draw_splits(task, SIZES, 5) == draw_splits(task, SIZES, 5)
  assert draw_splits(task, SIZES, 5) != draw_splits(task, SIZES, 6)
  seeds = {split_seed(5, split) for split in SIZES}
  assert len(seeds) == 3


def test_train_may_repeat_questions_but_never_held_out_ones():
  # A tiny question space makes collisions certain.
  task = ArithTask(min_ops=1, max_ops=1, max_operand=5, max_multiplier=3)
  splits = draw_splits(task, {"train": 300, "validation": 5, "test": 5}, 0)
  train_counts = collections.Counter(example.question for example in splits["train"])
  assert max(train_counts.values()) > 1
  held_out = {example.question for example in splits["test"] + splits["validation"]}
  assert len(held_out) == 10
  assert not held_out & set(train_counts)


def test_too_small_question_space_raises_instead_of_looping():
  # Only "1-1" keeps |value| <= 1, so two distinct test questions do not exist.
  task = ArithTask(
    min_ops=1, max_ops=1, max_operand=1, max_multiplier=2, max_abs_value=1
  )
  with pytest.raises(ValueError, match="data.num_test"):
    draw_splits(task, {"train": 1, "validation": 1, "test": 2}, 0)


def test_wrong_task_name_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="task.name"):
    build_arith_data({"name": "math"}, DATA_CONFIG, str(tmp_path))


@pytest.mark.parametrize(
  ("field", "value"), [("num_train", 0), ("num_test", None), ("seed", -1)]
)
def test_invalid_data_config_is_rejected_naming_field(tmp_path, field, value):
  data_config = {**DATA_CONFIG, field: value}
  with pytest.raises(ValueError, match=f"data.{field}"):
    build_arith_data(TASK_CONFIG, data_config, str(tmp_path))


def test_leftovers_of_a_killed_prepare_are_removed_on_the_next_build(tmp_path):
  """Fails if an `incomplete.*` directory TFDS left (a run killed while
  preparing) survives the next build, or if the prepared data is touched."""
  sources = build_arith_data(TASK_CONFIG, DATA_CONFIG, str(tmp_path))
  version_dir = _record_files(tmp_path)[0].parent
  leftover = version_dir.parent / "incomplete.KILLED"
  (leftover / "x").mkdir(parents=True)
  files = sorted(p.name for p in version_dir.iterdir())
  again = build_arith_data(TASK_CONFIG, DATA_CONFIG, str(tmp_path))
  assert not leftover.exists()
  assert sorted(p.name for p in version_dir.iterdir()) == files
  assert read_examples(again["test"]) == read_examples(sources["test"])
