"""Session setup: 8 fake CPU devices, fixed before JAX is first imported, and
freed host memory kept for reuse (`ttscale.runtime`), as the launchers do.

Single-device code runs on device 0 as usual; `tests/test_parallel.py` lays
meshes over all 8.

`finished`: the tiny embedded study (`configs/arith.py:tiny`), run once per
session, shared by the pipeline tests and the notebook test (tests copy it
before changing anything).
"""

import os
import shutil

import pytest

from configs import arith
from ttscale import runtime

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count=8"

if _DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      flag for flag in (os.environ.get("XLA_FLAGS", ""), _DEVICE_COUNT_FLAG) if flag)
runtime.keep_freed_host_memory()


def tiny_config():
  """A fresh `configs/arith.py:tiny` (tests may change it)."""
  return arith.get_config("tiny")


class FinishedStudy:
  """A workdir after one full run of the tiny study, and that run's log."""

  def __init__(self, workdir: str, log: list[str]):
    self.workdir = workdir
    self.log = log

  def copy(self, destination: str) -> str:
    shutil.copytree(self.workdir, destination)
    return destination


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> FinishedStudy:
  from ttscale import pipeline  # after XLA_FLAGS is set above

  workdir = str(tmp_path_factory.mktemp("pipeline") / "workdir")
  log: list[str] = []
  pipeline.run(tiny_config(), workdir, log=log.append)
  return FinishedStudy(workdir, log)
