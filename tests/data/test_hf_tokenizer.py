"""`HFTokenizer` on tiny `tokenizer.json` files built here by the `tokenizers`
library itself: a byte-level BPE (as Llama 3 and Qwen ship) whose vocabulary
merges newlines ("\\n\\n"), and a Metaspace one (sentencepiece-style, as
Gemma's tokenizer.json)."""

from __future__ import annotations

import pytest
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from ttscale.data.hf_tokenizer import HFTokenizer
from ttscale.data.pretrained_tokenizer import load_tokenizer

CORPUS = ["12+3=15\n15*2=30\n\nAnswer: 30\n\n", "What is 7*6?\n7*6=42\n\nAnswer: 42\n\n",
          "a b c. d e f.\n\n"] * 40
TEXT = "What is 12+3?\n12+3=15\n\nAnswer: 15"


def _byte_level(bos: bool = True, eos: str = "<|end_of_text|>") -> str:
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  specials = ["<|begin_of_text|>", eos] if bos else [eos]
  tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=320, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if bos:
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
  return tokenizer.to_str()


def _metaspace() -> str:
  tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
  tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
  tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=200, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))
  return tokenizer.to_str()


def _prepended() -> str:
  """Llama 2's tokenizer.json layout: a `Prepend("▁")` normalizer, and a
  decoder that strips the space it becomes."""
  tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.normalizer = normalizers.Sequence(
      [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
  tokenizer.decoder = decoders.Sequence(
      [decoders.Replace("\u2581", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
  return tokenizer.to_str()


@pytest.fixture(scope="module")
def byte_level() -> HFTokenizer:
  return HFTokenizer(_byte_level().encode())


def test_the_vocabulary_merges_newlines_but_encode_gives_one_step_token_each(byte_level):
  raw = Tokenizer.from_str(_byte_level())
  merged = raw.encode("\n\n", add_special_tokens=False).ids
  assert len(merged) == 1 and merged[0] != byte_level.step_id  # "\n\n" is a piece
  ids = byte_level.encode(TEXT)
  assert ids.count(byte_level.step_id) == TEXT.count("\n") == 3
  assert merged[0] not in ids


def test_round_trip_and_encoding_concatenates_at_line_ends(byte_level):
  assert byte_level.decode(byte_level.encode(TEXT)) == TEXT
  prompt, solution = "What is 12+3?\n", "12+3=15\n\nAnswer: 15"
  assert byte_level.encode(prompt + solution) == (
      byte_level.encode(prompt) + byte_level.encode(solution))


def test_special_ids_come_from_the_file_and_decode_drops_them(byte_level):
  assert byte_level.bos_id == 0 and byte_level.eos_id == 1
  assert byte_level.pad_id == byte_level.eos_id  # no "<pad>": padding uses eos
  ids = [byte_level.bos_id, *byte_level.encode("12+3"), byte_level.eos_id,
         byte_level.pad_id]
  assert byte_level.decode(ids) == "12+3"
  assert byte_level.id_to_piece(byte_level.step_id) == "\n"


def test_without_a_bos_token_contexts_start_with_eos():
  # Qwen's tokenizer adds nothing and has no bos; "<|endoftext|>" separates documents.
  tokenizer = HFTokenizer(_byte_level(bos=False, eos="<|endoftext|>").encode())
  assert tokenizer.bos_id == tokenizer.eos_id == 0


@pytest.mark.parametrize("spec", [_metaspace, _prepended])
def test_sentencepiece_style_files_lose_their_dummy_prefix(spec):
  # With the prefix, "\n" would be two tokens ("▁", "\n") and lines would
  # gain a space; leading spaces that are there stay.
  tokenizer = HFTokenizer(spec().encode())
  assert tokenizer.encode("\n") == [tokenizer.step_id]
  for text in ("a b c.\nd e f.", " a\n b", TEXT):
    assert tokenizer.decode(tokenizer.encode(text)) == text
  assert tokenizer.encode("a b\n") + tokenizer.encode("c") == tokenizer.encode("a b\nc")


def test_metaspace_special_ids():
  tokenizer = HFTokenizer(_metaspace().encode())
  assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id) == (0, 1, 2)


def test_load_tokenizer_opens_a_tokenizer_json_with_a_stable_fingerprint(tmp_path):
  path = tmp_path / "tokenizer.json"
  path.write_text(_byte_level())
  loaded = load_tokenizer(path)
  assert isinstance(loaded, HFTokenizer)
  assert loaded.fingerprint == HFTokenizer(_byte_level().encode()).fingerprint
  assert loaded.encode(TEXT) == HFTokenizer(path.read_bytes()).encode(TEXT)
  other = HFTokenizer(_byte_level(bos=False).encode())
  assert other.fingerprint != loaded.fingerprint


def test_no_one_token_newline_is_rejected_naming_the_file(tmp_path):
  # A word-level vocabulary without "\n": it encodes to the unknown token...
  tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "a": 2},
                                         unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.add_special_tokens(["<eos>"])
  path = tmp_path / "tokenizer.json"
  path.write_text(tokenizer.to_str())
  # ...or, whitespace being dropped, to no token at all: either way not one step token.
  with pytest.raises(ValueError, match=r"tokenizer\.json.*one-token step delimiter"):
    load_tokenizer(path)


def test_missing_eos_and_malformed_files_are_named(tmp_path):
  tokenizer = Tokenizer.from_str(_byte_level())
  data = tokenizer.to_str().replace("<|end_of_text|>", "<|other|>")
  with pytest.raises(ValueError, match="no end-of-sequence token"):
    HFTokenizer(data.encode(), source="x.json")
  path = tmp_path / "tokenizer.json"
  path.write_text('{"version": "1.0", "model": 3}')
  with pytest.raises(ValueError, match=r"tokenizer\.json.* is not a valid tokenizer\.json"):
    load_tokenizer(path)
