"""The outcome table: one row per (question, method, hyperparameters, budget, seed).

The seam between compute and analysis. Search and revision stages append
rows; difficulty, selection and the report only read them. A table is a
JSON-lines file (`pandas.read_json(path, lines=True)` reads it) with a
`.meta.json` beside it that records what made the rows, so rows made with
other settings are never mixed in silently.

Appends are whole batches of lines, flushed and fsynced; a kill during an
append can leave at most one partial last line, which the next `OutcomeTable`
drops before appending. So a killed sweep loses at most the batch in flight,
and a re-run skips the rows already present (`has`).

The path may be a URL (`gs://...`), where an append rewrites the object. With
several processes (`ttscale.distributed`) every one keeps the same rows in
memory and process 0 alone writes them; every process opens the table
(`OutcomeTable` holds a barrier).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable

from etils import epath

from ttscale import distributed, io_utils
from ttscale.diffs import first_difference


@dataclasses.dataclass(frozen=True)
class Outcome:
  """One row of the table."""
  question_index: int      # index in the evaluated split
  level: int               # the task's difficulty level of the question
  method: str              # e.g. "best_of_n", "beam", "lookahead", "revisions"
  params: str              # hyperparameters, canonical text, e.g. "M=4,k=0"
  budget: int              # N, generations allowed
  seed: int
  answer: str | None       # the chosen final answer (None: none found)
  correct: bool
  generations: int         # generations used (paper's count)
  flops: float             # FLOPs used, counted exactly from what ran
  seconds: float           # wall time of the question's share of its batch
  # Tree search (beam, lookahead, DVTS): the mean over rounds of the distinct
  # prefixes the question's live rows held after selection; None otherwise.
  distinct_prefixes: float | None = None

  @property
  def key(self) -> tuple:
    return (self.question_index, self.method, self.params, self.budget, self.seed)


FIELDS = tuple(f.name for f in dataclasses.fields(Outcome))


def uses_exact_verifier(params: str) -> bool:
  """Whether a row's `params` name the exact verifier (`verifier=exact`): an
  engine check, not a strategy of the study."""
  return "verifier=exact" in params.split(",")


def _row_key(row: dict) -> tuple:
  return (row["question_index"], row["method"], row["params"], row["budget"], row["seed"])


def _as_is(record: dict) -> dict:
  return record


class OutcomeTable:
  """Appends to and reads one table file, guarded by its meta record."""

  def __init__(self, path: str, meta: dict, comparable: Callable[[dict], dict] = _as_is):
    """Opens (or starts) the table at `path`; `comparable` as in `check_meta`.

    Raises:
      ValueError: the table was made with another `meta` (names the first
        differing field), or a line other than the last is damaged.
    """
    self.path = io_utils.absolute(path)
    self.meta_path = self.path + ".meta.json"
    meta = json.loads(json.dumps(meta))
    check_meta(self.path, meta, comparable)
    if not epath.Path(self.meta_path).exists():
      io_utils.write_json_atomic(self.meta_path, meta)
    self._rows = _read_rows(self.path, repair=True)
    self._keys = {_row_key(row) for row in self._rows}
    # Several processes: none appends before every one has read the rows
    # (one that read them after would find its own new rows already there).
    distributed.barrier(f"outcomes: opened {self.path}")

  def has(self, key: tuple) -> bool:
    return key in self._keys

  def __len__(self) -> int:
    return len(self._rows)

  def rows(self) -> list[dict]:
    return list(self._rows)

  def append(self, outcomes: Iterable[Outcome]) -> None:
    """Appends rows (one flushed, fsynced write, by process 0); a row already
    present is an error."""
    rows = [dataclasses.asdict(o) for o in outcomes]
    for row in rows:
      if _row_key(row) in self._keys:
        raise ValueError(f"{self.path}: row {_row_key(row)} is already in the table")
    if not rows:
      return
    io_utils.append_bytes(self.path, "".join(json.dumps(row) + "\n" for row in rows).encode())
    self._rows.extend(rows)
    self._keys.update(_row_key(row) for row in rows)


def check_meta(path: str, meta: dict, comparable: Callable[[dict], dict] = _as_is) -> None:
  """Raises ValueError if the table at `path` was made with another `meta`.

  Both records compare as `comparable` makes them (the pipeline's fills the
  model fields a table written before they existed lacks).
  """
  meta_path = io_utils.absolute(path) + ".meta.json"
  if not epath.Path(meta_path).exists():
    if epath.Path(path).exists():
      raise ValueError(f"{path} has no {os.path.basename(meta_path)}; the workdir is damaged")
    return
  difference = first_difference(comparable(json.loads(json.dumps(meta))),
                                comparable(io_utils.read_json(meta_path)))
  if difference:
    raise ValueError(f"{path} holds outcomes of another setup: {difference}; use a new "
                     "--workdir or the settings it was made with")


def _read_rows(path: str, repair: bool) -> list[dict]:
  """The rows of `path`; a partial last line (a killed append) is dropped,
  and with `repair` also removed from the file."""
  if not epath.Path(path).exists():
    return []
  text = epath.Path(path).read_text()
  lines = text.split("\n")
  complete, tail = lines[:-1], lines[-1]  # text ends with "\n" unless cut short
  rows = []
  for number, line in enumerate(complete, 1):
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      # Rows hold no newline, so a kill can only cut the unterminated tail:
      # a complete line that does not decode is damage.
      raise ValueError(f"{path}: line {number} is not a JSON row ({e})") from e
    if set(row) != set(FIELDS):
      raise ValueError(f"{path}: line {number} has fields {sorted(row)}; expected "
                       f"{sorted(FIELDS)}")
    rows.append(row)
  if tail and repair:
    io_utils.write_bytes_atomic(path, "".join(line + "\n" for line in complete).encode())
  return rows


def read_table(path: str) -> list[dict]:
  """All rows of a table, without changing the file (analysis reads only)."""
  if not epath.Path(path).exists():
    raise ValueError(f"{path} is missing: run the stage that writes it first")
  return _read_rows(path, repair=False)
