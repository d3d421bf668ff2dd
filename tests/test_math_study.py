"""The study on MATH from an imported checkpoint: `configs/math.py:local_tiny`.

The test writes a small directory in the public MATH layout, a Llama-2-style
sentencepiece tokenizer trained on it, and a tiny random Llama checkpoint in
the Hugging Face safetensors layout (its head favours the step delimiter and
eos, so that its solutions have steps and end). The launcher then runs every
stage, as a user would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from configs import math as math_config
from launch import tiny_math_files
from ttscale import pipeline, testing, testing_files
from ttscale.data.pretrained_tokenizer import PretrainedTokenizer, load_tokenizer
from ttscale.models.checkpoint_import import check_checkpoint_config
from ttscale.models.config import ModelConfig
from ttscale.models.gemma_import import GEMMA_ARCHITECTURE, load_gemma
from ttscale.models.llama_import import load_llama
from ttscale.tasks.math import MathTask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "math.py")


def _config(**overrides):
  """`local_tiny` with `overrides` {"block.field": value}."""
  config = tiny_math_files.local_tiny_config()
  for key, value in overrides.items():
    block, field = key.split(".")
    config[block][field] = value
  return config


@dataclasses.dataclass(frozen=True)
class MathFiles:
  manual_dir: str
  tokenizer: str
  checkpoint: str
  prm_checkpoint: str  # the PRM's trunk: another random model of the same shape
  vocab_size: int


def _write_files(root: str, checkpoint_vocab: int | None = None) -> MathFiles:
  """What `python -m launch.tiny_math_files --out=root` writes."""
  files = tiny_math_files.write_files(root, checkpoint_vocab)
  return MathFiles(files["manual_dir"], files["tokenizer"], files["policy"], files["prm"],
                   files["vocab_size"])


@pytest.fixture(scope="module")
def math_files(tmp_path_factory) -> MathFiles:
  return _write_files(str(tmp_path_factory.mktemp("math_files")))


def _flags(files: MathFiles) -> list[str]:
  return [f"--config={CONFIG}:local_tiny", f"--config.data.manual_dir={files.manual_dir}",
          f"--config.checkpoint.policy={files.checkpoint}",
          f"--config.checkpoint.prm={files.prm_checkpoint}",
          f"--config.checkpoint.tokenizer={files.tokenizer}"]


@pytest.fixture(scope="module")
def math_study(math_files, tmp_path_factory):
  """The launcher's run of the whole study: (workdir, completed process)."""
  workdir = str(tmp_path_factory.mktemp("math_study") / "work")
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the launcher's own device split, not the tests' 8
  process = subprocess.run(
      [sys.executable, "-m", "launch.main", *_flags(math_files), f"--workdir={workdir}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  return workdir, process


def test_the_tokenizer_of_a_released_model_round_trips_with_one_token_per_newline(
    math_files):
  tokenizer = load_tokenizer(math_files.tokenizer)
  assert isinstance(tokenizer, PretrainedTokenizer)
  # Llama 2's ids: unk 0, bos 1, eos 2, no pad (padding uses eos).
  assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2, 2)
  text = MathTask().prompt("What is $3+4$?") + "We add.\n\nSo $7$.\nThe answer is $\\boxed{7}$."
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert ids.count(tokenizer.step_id) == text.count("\n")
  assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id]) == text


def test_the_math_study_runs_every_stage_from_the_imported_checkpoint(math_study):
  workdir, process = math_study
  assert process.returncode == 0, process.stderr[-3000:]
  for stage in pipeline.STAGES:
    assert os.path.exists(os.path.join(workdir, "stages", f"{stage}.json")), stage
  assert "train_policy: importing the hf checkpoint" in process.stdout
  results = json.loads(open(os.path.join(workdir, "results.json")).read())
  assert results["findings"]
  assert os.path.getsize(os.path.join(workdir, "report.md")) > 0
  levels = json.loads(open(os.path.join(workdir, "eval_policy.json")).read())["levels"]
  assert sorted(levels) == ["1", "2", "3", "4", "5"]  # MATH's levels, from the files
  labels = json.loads(open(os.path.join(workdir, "stages", "prm_labels.json")).read())
  assert labels["summary"]["num_steps"] > 0
  assert labels["summary"]["exact_step_accuracy"] is None  # MATH has no exact labels


