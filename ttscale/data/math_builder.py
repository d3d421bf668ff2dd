"""The MATH dataset (Hendrycks et al. 2021) as a TFDS builder, from local files.

Nothing is downloaded: the builder reads the public MATH layout from a local
`manual_dir`::

    manual_dir/train/<subject>/<id>.json
    manual_dir/test/<subject>/<id>.json

each a JSON object with string fields `problem`, `level` ("Level 1" ..
"Level 5", or "Level ?", read as level 0), `type` and `solution`.

Records
-------
`question` (the problem), `solution`, `answer` (the content of the solution's
final `\\boxed{...}`, by `MathTask.extract_answer`), `subject` (the directory
name) and `id` (e.g. "test/algebra/1.json") are Text, read back as bytes;
`level` is int32. Splits are train and test, plus test500 when a
`test_ids_file` is given: exactly the test problems it lists, in its order
(e.g. the 500-problem MATH500 split of Lightman et al., used by Snell et al.).
Within train and test, files are sorted by (subject, id), the id compared as an
integer when the file's stem is one, so "2.json" comes before "10.json".
Records are stored unshuffled, so `as_data_source()` returns them in this order.

Malformed input is reported, never skipped: a file that is not valid JSON, a
missing or non-string field, a level other than "Level N" or "Level ?", or a
solution without a final boxed answer raises a one-line ValueError naming the
file and the reason. Every file is read and checked before anything is
written, so a bad file leaves no dataset behind.

Configs
-------
A config carries `manual_dir` and `test_ids_file`; its name is a hash of the
input's content (each file's relative path and SHA-256, and the listed test
ids), not of the paths, so a copy of the same files reuses a prepared dataset
and an edited file prepares a new one beside the old.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ttscale.data.tfds_source import DataSource, prepare_and_open, read_examples
from ttscale.tasks.base import Example
from ttscale.tasks.math import MathTask

BASE_SPLITS = ("train", "test")
SUBSET_SPLIT = "test500"
_FIELDS = ("problem", "level", "type", "solution")
_LEVEL = re.compile(r"Level ([1-5?])")
# The box commands `MathTask.extract_answer` reads; its fallback to an
# "The answer is ..." sentence is not a reference answer, so a box is required.
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _one_line(message: str) -> str:
  # Messages embed JSON errors and problem text; callers parse one line.
  return " ".join(message.split())


def _fail(path: os.PathLike[str] | str, reason: str) -> ValueError:
  return ValueError(_one_line(f"{os.fspath(path)}: {reason}"))


@dataclasses.dataclass(frozen=True)
class MathRecord:
  """One MATH problem as stored: an `Example` plus where it came from.

  Attributes:
    question, solution, answer, level: as in `Example`; level 0 is "Level ?".
    subject: the subject directory, e.g. "algebra".
    id: the path below manual_dir, e.g. "test/algebra/1.json".
  """

  question: str
  solution: str
  answer: str
  level: int
  subject: str
  id: str


def _sort_key(path: pathlib.Path) -> tuple[str, int, int, str]:
  # Integer stems first, numerically; any other stem after them, by name.
  stem = path.stem
  if stem.isascii() and stem.isdigit():
    return (path.parent.name, 0, int(stem), "")
  return (path.parent.name, 1, 0, stem)


def _check_manual_dir(manual_dir: os.PathLike[str] | str) -> pathlib.Path:
  root = pathlib.Path(manual_dir)
  expected = "a MATH directory holding train/<subject>/<id>.json and test/<subject>/<id>.json"
  if not root.is_dir():
    raise _fail(root, f"manual_dir does not exist or is not a directory; expected {expected}")
  missing = [split for split in BASE_SPLITS if not (root / split).is_dir()]
  if missing:
    raise _fail(root, f"manual_dir has no {'/ or '.join(missing)}/ directory; expected {expected}")
  return root


def problem_files(manual_dir: os.PathLike[str] | str, split: str) -> list[pathlib.Path]:
  """Returns the split's `<subject>/<id>.json` files in the deterministic order.

  Raises:
    ValueError: `manual_dir` lacks train/ or test/, or the split has no files.
  """
  root = _check_manual_dir(manual_dir)
  files = sorted((root / split).glob("*/*.json"), key=_sort_key)
  if not files:
    raise _fail(root / split, "no <subject>/<id>.json files")
  return files


def read_problem(path: os.PathLike[str] | str, manual_dir: os.PathLike[str] | str) -> MathRecord:
  """Reads and checks one MATH problem file; `id` is its path below `manual_dir`.

  Raises:
    ValueError: the file is not UTF-8 JSON, a field is missing or not a
      string, the level is not "Level N" (N in 1..5) or "Level ?", or the
      solution has no final boxed answer; the one-line message names `path`.
  """
  path = pathlib.Path(path)
  try:
    data = json.loads(path.read_bytes().decode("utf-8"))
  except UnicodeDecodeError as error:
    raise _fail(path, f"not UTF-8: {error.reason} at byte {error.start}") from error
  except json.JSONDecodeError as error:
    where = f"line {error.lineno} column {error.colno}"
    raise _fail(path, f"invalid JSON: {error.msg} at {where}") from error
  except OSError as error:
    raise _fail(path, f"cannot read: {error.strerror or error}") from error
  if not isinstance(data, dict):
    raise _fail(path, f"expected a JSON object, got {type(data).__name__}")
  for field in _FIELDS:
    if field not in data:
      raise _fail(path, f"missing field {field!r}")
    if not isinstance(data[field], str):
      raise _fail(path, f"field {field!r} is not a string: {type(data[field]).__name__}")
  level = _LEVEL.fullmatch(data["level"])
  if level is None:
    expected = "expected 'Level 1'..'Level 5' or 'Level ?'"
    raise _fail(path, f"field 'level' is {data['level']!r}, {expected}")
  solution = data["solution"]
  answer = MathTask().extract_answer(solution)
  if answer is None or not any(command in solution for command in _BOX_COMMANDS):
    raise _fail(path, "field 'solution' has no final \\boxed{...} answer")
  return MathRecord(
    question=data["problem"],
    solution=solution,
    answer=answer,
    level=0 if level.group(1) == "?" else int(level.group(1)),
    subject=path.parent.name,
    id=path.relative_to(manual_dir).as_posix(),
  )


def read_test_ids(test_ids_file: os.PathLike[str] | str) -> list[str]:
  """Returns the ids listed in `test_ids_file`, in file order.

  One id per non-blank line: plain text ("test/algebra/1.json"), a JSON
  string, or a JSON object with a `unique_id` or `id` field (the MATH500
  `test.jsonl` format).

  Raises:
    ValueError: the file cannot be read, a line cannot be parsed, an id
      repeats, or there is no id; the one-line message names the file.
  """
  try:
    lines = pathlib.Path(test_ids_file).read_text(encoding="utf-8").splitlines()
  except (OSError, UnicodeDecodeError) as error:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else error
    raise _fail(test_ids_file, f"cannot read test_ids_file: {reason}") from error
  ids: list[str] = []
  seen: set[str] = set()
  for line_number, raw_line in enumerate(lines, start=1):
    line = raw_line.strip()
    if not line:
      continue
    where = f"{os.fspath(test_ids_file)}:{line_number}"
    problem_id: Any = line
    if line[0] in '{"':
      try:
        problem_id = json.loads(line)
      except json.JSONDecodeError as error:
        raise _fail(where, f"invalid JSON: {error.msg}") from error
      if isinstance(problem_id, dict):
        problem_id = problem_id.get("unique_id", problem_id.get("id"))
    if not isinstance(problem_id, str) or not problem_id:
      raise _fail(where, "expected an id, a JSON string or an object with 'unique_id' or 'id'")
    if problem_id in seen:
      raise _fail(where, f"id {problem_id!r} is listed twice")
    seen.add(problem_id)
    ids.append(problem_id)
  if not ids:
    raise _fail(test_ids_file, "test_ids_file lists no ids")
  return ids


def read_math_dir(
  manual_dir: os.PathLike[str] | str, test_ids_file: os.PathLike[str] | str | None = None
) -> dict[str, list[MathRecord]]:
  """Reads and checks every problem, as the module docstring explains.

  Returns:
    {"train", "test"} (and "test500" when `test_ids_file` is given) -> records
    in split order.

  Raises:
    ValueError: a malformed `manual_dir`, problem file or `test_ids_file`, or
      an id of `test_ids_file` that is not a test problem (the message names
      the file and the id).
  """
  splits = {
    split: [read_problem(path, manual_dir) for path in problem_files(manual_dir, split)]
    for split in BASE_SPLITS
  }
  if test_ids_file is not None:
    test_by_id = {record.id: record for record in splits["test"]}
    subset = []
    for problem_id in read_test_ids(test_ids_file):
      if problem_id not in test_by_id:
        raise _fail(
          test_ids_file,
          f"id {problem_id!r} is not a test problem in {os.fspath(manual_dir)}",
        )
      subset.append(test_by_id[problem_id])
    splits[SUBSET_SPLIT] = subset
  return splits


@dataclasses.dataclass(eq=False)
class MathHendrycksConfig(tfds.core.BuilderConfig):
  """Where the MATH files are, and which test ids make the test500 split."""

  manual_dir: str = ""
  test_ids_file: str | None = None

  def split_names(self) -> tuple[str, ...]:
    return BASE_SPLITS if self.test_ids_file is None else (*BASE_SPLITS, SUBSET_SPLIT)


def make_config(
  manual_dir: os.PathLike[str] | str, test_ids_file: os.PathLike[str] | str | None = None
) -> MathHendrycksConfig:
  """Returns the config for these inputs, named by a hash of their content.

  Hashing reads every problem file once (about 20 MB for full MATH).

  Raises:
    ValueError: `manual_dir` is missing or lacks train/ or test/, or
      `test_ids_file` cannot be read.
  """
  root = _check_manual_dir(manual_dir)
  digest = hashlib.sha256()
  num_files = 0
  for split in BASE_SPLITS:
    for path in sorted((root / split).glob("*/*.json"), key=_sort_key):
      file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
      digest.update(f"{path.relative_to(root).as_posix()}\0{file_digest}\n".encode())
      num_files += 1
  settings: dict[str, Any] = {"num_files": num_files, "test_ids": None}
  if test_ids_file is not None:
    test_ids = read_test_ids(test_ids_file)
    digest.update(json.dumps(test_ids).encode())
    settings["test_ids"] = len(test_ids)
  settings["content_sha256"] = digest.hexdigest()
  return MathHendrycksConfig(
    name=f"h{settings['content_sha256'][:12]}",
    description=json.dumps(settings, sort_keys=True),
    manual_dir=os.fspath(manual_dir),
    test_ids_file=None if test_ids_file is None else os.fspath(test_ids_file),
  )


class MathHendrycks(tfds.core.GeneratorBasedBuilder):
  """MATH from local files; create it with a config from `make_config`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version."}
  # TFDS finds a builder's source through `importlib_resources`, which is not
  # installed without TensorFlow's extras; naming the file directly skips it.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="MATH (Hendrycks et al. 2021) problems with reference solutions.",
      features=tfds.features.FeaturesDict(
        {
          "question": tfds.features.Text(),
          "solution": tfds.features.Text(),
          "answer": tfds.features.Text(),
          "level": np.int32,
          "subject": tfds.features.Text(),
          "id": tfds.features.Text(),
        }
      ),
      # Split order is part of the dataset: sorted files, the ids file's order.
      disable_shuffling=True,
      homepage="https://github.com/hendrycks/math",
    )

  def _split_generators(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    del dl_manager  # everything is read from manual_dir, nothing is downloaded
    config = self.builder_config
    # Read eagerly, so that a malformed file fails before anything is written.
    splits = read_math_dir(config.manual_dir, config.test_ids_file)
    return {split: self._generate_examples(records) for split, records in splits.items()}

  def _generate_examples(
    self, records: Sequence[MathRecord]
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, record in enumerate(records):
      yield index, dataclasses.asdict(record)


def build_math_data(
  manual_dir: os.PathLike[str] | str,
  data_dir: os.PathLike[str] | str,
  test_ids_file: os.PathLike[str] | str | None = None,
) -> dict[str, DataSource]:
  """Prepares the dataset in `data_dir` unless already there, and opens it.

  Preparing is idempotent: inputs of the same content reuse the prepared
  dataset. TFDS writes into a temporary directory and renames it when done,
  so an interrupted or failed run leaves no half-written dataset behind.

  Returns:
    {"train", "test"} (and "test500" with `test_ids_file`) -> random-access
    sources of records (`tfds_source.read_examples` turns one into `Example`s).

  Raises:
    ValueError: malformed input; see `read_math_dir`.
  """
  config = make_config(manual_dir, test_ids_file)
  data_dir = os.fspath(data_dir)
  sources = prepare_and_open(
      lambda: MathHendrycks(config=config, data_dir=data_dir, file_format="array_record"),
      data_dir)
  return {split: sources[split] for split in config.split_names()}


def load_split(
  manual_dir: os.PathLike[str] | str,
  data_dir: os.PathLike[str] | str,
  split: str,
  test_ids_file: os.PathLike[str] | str | None = None,
) -> list[Example]:
  """Prepares the dataset if needed and returns one split as `Example`s, in order.

  Raises:
    ValueError: malformed input, or `split` is not one of the dataset's splits.
  """
  sources = build_math_data(manual_dir, data_dir, test_ids_file)
  if split not in sources:
    raise ValueError(f"unknown MATH split {split!r}; known splits: {', '.join(sources)}")
  return read_examples(sources[split])


def read_records(source: DataSource) -> list[MathRecord]:
  """Returns every record of `source` as a `MathRecord`, in source order."""
  records = source.__getitems__(list(range(len(source))))
  return [
    MathRecord(
      question=record["question"].decode(),
      solution=record["solution"].decode(),
      answer=record["answer"].decode(),
      level=int(record["level"]),
      subject=record["subject"].decode(),
      id=record["id"].decode(),
    )
    for record in records
  ]
