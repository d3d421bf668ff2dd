"""The layering contract (README.md, "Layers"), held on every import of `ttscale/`.

Each module belongs to one layer; it may import its own layer and the layers
`MAY_IMPORT` lists for it, nothing else. Imports inside functions count as
much as those at the top of a module: a deferred import still couples the
layers. The rules and their reasons are written in the README; this is their
table.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ttscale"

_UTILS = "utils"
# Modules at the package's top level, by layer (a package directory is its own
# layer). A new top-level module must be placed here.
TOP_LEVEL_MODULES = {
    "__init__": _UTILS,
    "compile_clock": _UTILS,
    "diffs": _UTILS,
    "distributed": _UTILS,
    "io_utils": _UTILS,
    "layout": _UTILS,
    "outcomes": _UTILS,
    "parallel": _UTILS,
    "progress": _UTILS,
    "resumable": _UTILS,
    "runtime": _UTILS,
    # Stand-in models and files for tests and demos.
    "testing": "models",
    "testing_files": "models",
    "testing_transformers": "models",
}
_ENGINE_BELOW = (_UTILS, "tasks", "data", "models")
# Layer -> the other layers it may import.
MAY_IMPORT: dict[str, frozenset[str]] = {
    _UTILS: frozenset(),
    "tasks": frozenset({_UTILS}),
    "data": frozenset({_UTILS, "tasks"}),
    "models": frozenset({_UTILS, "tasks", "data"}),
    "search": frozenset(_ENGINE_BELOW),
    "training": frozenset({*_ENGINE_BELOW, "search"}),
    "scaling": frozenset({_UTILS, "tasks"}),
    "report": frozenset({_UTILS, "tasks", "scaling"}),
    "pipeline": frozenset({*_ENGINE_BELOW, "search", "training", "scaling", "report"}),
}
# Single modules a layer may import although their layer is closed to it.
MAY_IMPORT_MODULES: dict[str, frozenset[str]] = {
    # Selection rules (pure jax.numpy, no model): analysis re-applies them to
    # stored scores rather than keeping a second copy that could drift.
    "scaling": frozenset({"ttscale.search.select"}),
}


def layer_of(module: str, package: pathlib.Path = PACKAGE) -> str | None:
  """The layer of a dotted module name: its package directory, its entry in
  `TOP_LEVEL_MODULES`, "launch" above the package; None outside the project
  or for a top-level module not placed."""
  parts = module.split(".")
  if parts[0] == "launch":
    return "launch"
  if parts[0] != "ttscale":
    return None
  if len(parts) == 1:
    return TOP_LEVEL_MODULES["__init__"]
  if (package / parts[1]).is_dir():
    return parts[1]
  return TOP_LEVEL_MODULES.get(parts[1])


def _module_name(path: pathlib.Path, package: pathlib.Path) -> str:
  parts = path.relative_to(package.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
              package: pathlib.Path) -> Iterator[str]:
  """The dotted names one import statement reaches, `from a import b`
  resolved to `a.b` where `b` is a module."""
  if isinstance(node, ast.Import):
    yield from (alias.name for alias in node.names)
    return
  base = node.module or ""
  if node.level:  # relative: from the importing module's package
    anchor = module.split(".")
    anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
    base = ".".join([*anchor, base] if base else anchor)
  for alias in node.names:
    name = f"{base}.{alias.name}"
    path = package.parent.joinpath(*name.split("."))
    yield name if path.with_suffix(".py").exists() or path.is_dir() else base


def violations(package: pathlib.Path = PACKAGE) -> list[str]:
  """Every import in `package` that breaks the contract, as lines
  "<path>:<line>: <layer> module <name> imports <module> (<layer>); <rule>",
  and every module that belongs to no layer."""
  found = []
  for path in sorted(package.rglob("*.py")):
    module = _module_name(path, package)
    own = layer_of(module, package)
    where = path.relative_to(package.parent)
    if own not in MAY_IMPORT:
      found.append(f"{where}:1: {module} belongs to no layer; place it in "
                   "TOP_LEVEL_MODULES or MAY_IMPORT")
      continue
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if not isinstance(node, ast.Import | ast.ImportFrom):
        continue
      for target in _imported(node, module, path.name == "__init__.py", package):
        layer = layer_of(target, package)
        if layer is None and target.split(".")[0] == "ttscale":
          found.append(f"{where}:{node.lineno}: {module} imports {target}, which "
                       "belongs to no layer")
        if layer is None or layer == own:
          continue
        if layer in MAY_IMPORT[own] or target in MAY_IMPORT_MODULES.get(own, ()):
          continue
        allowed = ", ".join([*sorted(MAY_IMPORT[own]),
                             *sorted(MAY_IMPORT_MODULES.get(own, ()))])
        rule = f"may import only {allowed}" if allowed else "may import no other layer"
        found.append(f"{where}:{node.lineno}: {own} module {module} imports {target} "
                     f"({layer}); {own} {rule}")
  return found


def test_every_import_points_down_the_layers():
  """Fails naming file, line and imported module of each import that points
  up the layers or across to a sibling layer closed to it."""
  found = violations()
  assert not found, "imports against the layering contract:\n" + "\n".join(found)


def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  for name, text in files.items():
    path = root / "ttscale" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return root / "ttscale"


_TOY_PACKAGE = {
    "__init__.py": "", "io_utils.py": "",
    "search/__init__.py": "", "search/runner.py": "", "search/select.py": "",
    "training/__init__.py": "", "training/prm_labels.py": "",
    "scaling/__init__.py": "", "scaling/difficulty.py": "",
}


@pytest.mark.parametrize(("importer", "source", "expected"), [
    ("search/beam.py", "from ttscale.training import prm_labels\n",
     "ttscale/search/beam.py:1: search module ttscale.search.beam imports "
     "ttscale.training.prm_labels (training); search may import only data, models, "
     "tasks, utils"),
    ("search/beam.py", "import jax\n\ndef f():\n  import ttscale.training.prm_labels\n",
     "ttscale/search/beam.py:4: search module ttscale.search.beam imports "
     "ttscale.training.prm_labels (training)"),
    ("search/beam.py", "from ..scaling import difficulty\n",
     "ttscale/search/beam.py:1: search module ttscale.search.beam imports "
     "ttscale.scaling.difficulty (scaling)"),
    ("search/beam.py", "import launch.main\n",
     "ttscale/search/beam.py:1: search module ttscale.search.beam imports launch.main "
     "(launch)"),
    ("scaling/quality.py", "from ttscale.search import select, runner\n",
     "ttscale/scaling/quality.py:1: scaling module ttscale.scaling.quality imports "
     "ttscale.search.runner (search)"),
    ("helpers.py", "",
     "ttscale/helpers.py:1: ttscale.helpers belongs to no layer"),
    ("serving/api.py", "",
     "ttscale/serving/api.py:1: ttscale.serving.api belongs to no layer"),
])
def test_a_planted_violation_is_named_with_file_and_line(tmp_path, importer, source,
                                                          expected):
  package = _write(tmp_path, {**_TOY_PACKAGE, importer: source})
  found = violations(package)
  assert len(found) == 1 and found[0].startswith(expected), found


def test_imports_down_within_or_by_named_exception_pass(tmp_path):
  package = _write(tmp_path, {
      **_TOY_PACKAGE,
      "training/prm_labels.py": "from ttscale.search import runner\n",
      "search/beam.py": "from . import runner\nfrom ttscale import io_utils\n",
      "scaling/quality.py": "def f():\n  from ttscale.search import select\n"})
  assert violations(package) == []
