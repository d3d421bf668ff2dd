"""One writer per workdir: the lock, its stale takeover, unusable workdirs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import tiny_config

from ttscale import pipeline
from ttscale.pipeline import workdir_lock
from ttscale.testing import tree_digest


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def _write_lock(workdir, pid: int, host: str | None = None) -> str:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lock.LOCK)
  with open(path, "w") as f:
    json.dump({"pid": pid, "host": host or socket.gethostname(), "started": "then"}, f)
  return path


def test_a_second_launcher_is_refused_naming_the_holder_and_touches_nothing(tmp_path):
  """Fails if a run starts in a workdir whose lock a live process holds, or
  writes anything before refusing."""
  workdir = str(tmp_path / "workdir")
  _write_lock(workdir, os.getpid())  # this test process: alive
  before = tree_digest(workdir)
  with pytest.raises(ValueError) as error:
    pipeline.run(tiny_config(), workdir, ["data"], log=lambda _: None)
  message = str(error.value)
  assert "\n" not in message
  assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
  assert tree_digest(workdir) == before


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
  workdir = str(tmp_path / "workdir")
  path = _write_lock(workdir, 1, host="elsewhere")
  with pytest.raises(ValueError, match=f"host elsewhere .*delete {path}"):
    with workdir_lock.hold(workdir):
      pass


def test_a_stale_lock_is_taken_over_and_released_after_the_run(tmp_path):
  """Fails if the lock of a dead process blocks the run, or if the run leaves
  its own lock behind."""
  workdir = str(tmp_path / "workdir")
  pid = _dead_pid()
  _write_lock(workdir, pid)
  log: list[str] = []
  pipeline.run(tiny_config(), workdir, ["data"], log=log.append)
  assert any(f"taking over the stale lock of pid {pid}" in line for line in log), log
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK))
  assert os.path.exists(os.path.join(workdir, "stages", "data.json"))


def test_the_lock_is_held_during_the_run_and_released_on_an_error(tmp_path):
  workdir = str(tmp_path / "workdir")
  path = os.path.join(workdir, workdir_lock.LOCK)
  with pytest.raises(RuntimeError):
    with workdir_lock.hold(workdir):
      with open(path) as f:
        assert json.load(f)["pid"] == os.getpid()
      raise RuntimeError("a stage failed")
  assert not os.path.exists(path)


def test_a_workdir_that_is_a_file_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / "workdir"
  workdir.write_text("not a directory")
  with pytest.raises(ValueError) as error:
    pipeline.run(tiny_config(), str(workdir), log=lambda _: None)
  assert "\n" not in str(error.value) and "is a file" in str(error.value)
  assert workdir.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_workdir_is_refused_in_one_line(tmp_path):
  parent = tmp_path / "parent"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    with pytest.raises(ValueError, match="is not writable"):
      pipeline.run(tiny_config(), str(parent / "workdir"), log=lambda _: None)
  finally:
    parent.chmod(0o755)
