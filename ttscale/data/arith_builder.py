"""The arithmetic-chain dataset as a TFDS builder (array_record, no TensorFlow).

Each record has `question`, `solution`, `answer` (Text, read back as bytes)
and `level` (int32); see `ttscale.tasks.arith` for the text format. Splits
are train, validation and test.

Splits and deduplication
------------------------
Each split is drawn from its own stream, seeded by a hash of (`seed`, split
name), so the splits never share a random stream. Held-out splits are drawn
first: test, then validation. A held-out split keeps only questions not seen
before in any held-out split, so its questions are distinct and it shares none
with the other held-out split. Train is drawn last and skips every held-out
question, but may repeat its own questions, as the task's distribution does
at low levels. Skipped draws are replaced by further draws from the same
stream until every split has its size. Removing held-out questions from train
slightly thins train's easiest levels, whose question space is smallest.

Configs
-------
A config carries the task knobs, the split sizes and the seed; its name is a
hash of all of them, so datasets with different settings live side by side in
one data_dir and a prepared dataset is reused only for identical settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ttscale.data.tfds_source import DataSource, prepare_and_open
from ttscale.tasks.arith import ArithTask
from ttscale.tasks.base import Example

SPLIT_NAMES = ("train", "validation", "test")
# Held-out splits are drawn before train so that train can avoid them.
_DRAW_ORDER = ("test", "validation", "train")
_HELD_OUT_SPLITS = frozenset(("test", "validation"))
# A guard against knobs whose question space is too small for the sizes asked.
_MAX_DRAWS_PER_EXAMPLE = 100


@dataclasses.dataclass(eq=False)
class ArithChainsConfig(tfds.core.BuilderConfig):
  """Task knobs, split sizes and seed of one arithmetic-chain dataset."""

  min_ops: int = 1
  max_ops: int = 8
  max_operand: int = 29
  max_multiplier: int = 9
  max_abs_value: int = 999
  num_train: int = 20000
  num_validation: int = 1000
  num_test: int = 1000
  seed: int = 0

  def task(self) -> ArithTask:
    return ArithTask(
      min_ops=self.min_ops,
      max_ops=self.max_ops,
      max_operand=self.max_operand,
      max_multiplier=self.max_multiplier,
      max_abs_value=self.max_abs_value,
    )

  def split_sizes(self) -> dict[str, int]:
    return {
      "train": self.num_train,
      "validation": self.num_validation,
      "test": self.num_test,
    }


def make_config(
  task: ArithTask, split_sizes: Mapping[str, int], seed: int
) -> ArithChainsConfig:
  """Returns the config for these settings, named by a hash of all of them.

  Args:
    task: the task whose knobs the dataset uses.
    split_sizes: the number of examples per split, keyed by SPLIT_NAMES.
    seed: the seed every split's stream is derived from.
  """
  settings = {
    "min_ops": task.min_ops,
    "max_ops": task.max_ops,
    "max_operand": task.max_operand,
    "max_multiplier": task.max_multiplier,
    "max_abs_value": task.max_abs_value,
    "num_train": split_sizes["train"],
    "num_validation": split_sizes["validation"],
    "num_test": split_sizes["test"],
    "seed": seed,
  }
  settings_json = json.dumps(settings, sort_keys=True)
  digest = hashlib.sha256(settings_json.encode()).hexdigest()[:12]
  return ArithChainsConfig(name=f"h{digest}", description=settings_json, **settings)


def split_seed(seed: int, split: str) -> int:
  """Returns the seed of one split's stream, a 64-bit hash of (seed, split)."""
  digest = hashlib.sha256(f"arith_chains/{seed}/{split}".encode()).digest()
  return int.from_bytes(digest[:8], "little")


def draw_splits(
  task: ArithTask, split_sizes: Mapping[str, int], seed: int
) -> dict[str, list[Example]]:
  """Draws every split, deduplicated as the module docstring explains.

  Args:
    task: the task to draw from.
    split_sizes: the number of examples per split, keyed by SPLIT_NAMES.
    seed: the seed every split's stream is derived from.

  Returns:
    {split name: examples}, each list of its split's size.

  Raises:
    ValueError: the knobs allow too few distinct questions for the sizes.
  """
  held_out_questions: set[str] = set()
  splits = {}
  for split in _DRAW_ORDER:
    size = split_sizes[split]
    max_draws = _MAX_DRAWS_PER_EXAMPLE * size
    examples = []
    stream = task.stream(split_seed(seed, split))
    for _ in range(max_draws):
      if len(examples) == size:
        break
      example = next(stream)
      if example.question in held_out_questions:
        continue
      if split in _HELD_OUT_SPLITS:
        held_out_questions.add(example.question)
      examples.append(example)
    if len(examples) < size:
      raise ValueError(
        f"found only {len(examples)} of data.num_{split}={size} new "
        f"questions in {max_draws} draws: the task's knobs allow too "
        "few distinct questions for these split sizes"
      )
    splits[split] = examples
  return splits


class ArithChains(tfds.core.GeneratorBasedBuilder):
  """Arithmetic chains; create it with a config from `make_config`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version."}
  # TFDS finds a builder's source through `importlib_resources`, which is not
  # installed without TensorFlow's extras; naming the file directly skips it.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Chains of +, -, * on a running value, one per line.",
      features=tfds.features.FeaturesDict(
        {
          "question": tfds.features.Text(),
          "solution": tfds.features.Text(),
          "answer": tfds.features.Text(),
          "level": np.int32,
        }
      ),
    )

  def _split_generators(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    del dl_manager  # everything is generated, nothing is downloaded
    config = self.builder_config
    splits = draw_splits(config.task(), config.split_sizes(), config.seed)
    return {split: self._generate_examples(splits[split]) for split in SPLIT_NAMES}

  def _generate_examples(
    self, examples: list[Example]
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, example in enumerate(examples):
      yield index, dataclasses.asdict(example)


def _data_field(data_config: Mapping[str, Any], field_name: str) -> int:
  value = dict(data_config.items()).get(field_name)
  minimum = 0 if field_name == "seed" else 1
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(
      f"data.{field_name} must be an integer >= {minimum}, got {value!r}"
    )
  return value


def build_arith_data(
  task_config: Mapping[str, Any], data_config: Mapping[str, Any], data_dir: str
) -> dict[str, DataSource]:
  """Prepares the dataset in `data_dir` unless already there, and opens it.

  Preparing is idempotent: a dataset with the same settings is reused, never
  regenerated. TFDS writes into a temporary directory and renames it when
  done, so an interrupted run leaves no half-written dataset behind.

  Args:
    task_config: the `task` config; `task.name` must be "arith".
    data_config: the `data` config; `num_train`, `num_validation`,
      `num_test` and `seed` are read, other keys ignored.
    data_dir: the TFDS data directory.

  Returns:
    {"train", "validation", "test"} -> random-access sources of records
    (`tfds_source.read_examples` turns one into `Example`s).
  """
  task_name = dict(task_config.items()).get("name")
  if task_name != "arith":
    raise ValueError(f"build_arith_data needs task.name 'arith', got {task_name!r}")
  task = ArithTask.from_config(task_config)
  split_sizes = {
    split: _data_field(data_config, f"num_{split}") for split in SPLIT_NAMES
  }
  config = make_config(task, split_sizes, _data_field(data_config, "seed"))
  sources = prepare_and_open(
      lambda: ArithChains(config=config, data_dir=data_dir, file_format="array_record"),
      os.fspath(data_dir))
  return {split: sources[split] for split in SPLIT_NAMES}
