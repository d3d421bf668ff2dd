"""Tests of the command line: bad input fails fast, with a clear message, touching nothing.

Each test runs `python -m launch.main` in a subprocess on the default
device set; none gets as far as training.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ttscale.testing import tree_digest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TIMEOUT_SECONDS = 60  # a bad input must not start training
# Every stage, in pipeline order, as `--stages` errors list them.
STAGES = ("data", "train_policy", "eval_policy", "train_large", "prm_labels", "train_prm",
          "train_orm", "eval_prm", "sweep_search", "revision_data", "train_revision",
          "train_revision_verifier", "sweep_revisions")




def _launch(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "launch.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT_SECONDS)


def _last_line(text: str) -> str:
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ""


@pytest.fixture
def workdir(tmp_path) -> str:
  """An existing workdir holding only a sentinel file."""
  (tmp_path / "sentinel").write_text("untouched")
  return str(tmp_path)


@pytest.fixture(scope="module")
def unknown_variant(tmp_path_factory):
  """(process, workdir digest before, after) for `--config=configs/arith.py:huge`."""
  directory = tmp_path_factory.mktemp("unknown_variant")
  (directory / "sentinel").write_text("untouched")
  before = tree_digest(str(directory))
  process = _launch("--config=configs/arith.py:huge", f"--workdir={directory}")
  return process, before, tree_digest(str(directory))


def test_unknown_config_variant_fails_naming_it_and_the_known_ones(unknown_variant):
  process, before, after = unknown_variant
  assert process.returncode != 0
  assert "'huge'" in process.stderr
  assert "tiny, default, paper" in process.stderr
  assert after == before


def test_unknown_config_variant_is_reported_on_the_last_line(unknown_variant):
  process, _, _ = unknown_variant
  last = _last_line(process.stderr)
  assert "'huge'" in last and "tiny, default, paper" in last



def test_unknown_config_option_fails_with_one_line_naming_it_and_the_known_ones(workdir):
  before = tree_digest(workdir)
  process = _launch("--config=configs/arith.py:paper,bogus", f"--workdir={workdir}")
  assert process.returncode == 2, process.stderr[-2000:]
  lines = [line for line in process.stderr.splitlines() if line.strip()]
  assert lines == ["error: config option 'bogus' in 'paper,bogus': expected one of runlocal"]
  assert tree_digest(workdir) == before


def test_a_variant_with_an_option_parses_so_only_the_unknown_stage_fails(workdir):
  """`paper,runlocal` goes through absl's --config as one argument."""
  before = tree_digest(workdir)
  process = _launch("--config=configs/arith.py:paper,runlocal", f"--workdir={workdir}",
                    "--stages=bogus")
  assert process.returncode == 2, process.stderr[-2000:]
  assert "'bogus'" in _last_line(process.stderr)
  assert "Traceback" not in process.stderr
  assert tree_digest(workdir) == before

def test_unknown_stage_fails_with_one_line_naming_it(workdir):
  """Fails if an unknown stage is accepted, or its error line does not name it
  and the flag and list every stage in order (through `sweep_revisions`), or if
  anything is written first."""
  before = tree_digest(workdir)
  process = _launch("--config=configs/arith.py:tiny", f"--workdir={workdir}",
                    "--stages=train_policy,bogus")
  assert process.returncode != 0
  last = _last_line(process.stderr)
  assert "'bogus'" in last and "--stages" in last
  assert ", ".join(STAGES) in last
  assert tree_digest(workdir) == before


def test_missing_workdir_fails_naming_the_flag(workdir):
  before = tree_digest(workdir)
  process = _launch("--config=configs/arith.py:tiny")
  assert process.returncode != 0
  assert "--workdir" in process.stderr
  assert tree_digest(workdir) == before


