"""`derive_model_blocks`: the `model` block read from the checkpoint it starts
from (config.json, or a Gemma tree's shapes), a field set that differs named
in one line, and what the stages record for a derived block."""

from __future__ import annotations

import dataclasses
import json

import pytest

from configs import common
from configs import math as math_config
from ttscale import pipeline, testing_files
from ttscale.models import ModelConfig
from ttscale.models.gemma_import import GEMMA_ARCHITECTURE
from ttscale.models.hf_import import read_hf_config
from ttscale.pipeline.fingerprints import stage_inputs
from ttscale.pipeline.model_blocks import derive_model_blocks

# Qwen 3 as transformers 4's `save_pretrained` spells its config.json: only
# config.json is read to derive the block, so no weights are written here.
QWEN3 = dict(model_type="qwen3", hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=300,
             rms_norm_eps=1e-6, hidden_act="silu", rope_theta=1_000_000.0,
             tie_word_embeddings=True, use_sliding_window=False)
VOCAB = 300


def _checkpoint(directory, hf: dict = QWEN3) -> str:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(hf))
  return str(directory)


def _math_config(tmp_path, **checkpoint):
  """`local_tiny` (its `model` block all placeholders) naming `checkpoint`'s paths."""
  config = math_config.get_config("local_tiny")
  tokenizer = tmp_path / "tokenizer.json"
  tokenizer.write_text("{}")  # only its existence is checked before any stage
  config.checkpoint.update(tokenizer=str(tokenizer), **checkpoint)
  return config


def _error(config) -> str:
  with pytest.raises(ValueError) as error:
    derive_model_blocks(config)
  message = str(error.value)
  assert "\n" not in message
  return message


def test_an_unset_block_is_the_checkpoints_config_json(tmp_path):
  policy = _checkpoint(tmp_path / "qwen3")
  config = _math_config(tmp_path, policy=policy)
  derived = derive_model_blocks(config)
  expected = read_hf_config(policy)
  assert ModelConfig.from_config(derived.model, VOCAB) == expected
  assert expected.qk_norm and expected.rope_base == 1e6  # Qwen 3's, not the defaults
  # The run's own fields stay the config's; the config passed is not changed.
  config.model.compute_dtype = "bfloat16"
  assert derive_model_blocks(config).model.compute_dtype == "bfloat16"
  assert config.model.num_layers is None


def test_a_field_set_and_equal_to_config_json_is_accepted(tmp_path):
  config = _math_config(tmp_path, policy=_checkpoint(tmp_path / "qwen3"))
  config.model.update(num_layers=3, qk_norm=True)
  assert derive_model_blocks(config).model.num_layers == 3


@pytest.mark.parametrize("field, value, found", [
    ("num_layers", 4, "3"), ("qk_norm", False, "True"), ("rope_base", 10_000.0, "1000000.0")])
def test_a_field_set_and_other_than_config_json_is_named(tmp_path, field, value, found):
  policy = _checkpoint(tmp_path / "qwen3")
  config = _math_config(tmp_path, policy=policy)
  config.model[field] = value
  message = _error(config)
  assert message.startswith(f"model.{field}={value!r} but {policy}/config.json gives {found}")


def test_an_unset_field_without_a_checkpoint_names_the_field_and_where_to_read_it(tmp_path):
  message = _error(_math_config(tmp_path))
  assert message.startswith("model.num_layers is unset") and "checkpoint.policy" in message


def test_the_launcher_says_the_same_in_one_line_before_any_write(tmp_path):
  config = _math_config(tmp_path, policy=_checkpoint(tmp_path / "qwen3"))
  # A window alone is no valid block (it needs its pattern): the launcher
  # must name the difference from config.json, not judge the field by itself.
  config.model.sliding_window = 8
  workdir = tmp_path / "work"
  with pytest.raises(ValueError, match=r"^model\.sliding_window=8 but .*config\.json gives 0:"):
    pipeline.run(config, str(workdir), ["data"], log=lambda line: None)
  assert not workdir.exists()


def test_the_larger_model_is_read_from_its_own_checkpoint(tmp_path):
  config = _math_config(tmp_path, policy=_checkpoint(tmp_path / "qwen3"),
                        large=_checkpoint(tmp_path / "large", QWEN3 | {"hidden_size": 128}))
  config.large_model = common.checkpoint_model_block()
  derived = derive_model_blocks(config)
  assert (derived.model.embed_dim, derived.large_model.embed_dim) == (64, 128)


def test_a_gemma_tree_gives_its_shape(tmp_path):
  written = ModelConfig(vocab_size=40, num_layers=2, embed_dim=16, num_heads=4,
                        num_kv_heads=1, head_dim=8, mlp_dim=24, **GEMMA_ARCHITECTURE)
  checkpoint = str(tmp_path / "gemma")
  testing_files.write_gemma_checkpoint(checkpoint, written)
  config = _math_config(tmp_path, format="gemma", policy=checkpoint)
  assert ModelConfig.from_config(derive_model_blocks(config).model, 40) == written


def test_stages_record_a_derived_block_as_the_same_block_written_out(tmp_path):
  """What makes a workdir resume: the marker inputs (and so the checkpoint
  specs, which build on `policy_config`) of a derived block are those of the
  block written out in full."""
  policy = _checkpoint(tmp_path / "qwen3")
  derived = _math_config(tmp_path, policy=policy)
  written = _math_config(tmp_path, policy=policy)
  for field, value in dataclasses.asdict(read_hf_config(policy)).items():
    if field != "vocab_size":
      written.model[field] = value
  stage = pipeline.STAGES["train_policy"]
  assert (stage_inputs(derive_model_blocks(derived), stage)
          == stage_inputs(derive_model_blocks(written), stage))
  context = pipeline.Context(derived, str(tmp_path / "work"), log=lambda line: None)
  assert context.config.model.num_layers == 3


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_tiny_math_files_of_a_transformers_family_give_the_model_block(tmp_path, family):
  """`python -m launch.tiny_math_files --family=F`: a checkpoint written by
  transformers itself, with a tokenizer.json whose size is its embedding's."""
  pytest.importorskip("transformers")
  from launch import tiny_math_files
  from ttscale.data.hf_tokenizer import HFTokenizer

  files = tiny_math_files.write_transformers_files(str(tmp_path), family)
  config = math_config.get_config("local_tiny")
  config.checkpoint.update(policy=files["policy"], prm=files["prm"],
                           tokenizer=files["tokenizer"])
  model = ModelConfig.from_config(derive_model_blocks(config).model, files["vocab_size"])
  assert model == read_hf_config(files["policy"],
                                 expected_vocab_size=HFTokenizer.load(files["tokenizer"]).vocab_size)
  assert model.qk_norm and (model.sliding_window > 0) == (family == "gemma3")
