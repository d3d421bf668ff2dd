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
