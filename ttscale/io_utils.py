"""Atomic file writes: a reader never sees a half-written file.

Paths are local, or anything `etils.epath` opens (`gs://bucket/...`):

- Local: the bytes go to a temporary file beside the target, are synced,
  and the file is renamed over the target, which POSIX makes atomic.
- Object stores (`gs://`, `s3://`, ...): one `write_bytes` of the object.
  GCS makes an object visible only once its upload completes, so a single
  write is already atomic; a rename there is a copy and a delete, which
  would add a window in which the temporary object lingers, not safety.

With several processes (`ttscale.distributed`) only process 0 writes; every
process calls the writer, and all wait at a barrier before the write (so
that none decides on the file's absence after process 0 made it) and after
it (so that all read what was written). One process: no barriers, the same
writes as ever. `append_bytes` also writes on process 0 only, but without
barriers: every process may call it, or the writer alone.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

from etils import epath

from ttscale import distributed


def _is_local(path: str | os.PathLike) -> bool:
  return "://" not in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """`path` made absolute if local; a URL (`gs://...`) as it is, since
  `os.path.abspath` would turn it into a local path under the working directory."""
  return os.path.abspath(path) if _is_local(path) else os.fspath(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically, from process 0 only.

  Every process must call it (it holds two barriers on several processes).
  """
  name = os.fspath(path)
  distributed.barrier(f"io_utils: before writing {name}")
  if distributed.is_writer():
    if _is_local(path):
      _write_local(name, data)
    else:
      target = epath.Path(name)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(data)
  distributed.barrier(f"io_utils: wrote {name}")


def append_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Appends `data` to `path` (made if missing), from process 0 only.

  No barriers, so the writer may call it alone (metric lines, outcome rows:
  every process computes them, one writes them). Local: one write, flushed
  and fsynced, so a kill leaves at most a partial last line. Object stores
  have no appends: the object is read and written again whole (one atomic
  upload, a cost that grows with the file: meant for files of lines, not
  for large data).
  """
  if not distributed.is_writer():
    return
  name = os.fspath(path)
  if _is_local(path):
    with open(name, "ab") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    return
  target = epath.Path(name)
  old = target.read_bytes() if target.exists() else b""
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_bytes(old + data)


def _write_local(path: str, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it."""
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


def _open_text(path: str | os.PathLike) -> io.TextIOBase:
  """`path` opened for reading UTF-8 text, universal newlines either way."""
  if _is_local(path):
    return open(path, encoding="utf-8")
  data = epath.Path(os.fspath(path)).read_bytes()
  return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
  """`write_bytes_atomic` of `value` as indented, key-sorted JSON."""
  write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
  """Reads a JSON file; a damaged one is a ValueError naming the path."""
  try:
    with _open_text(path) as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{os.fspath(path)}: unreadable JSON ({e})") from e


def write_jsonl_atomic(path: str | os.PathLike, records: list) -> None:
  """`write_bytes_atomic` of `records`, one JSON line each."""
  write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def read_jsonl(path: str | os.PathLike) -> list:
  """Reads a JSON-lines file; a damaged line is a ValueError naming the path."""
  records = []
  with _open_text(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{os.fspath(path)}: line {number} is not JSON ({e})") from e
  return records
