"""Opening a TFDS dataset: prepared once, read back as `Example`s.

What every builder here shares (`arith_builder`, `math_builder`): a builder
is prepared once in a shared data directory by process 0 while the others
wait (`prepare_and_open`), the leftovers of a killed preparation are removed
first, TFDS's chatter is silenced, and a split is read back as random-access
records (`DataSource`) or as `Example`s (`read_examples`) when its records
carry `question`, `solution`, `answer` (bytes) and `level`.
"""

from __future__ import annotations

import contextlib
import os
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import logging as absl_logging
from etils import epath
from tensorflow_datasets.core.utils import tqdm_utils

from ttscale import distributed
from ttscale.tasks.base import Example


class DataSource(typing.Protocol):
  """What `as_data_source()` returns per split: random access to records.

  A record is a dict of numpy values, with text as bytes.
  """

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...

  def __getitems__(self, indices: Sequence[int]) -> Sequence[dict[str, Any]]: ...


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
  """Silences TFDS's info chatter and progress bars; errors still surface."""
  verbosity = absl_logging.get_verbosity()
  progress_bar_shown = getattr(tqdm_utils, "_active", True)
  absl_logging.set_verbosity(absl_logging.ERROR)
  tfds.display_progress_bar(False)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)
    tfds.display_progress_bar(progress_bar_shown)


def remove_incomplete_leftovers(version_dir: str) -> list[str]:
  """Removes the `incomplete.*` directories TFDS left beside `version_dir`
  (a run killed while preparing); returns their paths.

  Safe only while no other process prepares the same dataset: the workdir
  lock (`pipeline.workdir_lock`) makes sure of that.
  """
  removed = []
  for path in sorted(epath.Path(version_dir).parent.glob("incomplete.*")):
    if path.is_dir():
      path.rmtree()
      removed.append(str(path))
  return removed


def prepare_and_open(make_builder: Callable[[], tfds.core.DatasetBuilder],
                     data_dir: str) -> Mapping[str, DataSource]:
  """Prepares a dataset once and opens it on every process.

  With several processes (`ttscale.distributed`) process 0 prepares it in the
  shared `data_dir` while the others wait at a barrier; they make their
  builder after it, since a builder reads what is prepared when it is made.

  Returns:
    split name -> random-access source (`builder.as_data_source()`).
  """
  with quiet_tfds():
    if distributed.is_writer():
      builder = make_builder()
      remove_incomplete_leftovers(builder.data_dir)
      builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
    distributed.barrier(f"data: prepared in {data_dir}")
    return make_builder().as_data_source()


def read_examples(source: DataSource) -> list[Example]:
  """Returns every record of `source` as an `Example`, in source order."""
  # One batched read is about twice as fast as reading records one by one.
  records = source.__getitems__(list(range(len(source))))
  return [
    Example(
      question=record["question"].decode(),
      solution=record["solution"].decode(),
      answer=record["answer"].decode(),
      level=int(record["level"]),
    )
    for record in records
  ]
