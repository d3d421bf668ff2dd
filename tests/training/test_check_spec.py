"""`check_spec`: a checkpoint of another setup is named by its first differing field."""

import json

import pytest

from ttscale.training.checkpoints import check_spec


def _stored(tmp_path, spec: dict) -> str:
  (tmp_path / "spec.json").write_text(json.dumps(spec))
  return str(tmp_path)


def test_another_tokenizer_is_named_with_both_vocabulary_sizes(tmp_path):
  directory = _stored(tmp_path, {"tokenizer": "aaaa", "model": {"vocab_size": 27}})
  with pytest.raises(ValueError) as error:
    check_spec(directory, {"tokenizer": "bbbb", "model": {"vocab_size": 32}})
  message = str(error.value)
  assert "tokenizer='aaaa' in the workdir, 'bbbb' now" in message
  assert "(vocabulary of 27 tokens in the workdir, 32 now)" in message
  assert "\n" not in message


def test_a_matching_spec_and_a_directory_without_one_pass(tmp_path):
  check_spec(str(tmp_path), {"tokenizer": "x"})  # no spec.json yet
  directory = _stored(tmp_path, {"tokenizer": "x", "model": {"vocab_size": 27}})
  check_spec(directory, {"tokenizer": "x", "model": {"vocab_size": 27}})


_MODEL = {"vocab_size": 27, "num_layers": 2, "embed_dim": 128, "activation": "relu"}


def test_a_spec_written_before_a_model_field_existed_reads_it_as_its_default(tmp_path):
  """A workdir made before `ModelConfig` gained a field (e.g. `qk_norm`,
  `param_dtype`) still loads: the field's default builds the same model."""
  directory = _stored(tmp_path, {"tokenizer": "x", "policy": {"model": _MODEL}})
  check_spec(directory, {"tokenizer": "x", "policy": {"model": _MODEL | {
      "qk_norm": False, "param_dtype": "float32", "compute_dtype": "float32"}}})
  with pytest.raises(ValueError, match=r"policy\.model\.qk_norm=False in the workdir, True now"):
    check_spec(directory, {"tokenizer": "x", "policy": {"model": _MODEL | {"qk_norm": True}}})


def test_the_compute_dtype_is_not_part_of_a_checkpoint_but_the_param_dtype_is(tmp_path):
  directory = _stored(tmp_path, {"tokenizer": "x", "model": _MODEL | {
      "param_dtype": "float32", "compute_dtype": "float32"}})
  check_spec(directory, {"tokenizer": "x", "model": _MODEL | {"compute_dtype": "bfloat16"}})
  with pytest.raises(ValueError, match=r"model\.param_dtype='float32' in the workdir"):
    check_spec(directory, {"tokenizer": "x", "model": _MODEL | {"param_dtype": "bfloat16"}})
