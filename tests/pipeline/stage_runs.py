"""What the stage tests share: runs of the tiny study, workdirs cut down to a
stage, and the one test of resuming: killed and resumed equals uninterrupted.

The session's finished workdir (`conftest.finished`) is never changed: tests
copy it, or the part of it a stage needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from conftest import FinishedStudy, tiny_config

from ttscale import layout, pipeline
from ttscale.testing import tree_digest

POLICY_STAGES = ("data", "train_policy", "eval_policy")


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def read_metrics(workdir: str, stage: str | None = None) -> list[dict]:
  """The metric records of `stage` (default: of every stage), in file order."""
  with open(os.path.join(workdir, layout.METRICS)) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if stage is None or r["stage"] == stage]


def marker(workdir: str, stage: str) -> dict:
  return read_json(os.path.join(workdir, layout.marker(stage)))


def run_stages(config, workdir: str, stages=None) -> list[str]:
  """Runs the pipeline; returns its log lines."""
  log: list[str] = []
  pipeline.run(config, workdir, stages, log=log.append)
  return log


def without(records: list[dict], *fields: str) -> list[dict]:
  """Records without some fields (their wall times)."""
  return [{k: v for k, v in r.items() if k not in fields} for r in records]


def without_seconds(rows: list[dict]) -> list[dict]:
  """Outcome rows without their wall-clock field."""
  return without(rows, "seconds")


def remove(workdir: str, *paths: str) -> None:
  """Deletes files or directories of the workdir (those missing are skipped)."""
  for relative in paths:
    path = os.path.join(workdir, relative)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def steps(directory: str) -> list[int]:
  """The checkpoint steps in a checkpoint directory."""
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def through_eval_policy(finished: FinishedStudy, destination: str) -> str:
  """A new workdir holding only the finished one's data and policy stages
  (the larger policy too: the verifiers' trunk).

  Its metrics file keeps only the policies' lines, as after a run that ended
  with `train_large`.
  """
  os.makedirs(os.path.join(destination, layout.STAGES))
  for name in (layout.DATA, layout.POLICY, layout.LARGE):
    shutil.copytree(os.path.join(finished.workdir, name), os.path.join(destination, name))
  for name in (layout.TOKENIZER, layout.EVAL_POLICY,
               *(layout.marker(stage) for stage in (*POLICY_STAGES, "train_large"))):
    shutil.copyfile(os.path.join(finished.workdir, name), os.path.join(destination, name))
  with open(os.path.join(destination, layout.METRICS), "w") as f:
    f.writelines(json.dumps(r) + "\n" for stage in ("train_policy", "train_large")
                 for r in read_metrics(finished.workdir, stage))
  return destination


def through_prm_labels(finished: FinishedStudy, destination: str) -> str:
  """`through_eval_policy` plus the finished workdir's `prm_labels` stage."""
  through_eval_policy(finished, destination)
  shutil.copytree(os.path.join(finished.workdir, "prm_labels"),
                  os.path.join(destination, "prm_labels"))
  shutil.copyfile(os.path.join(finished.workdir, layout.marker("prm_labels")),
                  os.path.join(destination, layout.marker("prm_labels")))
  return destination


def expect_one_line_error(workdir: str, stages: list[str], *needles: str,
                          config=None) -> str:
  """Runs `stages` (with `config`, default tiny); checks a one-line ValueError
  naming `needles`, nothing written."""
  before = tree_digest(workdir)
  with pytest.raises(ValueError) as error:
    run_stages(config or tiny_config(), workdir, stages)
  message = str(error.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, message
  assert tree_digest(workdir) == before
  return message


# ------------------------------------------------------------------ kill and resume


@dataclasses.dataclass
class KilledAndResumed:
  """A workdir whose stage was killed once and re-run."""
  workdir: str
  killed_log: list[str]    # the killed run's log (empty for a cut workdir)
  after_kill: Any          # what the kill left behind, as `cut` returned it
  resumed_log: list[str]   # the re-run's log


# Arms a kill for one run: given the MonkeyPatch of the run and its log
# list, returns the run's log function; raises KeyboardInterrupt at the point
# it kills at (by patching a writer, or from the log).
Kill = Callable[[pytest.MonkeyPatch, list[str]], Callable[[str], None]]


def kill_at_log(prefix: str) -> Kill:
  """A kill (Ctrl-C) when the run logs a line starting with `prefix`."""
  def arm(patch: pytest.MonkeyPatch, log: list[str]) -> Callable[[str], None]:
    del patch

    def log_then_kill(line: str) -> None:
      log.append(line)
      if line.startswith(prefix):
        raise KeyboardInterrupt
    return log_then_kill
  return arm


def kill_after_call(owner, name: str, count: int, when=lambda *args: True) -> Kill:
  """A kill right after the `count`-th call of `owner.name` for which
  `when(*args)` holds (the write it made is kept, as by a kill after it)."""
  def arm(patch: pytest.MonkeyPatch, log: list[str]) -> Callable[[str], None]:
    original, calls = getattr(owner, name), []

    def call_then_kill(*args, **kwargs):
      result = original(*args, **kwargs)
      if when(*args):
        calls.append(args)
        if len(calls) == count:
          raise KeyboardInterrupt
      return result
    patch.setattr(owner, name, call_then_kill)
    return log.append
  return arm


def killed_and_resumed(workdir: str, stages: list[str] | None, *, kill: Kill | None = None,
                       cut: Callable[[str], Any] = lambda workdir: None,
                       config: Callable[[], Any] = tiny_config) -> KilledAndResumed:
  """Runs `stages` (None: all) on `workdir` until `kill` stops it (none: no
  run, the workdir is as a kill left it), checks that no stage of them finished, lets
  `cut(workdir)` change what a kill elsewhere would have (its return value is
  `after_kill`), then runs `stages` again to the end."""
  killed_log: list[str] = []
  if kill is not None:
    with pytest.MonkeyPatch.context() as patch:
      log = kill(patch, killed_log)
      with pytest.raises(KeyboardInterrupt):
        pipeline.run(config(), workdir, stages, log=log)
    for stage in stages or pipeline.STAGES:
      assert not os.path.exists(os.path.join(workdir, layout.marker(stage))), stage
  after_kill = cut(workdir)
  return KilledAndResumed(workdir, killed_log, after_kill,
                          run_stages(config(), workdir, stages))


def same(got: Any, expected: Any, where: str = "") -> None:
  """Asserts equal JSON-like trees, floats to 1e-6 (a resumed run's losses are
  computed by the same programs, but on restored parameters)."""
  if isinstance(expected, dict):
    assert isinstance(got, dict) and list(got) == list(expected), (where, got, expected)
    for key in expected:
      same(got[key], expected[key], f"{where}.{key}")
  elif isinstance(expected, list | tuple):
    assert isinstance(got, list | tuple) and len(got) == len(expected), (where, got, expected)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
      same(a, b, f"{where}[{index}]")
  elif isinstance(expected, float) and not isinstance(got, bool):
    assert isinstance(got, int | float) and math.isclose(got, expected, rel_tol=0,
                                                          abs_tol=1e-6), (where, got, expected)
  else:
    assert got == expected, (where, got, expected)


def assert_resumed_equals_uninterrupted(
    resumed: KilledAndResumed, finished: FinishedStudy, stage: str,
    outputs: dict[str, Callable[[str], Any]], summary_fields=()) -> None:
  """The one test of resuming: the killed stage finished on its re-run, and
  each output (`{path in the workdir: read(path)}`, readers dropping wall
  times) and each of `summary_fields` of its marker equal those of the
  uninterrupted run."""
  assert any(line.startswith(f"stage {stage}: done") for line in resumed.resumed_log), \
      resumed.resumed_log
  for relative, read in outputs.items():
    same(read(os.path.join(resumed.workdir, relative)),
         read(os.path.join(finished.workdir, relative)), relative)
  got, expected = marker(resumed.workdir, stage)["summary"], marker(finished.workdir, stage)[
      "summary"]
  for field in summary_fields:
    same(got[field], expected[field], f"summary.{field}")


def metrics_of(stage: str, *dropped: str) -> Callable[[str], list[dict]]:
  """A reader of `metrics.jsonl` (for `assert_resumed_equals_uninterrupted`):
  the records of `stage`, without the `dropped` fields (their speeds)."""
  def read(path: str) -> list[dict]:
    return without(read_metrics(os.path.dirname(path), stage), *dropped)
  return read