def test_the_math_policy_is_the_imported_checkpoint_fine_tuned(math_files, math_study):
  workdir, process = math_study
  assert process.returncode == 0, process.stderr[-3000:]
  ctx = pipeline.Context(_config(**{"data.manual_dir": math_files.manual_dir,
                                    "checkpoint.policy": math_files.checkpoint,
                                    "checkpoint.tokenizer": math_files.tokenizer}),
                         workdir, log=lambda line: None)
  trained = nnx.to_flat_state(ctx.load_policy().params)
  _, _, imported = load_llama(math_files.checkpoint)
  imported = dict(nnx.to_flat_state(imported))
  moved = [np.abs(np.asarray(v.get_value()) - np.asarray(imported[path].get_value())).max()
           for path, v in trained]
  # 3 AdamW steps at lr 3e-3 move a weight by at most ~0.01; a fresh random
  # init would differ by ~1.
  assert 0 < max(moved) < 0.05


def _largest_difference(params: nnx.State, imported: nnx.State) -> float:
  """max |a - b| over the trunk (`decoder`) weights of two parameter trees."""
  imported = dict(nnx.to_flat_state(imported["decoder"]))
  return max(float(np.abs(np.asarray(v.get_value()) - np.asarray(imported[path].get_value())).max())
             for path, v in nnx.to_flat_state(params["decoder"]))


def test_the_prm_trunk_is_its_own_imported_checkpoint_fine_tuned(math_files, math_study):
  workdir, process = math_study
  assert process.returncode == 0, process.stderr[-3000:]
  assert "train_prm: importing the hf checkpoint" in process.stdout
  ctx = pipeline.Context(
      _config(**_overrides(math_files, **{"checkpoint.prm": math_files.prm_checkpoint})),
      workdir, log=lambda line: None)
  prm = ctx.load_verifier("prm").params
  # A few small steps from the PRM's checkpoint; the policy's is another random model.
  assert _largest_difference(prm, load_llama(math_files.prm_checkpoint)[2]) < 0.05
  assert _largest_difference(prm, load_llama(math_files.checkpoint)[2]) > 0.5


def _run_first_stages(config, workdir):
  return pipeline.run(config, workdir, ["data", "train_policy"], log=lambda line: None)


def _overrides(files: MathFiles, **more) -> dict:
  return {"data.manual_dir": files.manual_dir, "checkpoint.policy": files.checkpoint,
          "checkpoint.tokenizer": files.tokenizer, **more}


def test_a_gemma_checkpoint_becomes_the_policy_without_its_padding_rows(math_files, tmp_path):
  config = _config(**_overrides(math_files, **{
      "checkpoint.format": "gemma", "checkpoint.trim_vocab": True, "train.num_steps": 0}))
  model = ModelConfig(vocab_size=math_files.vocab_size,
                      **math_config.LOCAL_TINY_MODEL | GEMMA_ARCHITECTURE)
  checkpoint = str(tmp_path / "gemma")
  tree = testing_files.write_gemma_checkpoint(checkpoint, model,
                                              vocab_size=math_files.vocab_size + 8)
  config.checkpoint.policy = checkpoint
  workdir = str(tmp_path / "work")
  _run_first_stages(config, workdir)
  policy = pipeline.Context(config, workdir, log=lambda line: None).load_policy().params
  # No training steps: the policy is the import, the released rows' first V.
  _, _, imported = load_gemma(checkpoint, model, trim_vocab_to=math_files.vocab_size)
  assert _largest_difference(policy, imported) == 0
  np.testing.assert_array_equal(
      np.asarray(policy["decoder"]["embedding"].get_value()),
      tree["transformer"]["embedder"]["input_embedding"][:math_files.vocab_size])


