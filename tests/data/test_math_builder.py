"""Tests of the MATH TFDS builder, on a tiny MATH-format directory."""

from __future__ import annotations

import json
import shutil

import pytest

from ttscale.data import math_builder
from ttscale.data.math_builder import (
  MathRecord,
  build_math_data,
  load_split,
  make_config,
  read_math_dir,
  read_records,
  read_test_ids,
)
from ttscale.tasks.base import Example

# (id, level string, solution, expected answer); answers nest braces, and an
# earlier box is superseded by the last one.
PROBLEMS = [
  ("train/algebra/10.json", "Level 2", "So $x=\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
  ("train/algebra/1.json", "Level 1", "Add: $1+1=\\boxed{2}$.", "2"),
  (
    "train/geometry/2.json",
    "Level 5",
    "First $\\boxed{3}$, no:\nthe area is $\\boxed{\\sqrt{\\frac{3}{4}}}$.",
    "\\sqrt{\\frac{3}{4}}",
  ),
  ("test/algebra/10.json", "Level 3", "Hence $\\boxed{\\{1,\\{2\\}\\}}$.", "\\{1,\\{2\\}\\}"),
  ("test/algebra/2.json", "Level 4", "We get $\\boxed{x^{2^{3}}}$.", "x^{2^{3}}"),
  ("test/geometry/intro.json", "Level ?", "It is $\\fbox{90^\\circ}$.", "90^\\circ"),
  ("test/geometry/1.json", "Level 1", "It is $\\boxed{\\dfrac{\\pi}{3}}$.", "\\dfrac{\\pi}{3}"),
]
# Sorted by (subject, integer stem, other stems after integers).
TRAIN_ORDER = ["train/algebra/1.json", "train/algebra/10.json", "train/geometry/2.json"]
TEST_ORDER = [
  "test/algebra/2.json",
  "test/algebra/10.json",
  "test/geometry/1.json",
  "test/geometry/intro.json",
]
TEST500_ORDER = ["test/geometry/intro.json", "test/algebra/10.json", "test/geometry/1.json"]


def _problem_json(problem_id: str, level: str, solution: str) -> dict[str, str]:
  subject = problem_id.split("/")[1]
  return {
    "problem": f"Problem {problem_id} with {{braces}} and\nnewline.",
    "level": level,
    "type": subject.title(),
    "solution": solution,
  }


def _expected(problem_id: str) -> MathRecord:
  _, level, solution, answer = next(p for p in PROBLEMS if p[0] == problem_id)
  return MathRecord(
    question=_problem_json(problem_id, level, solution)["problem"],
    solution=solution,
    answer=answer,
    level=0 if level == "Level ?" else int(level.split()[1]),
    subject=problem_id.split("/")[1],
    id=problem_id,
  )


def _write_math_dir(root):
  for problem_id, level, solution, _ in PROBLEMS:
    path = root / problem_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_problem_json(problem_id, level, solution)))
  ids_file = root.parent / f"{root.name}_ids.txt"
  # Blank lines are ignored; the order is the file's, not the sorted order.
  ids_file.write_text("\n".join([TEST500_ORDER[0], "", *TEST500_ORDER[1:]]) + "\n")
  return root, ids_file


@pytest.fixture(scope="module")
def math_dir(tmp_path_factory):
  return _write_math_dir(tmp_path_factory.mktemp("inputs") / "MATH")


@pytest.fixture(scope="module")
def built(math_dir, tmp_path_factory):
  manual_dir, ids_file = math_dir
  data_dir = tmp_path_factory.mktemp("tfds")
  sources = build_math_data(manual_dir, data_dir, test_ids_file=ids_file)
  return data_dir, {split: read_records(source) for split, source in sources.items()}


@pytest.fixture
def broken_dir(math_dir, tmp_path):
  """A fresh copy of the inputs, for one test to break."""
  manual_dir, ids_file = math_dir
  shutil.copytree(manual_dir, tmp_path / "MATH")
  shutil.copy(ids_file, tmp_path / "ids.txt")
  return tmp_path / "MATH", tmp_path / "ids.txt", tmp_path / "tfds"


def test_every_field_round_trips_in_deterministic_order(built):
  _, records = built
  assert set(records) == {"train", "test", "test500"}
  assert records["train"] == [_expected(problem_id) for problem_id in TRAIN_ORDER]
  assert records["test"] == [_expected(problem_id) for problem_id in TEST_ORDER]


def test_test500_holds_exactly_the_listed_ids_in_file_order(built):
  _, records = built
  assert [record.id for record in records["test500"]] == TEST500_ORDER
  test_by_id = {record.id: record for record in records["test"]}
  assert records["test500"] == [test_by_id[problem_id] for problem_id in TEST500_ORDER]


def test_order_does_not_depend_on_file_creation_order(built, tmp_path):
  _, records = built
  # Written in reverse: a filesystem listing order would differ.
  manual_dir = tmp_path / "MATH"
  for problem_id, level, solution, _ in reversed(PROBLEMS):
    path = manual_dir / problem_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_problem_json(problem_id, level, solution)))
  assert read_math_dir(manual_dir)["test"] == records["test"]


def test_load_split_returns_examples_and_reuses_prepared_data(built, math_dir, monkeypatch):
  data_dir, records = built
  manual_dir, ids_file = math_dir

  def fail_if_regenerated(*args, **kwargs):
    raise AssertionError("the dataset was generated a second time")

  monkeypatch.setattr(math_builder, "read_math_dir", fail_if_regenerated)
  examples = load_split(manual_dir, data_dir, "test500", test_ids_file=ids_file)
  assert examples == [
    Example(question=r.question, solution=r.solution, answer=r.answer, level=r.level)
    for r in records["test500"]
  ]
  with pytest.raises(ValueError, match="unknown MATH split 'validation'"):
    load_split(manual_dir, data_dir, "validation", test_ids_file=ids_file)


