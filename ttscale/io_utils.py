"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes files private.
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
  write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
  """Reads a JSON file; a damaged one is a ValueError naming the path."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{os.fspath(path)}: unreadable JSON ({e})") from e


def write_jsonl_atomic(path: str | os.PathLike, records: list) -> None:
  write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def read_jsonl(path: str | os.PathLike) -> list:
  """Reads a JSON-lines file; a damaged line is a ValueError naming the path."""
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{os.fspath(path)}: line {number} is not JSON ({e})") from e
  return records
