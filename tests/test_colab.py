"""The Colab quickstart notebook: valid nbformat 4, and its code cells run, in order, on `tiny`.

The notebook is read with `json` (no nbformat or nbclient). Its code cells run
in one namespace with `exec`; shell and magic lines (`!`, `%`: the install
cell) are skipped, the current directory is the repository (the notebook's
`%cd`), matplotlib draws with "Agg", and the values of `_PARAMETERS` are
assigned right after the cell tagged `parameters` (papermill's convention).

The notebook's workdir starts as a copy of the session's finished tiny study
(the `finished` fixture of conftest.py, shared with the tests in tests/pipeline/), so
its run finds every stage done: what runs fresh is the notebook's own code (the
report, figures, the policy's samples, the re-run report stage).
"""

from __future__ import annotations

import json
import linecache
import os
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "colab", "ttscale_quickstart.ipynb")
# Drawn by the report stage, and by eval_prm, sweep_search and sweep_revisions.
FIGURES = ("fig3_search.png", "fig3_search_by_bin.png", "fig4_8_compute_optimal.png",
           "fig6_7_revisions.png", "fig6_attempts.png", "fig9_flops_matched.png", "eval_prm.png",
           "sweep_search.png", "sweep_revisions.png")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_notebook() -> dict:
  with open(NOTEBOOK, encoding="utf-8") as f:
    return json.load(f)


def _source(cell: dict) -> str:
  source = cell["source"]
  return source if isinstance(source, str) else "".join(source)


def _python(source: str) -> str:
  """The cell without its shell (`!`) and magic (`%`) lines."""
  return "".join(line for line in source.splitlines(True)
                 if not line.lstrip().startswith(("!", "%")))


def _is_parameters(cell: dict) -> bool:
  return "parameters" in cell.get("metadata", {}).get("tags", [])


def _parameters(workdir: str) -> dict:
  return {"VARIANT": "tiny", "WORKDIR": workdir, "STAGES": None}


def test_notebook_is_nbformat_4_with_no_outputs_and_one_parameters_cell():
  """Fails if the file is not nbformat-4 JSON, a cell is malformed, outputs or
  execution counts are stored, or there is not exactly one `parameters` code cell
  assigning every name the test sets."""
  notebook = _read_notebook()
  assert notebook["nbformat"] == 4
  assert isinstance(notebook["nbformat_minor"], int)
  assert isinstance(notebook["metadata"], dict)
  assert notebook["metadata"]["kernelspec"]["language"] == "python"
  cells = notebook["cells"]
  assert isinstance(cells, list) and cells
  ids = [cell.get("id") for cell in cells]
  if notebook["nbformat_minor"] >= 5:  # cell ids: required, unique, [a-zA-Z0-9-_]{1,64}
    assert all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids), ids
    assert all(c.isalnum() or c in "-_" for i in ids for c in i), ids
    assert len(set(ids)) == len(ids), ids
  for number, cell in enumerate(cells):
    assert cell["cell_type"] in ("markdown", "code"), number
    assert isinstance(cell["metadata"], dict), number
    source = cell["source"]
    assert isinstance(source, str) or all(isinstance(line, str) for line in source), number
    assert _source(cell).strip(), f"cell {number} is empty"
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [], f"cell {number} stores outputs"
      assert cell["execution_count"] is None, f"cell {number} stores an execution count"
      compile(_python(_source(cell)), f"cell {number}", "exec")
    else:
      assert "outputs" not in cell and "execution_count" not in cell, number
  parameters = [cell for cell in cells if _is_parameters(cell)]
  assert len(parameters) == 1 and parameters[0]["cell_type"] == "code"
  assigned = {}
  exec(_source(parameters[0]), {}, assigned)  # noqa: S102
  assert set(assigned) == set(_parameters("")), assigned
  assert assigned["VARIANT"] == "tiny"


@pytest.fixture(scope="module")
def executed(tmp_path_factory, finished):
  """(namespace, workdir) after every code cell of the notebook ran."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  workdir = finished.copy(str(tmp_path_factory.mktemp("colab") / "workdir"))
  namespace = {"__name__": "__notebook__"}
  with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
    patch.chdir(REPO)  # the notebook's `%cd`: it imports configs from there
    patch.setenv("MPLBACKEND", "Agg")
    warnings.filterwarnings("ignore", message=".*non-interactive.*")  # plt.show() on Agg
    for number, cell in enumerate(_read_notebook()["cells"]):
      if cell["cell_type"] != "code":
        continue
      source = _python(_source(cell))
      filename = f"<{os.path.basename(NOTEBOOK)} cell {number}>"
      linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
      exec(compile(source, filename, "exec"), namespace)  # noqa: S102
      if _is_parameters(cell):
        namespace.update(_parameters(workdir))
    plt.close("all")
  return namespace, workdir


def test_notebook_runs_the_study_and_writes_the_report_and_figures(executed):
  """Fails if a code cell raises, or the workdir lacks the report, results or a figure."""
  namespace, workdir = executed
  assert namespace["WORKDIR"] == workdir
  with open(os.path.join(workdir, "report.md")) as f:
    assert f.read().startswith("# Test-time compute study")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert set(results["figures"]) <= set(FIGURES)
  for name in FIGURES:
    with open(os.path.join(workdir, name), "rb") as f:
      assert f.read(8) == _PNG_SIGNATURE, name


def test_notebook_ran_every_stage_sampled_and_reran_the_report(executed):
  """Fails if the run cell did not run every stage, the policy cell did not sample
  8 solutions, or the last cell did not write the report's marker again."""
  from ttscale import pipeline

  namespace, workdir = executed
  assert list(namespace["records"]) == list(pipeline.STAGES)
  assert len(namespace["samples"].texts) == 1
  assert len(namespace["samples"].texts[0]) == 8
  assert namespace["report"].startswith("# Test-time compute study")
  assert os.path.exists(os.path.join(workdir, "stages", "report.json"))
