"""Tests of the config files: the `VARIANT[,OPTION...]` argument, every variant
loading (by name and by path, as `--config=` loads it), and what `runlocal`
changes."""

from __future__ import annotations

import os

import pytest
from absl import flags
from ml_collections import config_flags

from configs import arith, common
from configs import math as math_config
from ttscale import pipeline

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
ARITH_ARGS = [*arith.VARIANTS, *(f"{variant},runlocal" for variant in arith.VARIANTS)]


def _parse(arg: str | None):
  return common.parse_arg(arg, variants=("tiny", "default", "paper"), default="default",
                          options=("runlocal", "other"))


@pytest.mark.parametrize("arg, variant, options", [
    (None, "default", ()),
    ("", "default", ()),
    ("paper", "paper", ()),
    ("paper,runlocal", "paper", ("runlocal",)),
    ("tiny, other ,runlocal", "tiny", ("other", "runlocal")),
    ("runlocal", "default", ("runlocal",)),
    (",runlocal", "default", ("runlocal",)),
    ("paper,runlocal,runlocal", "paper", ("runlocal",)),
])
def test_parse_arg_splits_the_variant_from_its_options(arg, variant, options):
  parsed = _parse(arg)
  assert (parsed.variant, parsed.options) == (variant, options)
  assert parsed.text == ",".join((variant, *options))


@pytest.mark.parametrize("arg, message", [
    ("huge", "config variant 'huge': expected one of tiny, default, paper"),
    ("huge,runlocal", "config variant 'huge': expected one of tiny, default, paper"),
    ("paper,bogus", "config option 'bogus' in 'paper,bogus': expected one of runlocal, other"),
    ("tiny,paper", "config option 'paper' in 'tiny,paper': expected one of runlocal, other"),
    ("paper,", "config option '' in 'paper,': expected one of runlocal, other"),
])
def test_parse_arg_names_the_unknown_part_and_the_known_ones(arg, message):
  with pytest.raises(ValueError) as error:
    _parse(arg)
  assert str(error.value) == message


def test_a_file_without_options_refuses_any():
  with pytest.raises(ValueError, match=r"^config option 'runlocal' in 'local_tiny,runlocal': "
                     r"this file has none$"):
    math_config.get_config("local_tiny,runlocal")


@pytest.mark.parametrize("module, arg", [
    *((arith, arg) for arg in ARITH_ARGS),
    *((math_config, variant) for variant in math_config.VARIANTS),
])
def test_every_variant_loads_and_passes_the_pipeline_checks(module, arg):
  config = module.get_config(arg)
  assert config.variant == arg
  pipeline.check_config(config)


@pytest.mark.parametrize("path, arg", [
    *(("arith.py", arg) for arg in ARITH_ARGS),
    *(("math.py", variant) for variant in math_config.VARIANTS),
])
def test_a_config_loaded_by_path_equals_the_one_imported(path, arg):
  """Fails if `--config=configs/FILE:ARG` (absl loads the file from its path,
  as another module) gives another config than `from configs import ...`."""
  flag_values = flags.FlagValues()
  flag = config_flags.DEFINE_config_file("config", flag_values=flag_values)
  flag_values(["main", f"--config={os.path.join(REPO, 'configs', path)}:{arg}"])
  module = arith if path == "arith.py" else math_config
  assert flag.value.to_dict() == module.get_config(arg).to_dict()


def test_no_argument_is_each_files_default_variant():
  assert arith.get_config().to_dict() == arith.get_config("default").to_dict()
  assert math_config.get_config().to_dict() == math_config.get_config("local_tiny").to_dict()


def _fields(config) -> dict:
  """{"block.field": value} of a config, `variant` left out."""
  fields = {}
  for name, value in config.items():
    if name == "variant":
      continue
    if hasattr(value, "items"):
      fields.update({f"{name}.{key}": v for key, v in _fields(value).items()})
    else:
      fields[name] = value
  return fields


def test_runlocal_on_default_is_tiny():
  assert _fields(arith.get_config("default,runlocal")) == _fields(arith.get_config("tiny"))


def test_runlocal_leaves_paper_only_its_choices_that_are_not_sizes():
  """Fails if a size `paper` sets escapes `runlocal` (it would not run in
  seconds), or if `runlocal` overrides one of paper's other choices."""
  tiny = _fields(arith.get_config("tiny"))
  paper_local = _fields(arith.get_config("paper,runlocal"))
  assert paper_local.keys() == tiny.keys()
  differ = {key: paper_local[key] for key in tiny if paper_local[key] != tiny[key]}
  assert differ == {"model.activation": "gelu", "large_model.activation": "gelu",
                    "train.learning_rate": 6e-4}