def test_a_checkpoint_of_another_vocabulary_names_the_file_and_leaves_the_workdir(tmp_path):
  files = _write_files(str(tmp_path / "files"), checkpoint_vocab=300)
  workdir = str(tmp_path / "work")
  pipeline.run(_config(**_overrides(files)), workdir, ["data"], log=lambda line: None)
  before = testing.tree_digest(workdir)
  with pytest.raises(ValueError) as error:
    _run_first_stages(_config(**_overrides(files)), workdir)
  message = str(error.value)
  assert "\n" not in message
  assert os.path.join(files.checkpoint, "config.json") in message
  assert "vocab_size=300" in message and f"{files.vocab_size}" in message
  assert testing.tree_digest(workdir) == before


def test_a_config_that_does_not_match_the_checkpoint_names_the_field(math_files, tmp_path):
  workdir = str(tmp_path / "work")
  with pytest.raises(ValueError) as error:
    _run_first_stages(_config(**_overrides(math_files, **{"model.mlp_dim": 48})), workdir)
  message = str(error.value)
  assert "\n" not in message
  assert "config.json" in message and "mlp_dim" in message
  assert not os.path.exists(os.path.join(workdir, "policy"))


def test_a_malformed_math_file_is_one_line_naming_the_file(math_files, tmp_path):
  manual_dir = tmp_path / "MATH"
  for split in ("train", "test"):
    (manual_dir / split / "algebra").mkdir(parents=True)
    (manual_dir / split / "algebra" / "0.json").write_text(
        json.dumps(testing_files.math_problem(0)))
  broken = manual_dir / "train" / "algebra" / "1.json"
  broken.write_text(json.dumps({"problem": "1+1?", "level": "Level 1", "type": "Algebra"}))
  overrides = _overrides(math_files, **{"data.manual_dir": str(manual_dir)})
  with pytest.raises(ValueError) as error:
    pipeline.run(_config(**overrides), str(tmp_path / "work"), ["data"],
                 log=lambda line: None)
  message = str(error.value)
  assert "\n" not in message and str(broken) in message and "solution" in message


def test_a_tokenizer_that_is_not_sentencepiece_names_the_file(math_files, tmp_path):
  bad = tmp_path / "tokenizer.model"
  bad.write_bytes(b"not a model")
  workdir = str(tmp_path / "work")
  with pytest.raises(ValueError) as error:
    pipeline.run(_config(**_overrides(math_files, **{"checkpoint.tokenizer": str(bad)})),
                 workdir, ["data"], log=lambda line: None)
  assert str(bad) in str(error.value) and "sentencepiece" in str(error.value)
  assert not os.path.exists(os.path.join(workdir, "tokenizer.model"))


@pytest.mark.parametrize("field,value,expected", [
    ("format", "pytorch", "checkpoint.format"),
    ("tokenizer", "", "checkpoint.tokenizer"),
])
def test_checkpoint_settings_that_cannot_work_name_the_field(math_files, tmp_path, field,
                                                              value, expected):
  with pytest.raises(ValueError, match=expected.replace(".", r"\.")):
    pipeline.run(_config(**_overrides(math_files, **{f"checkpoint.{field}": value})),
                 str(tmp_path / "work"), ["data"], log=lambda line: None)


@pytest.mark.parametrize("fields,expected", [
    ({"format": "", "prm": "/ckpt"}, "checkpoint.prm is set: checkpoint.format"),
    ({"prm": "/ckpt", "tokenizer": ""}, "checkpoint.prm is set: checkpoint.tokenizer"),
    ({"format": "", "trim_vocab": True}, "checkpoint.trim_vocab"),
])
def test_checkpoint_fields_that_cannot_work_together_are_named(fields, expected):
  block = _config().checkpoint
  block.update({"tokenizer": "/tok.model", **fields})
  with pytest.raises(ValueError, match=expected.replace(".", r"\.")):
    check_checkpoint_config(block)


@pytest.mark.parametrize("field", ["policy", "prm", "tokenizer"])
def test_a_checkpoint_path_that_does_not_exist_is_named_before_any_stage(math_files,
                                                                         tmp_path, field):
  missing = str(tmp_path / "absent")
  workdir = str(tmp_path / "work")
  with pytest.raises(ValueError, match=rf"checkpoint\.{field}='{missing}': no such"):
    pipeline.run(_config(**_overrides(math_files, **{f"checkpoint.{field}": missing})),
                 workdir, ["data"], log=lambda line: None)
  assert not os.path.exists(workdir)
