"""A resumable map: parts of a job → one JSON file per part → results.

Long stages cut their work into parts and keep each part's result in a file
of its own, so that a killed run loses at most the part in flight. `map_parts`
is that loop, once for every stage:

- a part whose file exists is read, not run again;
- a part whose file is missing is run, and its result written atomically
  (`io_utils.write_json_atomic`: a killed write leaves a `.tmp-` file beside
  the target, never a partial target, and the temporary file is never read);
- every file stores its part's description (any JSON value naming what the
  part computes: its questions, its prefixes, its split), which is compared
  on read: a file written for another part (another setup, or another version
  of the code that cuts the parts otherwise) is refused with a one-line error
  naming the file and what to delete, never misread.

A stored result is the caller's dict plus the description under `key`;
results come back as read from JSON (lists, not tuples), whether resumed or
run now, so that a resumed run computes from exactly what an uninterrupted
one did.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from etils import epath

from ttscale import io_utils
from ttscale.progress import Progress

Item = TypeVar("Item")


@dataclasses.dataclass(frozen=True)
class Part(Generic[Item]):
  """One part of a resumable map."""
  path: str          # the part's JSON file
  description: Any   # JSON value naming what the part computes; stored in the file
  item: Item         # what `run` needs to compute the part (not stored)


@dataclasses.dataclass(frozen=True)
class Mapped:
  """The results of `map_parts`, in part order."""
  results: list[dict]  # per part: its stored dict, the description under `key` included
  resumed: list[bool]  # per part: read from its file (True) or run now (False)

  @property
  def num_resumed(self) -> int:
    return sum(self.resumed)


def _as_json(value: Any) -> Any:
  """`value` as it reads back from a JSON file (tuples become lists, ...)."""
  return json.loads(json.dumps(value))


def map_parts(parts: Sequence[Part[Item]], run: Callable[[Part[Item]], dict], *,
              key: str = "part", delete: str | None = None,
              reusable: Callable[[Part[Item], dict], bool] | None = None,
              on_part: Callable[[int, dict, bool], None] | None = None) -> Mapped:
  """Runs each part whose file is missing, reads the others; in part order.

  Args:
    parts: the parts, each with its own file; `run(part)` returns its result,
      a JSON-serialisable dict without `key`.
    key: the field of a part's file that holds its description.
    delete: what an error for a file of another part tells to delete (the
      parts' directory, when one stale part means all are); default the file.
    reusable: `reusable(part, stored)`, False when a stored result of the
      same part lacks something needed now (e.g. scores of a verifier added
      since): the part is run again and its file replaced. Default: always.
    on_part: called after each part as `on_part(index, result, resumed)`, in
      part order (progress lines; work that consumes each result as it comes,
      so that it survives a kill).

  Returns:
    `Mapped`: `results[i]` the dict of `parts[i]` (with its description under
    `key`), `resumed[i]` whether it was read rather than run.

  Raises:
    ValueError: one line naming a file whose stored description (or its
      absence) differs from its part's, and what to delete.
  """
  results, resumed = [], []
  for index, part in enumerate(parts):
    description = _as_json(part.description)
    stored = None
    if epath.Path(part.path).exists():
      stored = io_utils.read_json(part.path)
      if not isinstance(stored, dict) or stored.get(key) != description:
        there = stored.get(key) if isinstance(stored, dict) else None
        raise ValueError(
            f"{part.path}: written for another part ({key} {_short(there)} there, "
            f"{_short(description)} now); it is from another setup or version: delete "
            f"{delete or part.path}")
      if reusable is not None and not reusable(part, stored):
        stored = None
    was_resumed = stored is not None
    if stored is None:
      result = run(part)
      if key in result:
        raise ValueError(f"{part.path}: the part's result has a field {key!r}, which "
                         "holds its description")
      stored = _as_json({**result, key: description})
      # Called through the module, so a test may stand in for the writer.
      io_utils.write_json_atomic(part.path, stored)
    results.append(stored)
    resumed.append(was_resumed)
    if on_part is not None:
      on_part(index, stored, was_resumed)
  return Mapped(results, resumed)


def _short(value: Any, limit: int = 80) -> str:
  """`value` as JSON, cut to `limit` characters (an error stays one line)."""
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def digest(value: Any) -> str:
  """A short stable name of a JSON value (key order ignored), for descriptions
  of parts too large to store whole (a part's questions)."""
  return f"{zlib.crc32(json.dumps(value, sort_keys=True).encode()):08x}"


def part_path(directory: str | os.PathLike, number: int) -> str:
  """The file of part `number` in `directory`: `NNNNN.json` (sorts by number)."""
  return os.path.join(os.fspath(directory), f"{number:05d}.json")


def stream_seed(*parts) -> int:
  """A stable seed per purpose, e.g. `stream_seed(run_seed, "revision_data",
  first_question)`: each part draws its own random stream, the same whether
  it runs in one go or after a resume."""
  return zlib.crc32("/".join(str(p) for p in parts).encode())


def map_ranges(directory: str | os.PathLike, num_items: int, per_part: int,
               run_range: Callable[[int, int], dict], name: str,
               log: Callable[[str], None] = print) -> list[dict]:
  """`map_parts` over items 0..num_items-1 cut in ranges of `per_part`: runs
  `run_range(first, last)` for each range not yet in `directory/NNNNN.json`
  (a part is described by its range; a stale one means the whole directory
  is), logging progress as `name`; returns every part's dict, in order."""
  parts = [Part(part_path(directory, number),
                {"first": first, "last": min(first + per_part, num_items)}, None)
           for number, first in enumerate(range(0, num_items, per_part))]
  progress = Progress(name, len(parts), log)
  return map_parts(
      parts, lambda part: run_range(part.description["first"], part.description["last"]),
      delete=os.fspath(directory), on_part=lambda *_: progress.update()).results
