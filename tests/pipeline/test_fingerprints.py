"""The stage markers' guard across config versions: a network field added to
the config with its default value does not refuse a workdir made before it,
and a value other than the default does, naming the field."""

from __future__ import annotations

import json

import pytest

from configs import arith
from ttscale import pipeline
from ttscale.pipeline.fingerprints import stage_inputs


def _workdir_of_an_older_config(tmp_path) -> str:
  """A workdir whose `eval_policy` marker records a `model` block without the
  dtype fields (as the configs had before they existed)."""
  older = arith.get_config("tiny")
  with older.unlocked():
    for block in ("model", "large_model"):
      del older[block]["param_dtype"], older[block]["compute_dtype"]
  stage = pipeline.STAGES["eval_policy"]
  (tmp_path / "stages").mkdir()
  (tmp_path / "stages" / "eval_policy.json").write_text(
      json.dumps({"stage": "eval_policy", "inputs": stage_inputs(older, stage)}))
  return str(tmp_path)


def test_a_marker_without_the_dtype_fields_matches_their_defaults(tmp_path):
  workdir = _workdir_of_an_older_config(tmp_path)
  ctx = pipeline.Context(arith.get_config("tiny"), workdir, log=lambda line: None)
  pipeline.validate_workdir(ctx, ["eval_policy"])


def test_a_marker_without_the_dtype_fields_refuses_bfloat16_compute(tmp_path):
  workdir = _workdir_of_an_older_config(tmp_path)
  config = arith.get_config("tiny")
  config.model.compute_dtype = "bfloat16"
  ctx = pipeline.Context(config, workdir, log=lambda line: None)
  with pytest.raises(ValueError, match=r"model\.compute_dtype='float32' in the workdir, "
                     r"'bfloat16' now"):
    pipeline.validate_workdir(ctx, ["eval_policy"])