def test_config_name_follows_content_not_path(math_dir, broken_dir):
  manual_dir, ids_file = math_dir
  copy_dir, copy_ids, _ = broken_dir
  assert make_config(copy_dir, copy_ids).name == make_config(manual_dir, ids_file).name
  names = {make_config(manual_dir).name, make_config(manual_dir, ids_file).name}
  copy_ids.write_text("\n".join(reversed(TEST500_ORDER)))
  names.add(make_config(copy_dir, copy_ids).name)
  # Same size, different content.
  (copy_dir / "test/algebra/2.json").write_text(
    (copy_dir / "test/algebra/2.json").read_text().replace("Level 4", "Level 3")
  )
  names.add(make_config(copy_dir).name)
  assert len(names) == 4


def test_ids_file_accepts_json_lines(tmp_path):
  ids_file = tmp_path / "test.jsonl"
  lines = [
    json.dumps({"problem": "p", "unique_id": TEST500_ORDER[0]}),
    json.dumps({"id": TEST500_ORDER[1]}),
    json.dumps(TEST500_ORDER[2]),
  ]
  ids_file.write_text("\n".join(lines))
  assert read_test_ids(ids_file) == TEST500_ORDER


def _assert_one_line_error(error, *parts):
  message = str(error.value)
  assert "\n" not in message
  for part in parts:
    assert part in message, (part, message)


@pytest.mark.parametrize(
  ("problem_id", "content", "reason"),
  [
    ("test/algebra/2.json", '{"problem": "x", "level": ', "invalid JSON"),
    ("train/geometry/2.json", "[1, 2]", "expected a JSON object"),
    (
      "test/algebra/2.json",
      json.dumps({"problem": "p", "level": "Level 1", "type": "Algebra"}),
      "missing field 'solution'",
    ),
    (
      "test/geometry/1.json",
      json.dumps({"problem": 3, "level": "Level 1", "type": "G", "solution": "\\boxed{1}"}),
      "field 'problem' is not a string",
    ),
    (
      "train/algebra/1.json",
      json.dumps({"problem": "p", "level": "Level 6", "type": "A", "solution": "\\boxed{1}"}),
      "field 'level' is 'Level 6'",
    ),
    (
      "test/algebra/10.json",
      json.dumps({"problem": "p", "level": "hard", "type": "A", "solution": "\\boxed{1}"}),
      "field 'level' is 'hard'",
    ),
    (
      "test/algebra/10.json",
      json.dumps({"problem": "p", "level": "Level 2", "type": "A", "solution": "The answer is 4."}),
      "field 'solution' has no final \\boxed{...} answer",
    ),
    (
      "test/algebra/10.json",
      json.dumps({"problem": "p", "level": "Level 2", "type": "A", "solution": "\\boxed{1"}),
      "field 'solution' has no final \\boxed{...} answer",
    ),
  ],
)
def test_malformed_problem_raises_naming_file_and_reason(broken_dir, problem_id, content, reason):
  manual_dir, ids_file, data_dir = broken_dir
  path = manual_dir / problem_id
  path.write_text(content)
  with pytest.raises(ValueError) as error:
    build_math_data(manual_dir, data_dir, test_ids_file=ids_file)
  _assert_one_line_error(error, str(path), reason)
  # The failed build left no dataset to be reused.
  assert not list(data_dir.rglob("*.array_record*"))


def test_unknown_id_in_ids_file_raises_naming_file_and_id(broken_dir):
  manual_dir, ids_file, data_dir = broken_dir
  ids_file.write_text("test/algebra/2.json\ntest/algebra/99.json\n")
  with pytest.raises(ValueError) as error:
    build_math_data(manual_dir, data_dir, test_ids_file=ids_file)
  _assert_one_line_error(error, str(ids_file), "'test/algebra/99.json'", "not a test problem")


def test_train_id_in_ids_file_is_not_a_test_problem(broken_dir):
  manual_dir, ids_file, _ = broken_dir
  ids_file.write_text("train/algebra/1.json\n")
  with pytest.raises(ValueError) as error:
    read_math_dir(manual_dir, ids_file)
  _assert_one_line_error(error, str(ids_file), "'train/algebra/1.json'")


def test_repeated_id_in_ids_file_raises(broken_dir):
  _, ids_file, _ = broken_dir
  ids_file.write_text("test/algebra/2.json\ntest/algebra/2.json\n")
  with pytest.raises(ValueError) as error:
    read_test_ids(ids_file)
  _assert_one_line_error(error, f"{ids_file}:2", "listed twice")


def test_missing_manual_dir_raises_naming_it(tmp_path):
  missing = tmp_path / "no_such_MATH"
  with pytest.raises(ValueError) as error:
    build_math_data(missing, tmp_path / "tfds")
  _assert_one_line_error(error, str(missing), "does not exist", "train/<subject>/<id>.json")


def test_manual_dir_without_test_split_raises_naming_it(broken_dir):
  manual_dir, _, data_dir = broken_dir
  shutil.rmtree(manual_dir / "test")
  with pytest.raises(ValueError) as error:
    build_math_data(manual_dir, data_dir)
  _assert_one_line_error(error, str(manual_dir), "no test/ directory")