def test_config_override_parses_so_only_the_unknown_stage_fails(workdir):
  before = tree_digest(workdir)
  process = _launch("--config=configs/arith.py:tiny", f"--workdir={workdir}",
                    "--config.model.num_layers=3", "--stages=bogus")
  assert process.returncode != 0
  assert "'bogus'" in _last_line(process.stderr)
  assert "Traceback" not in process.stderr
  assert tree_digest(workdir) == before


def test_unknown_aggregation_fails_with_one_line_naming_the_field_and_it(workdir):
  """Fails if an unknown `eval_prm.aggregations` entry, given as a tuple
  override, is accepted, reported as a traceback or without the field and
  value, exits other than 2, or if anything is written first."""
  before = tree_digest(workdir)
  # ml_collections parses a tuple override as a Python literal; `last,bogus`
  # would be the 1-tuple ('last,bogus',).
  process = _launch("--config=configs/arith.py:tiny", f"--workdir={workdir}",
                    "--config.eval_prm.aggregations=('last', 'bogus')")
  assert process.returncode == 2, process.stderr[-2000:]
  last = _last_line(process.stderr)
  assert last.startswith("error: eval_prm.aggregations:"), last
  assert "'bogus'" in last and "'last'" not in last
  assert "Traceback" not in process.stderr
  assert tree_digest(workdir) == before


def _expect_error_line(workdir: str, *flags: str) -> str:
  """Launches the tiny config into `workdir` with `flags`; checks exit code 2,
  one line on stderr starting "error: ", no traceback, nothing written.
  Returns the line."""
  before = tree_digest(workdir)
  process = _launch("--config=configs/arith.py:tiny", f"--workdir={workdir}", *flags)
  assert process.returncode == 2, process.stderr[-2000:]
  lines = [line for line in process.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, process.stderr[-2000:]
  assert lines[0].startswith("error: "), lines[0]
  assert tree_digest(workdir) == before
  return lines[0]


def test_search_budget_off_the_grid_fails_with_one_line_naming_it(workdir):
  """Fails if a `search.max_budget` that is not a power of 2 is accepted (the
  sweep's budget grid is 1, 2, 4, ...), reported other than as one `error:`
  line naming the field and value, or if anything is written first."""
  line = _expect_error_line(workdir, "--config.search.max_budget=12")
  assert "search.max_budget=12" in line


def test_unknown_search_method_fails_with_one_line_naming_the_field_and_it(workdir):
  """Fails if an unknown `search.methods` entry is accepted (the sweep would
  silently skip it), reported other than as one `error:` line naming the
  field and the bad method alone, or if anything is written first."""
  line = _expect_error_line(workdir, "--config.search.methods=('best_of_n','bfs')")
  assert "search.methods" in line and "'bfs'" in line
  assert "'best_of_n'" not in line


def test_a_beam_width_not_dividing_the_budget_fails_with_one_line_naming_it(workdir):
  """Fails if an own search setting whose beam width M does not divide its
  budget N is accepted, reported other than as one `error:` line naming the
  field and the setting, or if anything is written first."""
  line = _expect_error_line(workdir, "--config.search.extra_settings=('beam:N=4,M=3',)")
  assert "search.extra_settings" in line and "M=3 must divide the budget N=4" in line, line


@pytest.mark.parametrize("flags", [
    ("--config.sweep_revisions.splits=('2x2', '3x5')",),
    ("--config.sweep_revisions.splits=2x2", "--config.sweep_revisions.splits=3x5"),
], ids=["tuple", "repeated"])
def test_revision_split_off_the_grid_fails_with_one_line_naming_the_field_and_it(
    workdir, flags):
  """Fails if a `sweep_revisions.splits` entry whose s·p is not a budget on
  the grid (3x5 = 15; tiny grid 1, 2, 4) is accepted, given as a tuple
  literal or as a repeated flag, or reported other than as one `error:` line
  naming the field and the bad split alone, or if anything is written first."""
  line = _expect_error_line(workdir, *flags)
  assert "sweep_revisions.splits" in line and "'3x5'" in line, line
  assert "'2x2'" not in line, line
