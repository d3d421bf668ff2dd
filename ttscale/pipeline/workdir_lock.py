"""One writer per workdir: a lock file held for the whole run.

`hold(workdir)` creates `<workdir>/lock.json` (pid, host, start time) with an
exclusive create, so that of two launchers on one workdir exactly one runs;
the other gets a one-line error naming the holder. A lock left by a killed
run on this host (its pid no longer exists) is stale and taken over. A lock
from another host cannot be checked: the error says how to remove it.

Local workdirs only: object stores (gs://) have no exclusive create, so a
gs:// workdir is not locked. With several processes, process 0 holds the
lock for all.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator

import jax

from ttscale import layout

LOCK = layout.LOCK


def check_usable(workdir: str) -> None:
  """Raises a one-line ValueError for a workdir that cannot be written: a file,
  a directory without write permission, or a parent that cannot hold it."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file; expected a directory (or a path "
                     "to create one)")
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir {workdir}: {existing} is not writable")


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):  # gone, or cut short by a kill mid-write
    return None


def _create(path: str, record: dict) -> bool:
  """Creates the lock file with `record`; False if it exists."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(record, f)
  return True


def _age_seconds(path: str) -> float:
  try:
    return time.time() - os.path.getmtime(path)
  except FileNotFoundError:
    return 0.0


def _holder_text(holder: dict) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')} "
          f"(since {holder.get('started')})")


@contextlib.contextmanager
def hold(workdir: str, log: Callable[[str], None] = print) -> Iterator[None]:
  """Holds the workdir's lock for the `with` block.

  Raises:
    ValueError: another live run holds it (one line naming its pid and host).
  """
  if "://" in workdir or jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  mine = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
  while not _create(path, mine):
    holder = _read(path)
    if holder is None:
      if _age_seconds(path) < 2.0:  # being written by a launcher starting now
        time.sleep(0.1)
        continue
      holder = {}  # half-written by a run killed as it started
    elif holder.get("host") != mine["host"]:
      raise ValueError(f"{workdir} is in use by {_holder_text(holder)}; if that run is "
                       f"dead, delete {path}")
    elif isinstance(holder.get("pid"), int) and _alive(holder["pid"]):
      raise ValueError(f"{workdir} is in use by {_holder_text(holder)}; wait for it to "
                       "finish, or stop it")
    # Stale: remove it only if it is still the one judged stale (another
    # launcher may have taken it over meanwhile), then race for it again.
    if _read(path) == (holder or None):
      log(f"workdir: taking over the stale lock of {_holder_text(holder)}")
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
  try:
    yield
  finally:
    if _read(path) == mine:
      os.remove(path)
