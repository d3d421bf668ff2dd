"""Tests of the character-level tokenizer and its one-token step delimiter."""

from __future__ import annotations

import io
import os

import pytest
import sentencepiece

from ttscale.data.tokenizer import STEP_SYMBOL, Tokenizer, train_tokenizer
from ttscale.tasks.arith import ArithTask

TASK = ArithTask()


def _corpus(num_examples: int = 500, seed: int = 0) -> list[str]:
  return [
    TASK.prompt(example.question) + example.solution
    for example in TASK.generate(num_examples, seed)
  ]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("tokenizer") / "arith.model"
  train_tokenizer(_corpus(), path)
  return path


@pytest.fixture(scope="module")
def tokenizer(model_path):
  return Tokenizer.load(model_path)


def test_round_trips_prompts_and_solutions_exactly(tokenizer):
  texts = _corpus(300, seed=7)
  assert any("-" in text.split("=")[-1] for text in texts)  # negatives occur
  for text in texts:
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize(
  "text",
  ["Answer: 5", "Answer:  -5 ", " 12", "\n\nAnswer: 1\n", "1 2  3   4", "-0"],
)
def test_round_trips_spaces_newlines_and_signs(tokenizer, text):
  assert tokenizer.decode(tokenizer.encode(text)) == text


def test_every_character_is_one_token_so_digits_never_merge(tokenizer):
  text = "123456789+9876*10=0\nAnswer: -1000"
  ids = tokenizer.encode(text)
  assert len(ids) == len(text)
  assert tokenizer.unk_id not in ids


def test_encoding_concatenates(tokenizer):
  prompt, solution = TASK.prompt("37+48*3-19"), "37+48=85\nAnswer: 85"
  assert tokenizer.encode(prompt) + tokenizer.encode(solution) == tokenizer.encode(
    prompt + solution
  )


def test_step_delimiter_is_exactly_one_token(tokenizer):
  assert tokenizer.encode("\n") == [tokenizer.step_id]
  solution = "37+48=85\n85*3=255\n255-19=236\nAnswer: 236"
  ids = tokenizer.encode(solution)
  assert ids.count(tokenizer.step_id) == solution.count("\n")
  for token_id in range(tokenizer.vocab_size):
    if token_id != tokenizer.step_id:
      assert "\n" not in tokenizer.decode([token_id])
      assert STEP_SYMBOL not in tokenizer.id_to_piece(token_id)


def test_special_ids_are_fixed_and_dropped_by_decode(tokenizer):
  special_ids = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id)
  assert special_ids == (0, 1, 2, 3)
  ids = tokenizer.encode("1+2=3\nAnswer: 3")
  padded = [
    tokenizer.bos_id,
    *ids,
    tokenizer.eos_id,
    tokenizer.pad_id,
    tokenizer.pad_id,
  ]
  assert tokenizer.decode(padded) == "1+2=3\nAnswer: 3"
  assert not {0, 1, 2, 3} & set(ids)


def test_decode_rejects_out_of_range_id(tokenizer):
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tokenizer.decode([tokenizer.vocab_size])


@pytest.mark.parametrize("text", [f"1{STEP_SYMBOL}2", "a\u2581b"])
def test_text_with_reserved_character_is_rejected(tokenizer, text):
  with pytest.raises(ValueError, match="reserved character"):
    tokenizer.encode(text)


def test_loaded_tokenizer_equals_trained_one(tmp_path):
  path = tmp_path / "model"
  trained = train_tokenizer(_corpus(100), path)
  loaded = Tokenizer.load(path)
  assert loaded.fingerprint == trained.fingerprint
  assert loaded.vocab_size == trained.vocab_size
  assert loaded.encode("12-3\n") == trained.encode("12-3\n")
  # Nothing but the model is left in the directory: the temp file was renamed.
  assert os.listdir(tmp_path) == ["model"]


def test_fingerprint_is_stable_and_tells_models_apart(tmp_path):
  first = train_tokenizer(_corpus(100), tmp_path / "a")
  same_corpus = train_tokenizer(_corpus(100), tmp_path / "b")
  other_corpus = train_tokenizer(["hello world\n1+1=2"], tmp_path / "c")
  assert first.fingerprint == same_corpus.fingerprint
  assert first.fingerprint != other_corpus.fingerprint


def test_digits_are_in_the_vocabulary_even_if_the_corpus_lacks_them(tmp_path):
  tokenizer = train_tokenizer(["1+1=2\nAnswer: 2"], tmp_path / "model")
  assert tokenizer.unk_id not in tokenizer.encode("0123456789")


def test_vocab_size_too_small_is_rejected_and_larger_allowed(tmp_path):
  corpus = _corpus(50)
  needed = train_tokenizer(corpus, tmp_path / "default").vocab_size
  with pytest.raises(ValueError, match="vocab_size"):
    train_tokenizer(corpus, tmp_path / "small", vocab_size=needed - 1)
  assert (
    train_tokenizer(corpus, tmp_path / "large", vocab_size=needed + 10).vocab_size
    >= needed
  )


def test_empty_corpus_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="empty corpus"):
    train_tokenizer([], tmp_path / "model")


def test_missing_file_raises_value_error_naming_path(tmp_path):
  path = tmp_path / "missing.model"
  with pytest.raises(ValueError, match="missing.model"):
    Tokenizer.load(path)


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_file_raises_value_error_naming_path(tmp_path, model_path, corruption):
  path = tmp_path / "corrupt.model"
  model_bytes = model_path.read_bytes()
  if corruption == "garbage":
    path.write_bytes(b"\x00not a sentencepiece model\xff" * 10)
  else:
    path.write_bytes(model_bytes[: len(model_bytes) // 2])
  with pytest.raises(ValueError, match="corrupt.model"):
    Tokenizer.load(path)


def test_sentencepiece_model_without_step_symbol_is_rejected(tmp_path):
  model_writer = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(["1+1=2", "2*3=6"]),
    model_writer=model_writer,
    model_type="char",
    vocab_size=20,
    hard_vocab_limit=False,
    pad_id=0,
    unk_id=1,
    bos_id=2,
    eos_id=3,
    minloglevel=2,
  )
  path = tmp_path / "foreign.model"
  path.write_bytes(model_writer.getvalue())
  with pytest.raises(ValueError, match="foreign.model.*step delimiter"):
    Tokenizer.load(path)
