"""A character-level sentencepiece tokenizer with a one-token step delimiter.

Pieces are single characters (`model_type="char"`), so a number is always
spelled digit by digit and never merged into an opaque piece. Special ids are
fixed: pad=0, unk=1, bos=2, eos=3.

Keeping the step delimiter unambiguous
--------------------------------------
Steps are separated by "\\n", but sentencepiece's normaliser treats "\\n" as
whitespace and would fold it into the space piece. So "\\n" is never shown to
sentencepiece: before training and encoding it is replaced by STEP_SYMBOL
("␤", U+2424), which the model holds as a user-defined symbol, and after
decoding the symbol is turned back into "\\n". A user-defined symbol is always
its own piece, so the delimiter is exactly one token (`step_id`) and no other
piece contains it. Text that already contains STEP_SYMBOL, or sentencepiece's
space marker "▁", could not be decoded back unchanged, so encoding it raises
ValueError.

Normalisation is switched off (`normalization_rule_name="identity"`, no extra
whitespace removal, no dummy prefix), so `decode(encode(text)) == text` for
every text whose characters were seen in training, spaces included, and
`encode(a + b) == encode(a) + encode(b)`, which lets prompt and solution be
encoded separately.
"""

from __future__ import annotations

import hashlib
import io
import os
import string
from collections.abc import Iterable

import sentencepiece
from etils import epath

from ttscale import io_utils

STEP_SYMBOL = "\u2424"  # "␤": stands for "\n" inside the sentencepiece model
_SPACE_MARKER = "\u2581"  # "▁": sentencepiece's own spelling of a space
_RESERVED_CHARACTERS = (STEP_SYMBOL, _SPACE_MARKER)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_NUM_SPECIAL_PIECES = 5  # pad, unk, bos, eos and STEP_SYMBOL
# Digits are kept even if the corpus lacks one, so no number encodes to unk.
_REQUIRED_CHARACTERS = string.digits
_MAX_TEXT_CHARS = 1 << 16  # sentencepiece silently skips longer training texts


def _to_model_text(text: str) -> str:
  for reserved in _RESERVED_CHARACTERS:
    if reserved in text:
      raise ValueError(
        f"text contains the reserved character {reserved!r} (U+{ord(reserved):04X}), "
        f"which the tokenizer cannot round-trip: {text[:80]!r}"
      )
  return text.replace("\n", STEP_SYMBOL)


def checked_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
  """`ids` as ints; raises ValueError for an id outside [0, vocab_size)."""
  kept_ids = [int(token_id) for token_id in ids]
  for token_id in kept_ids:
    if not 0 <= token_id < vocab_size:
      raise ValueError(f"token id {token_id} is outside the vocabulary [0, {vocab_size})")
  return kept_ids


class Tokenizer:
  """Encodes text to ids and back; see the module docstring for the format."""

  def __init__(self, model_proto: bytes, source: str = "<in memory>"):
    """Wraps a serialized sentencepiece model trained by `train_tokenizer`.

    Args:
      model_proto: the serialized model.
      source: where the model came from, for error messages.

    Raises:
      ValueError: the bytes are not a sentencepiece model, or not one with
        this module's special ids and step symbol.
    """
    processor = sentencepiece.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError, TypeError) as error:
      raise ValueError(
        f"{source} is not a valid sentencepiece model: {error}"
      ) from None
    expected_ids = {
      "pad": (processor.pad_id(), PAD_ID),
      "unk": (processor.unk_id(), UNK_ID),
      "bos": (processor.bos_id(), BOS_ID),
      "eos": (processor.eos_id(), EOS_ID),
    }
    for piece_name, (found_id, expected_id) in expected_ids.items():
      if found_id != expected_id:
        raise ValueError(
          f"{source}: {piece_name} id is {found_id}, expected {expected_id}"
          " (train it with ttscale.data.tokenizer.train_tokenizer)"
        )
    step_id = processor.piece_to_id(STEP_SYMBOL)
    if step_id == UNK_ID:
      raise ValueError(
        f"{source} has no step delimiter piece {STEP_SYMBOL!r}"
        " (train it with ttscale.data.tokenizer.train_tokenizer)"
      )
    self._processor = processor
    self._model_proto = model_proto
    self._step_id = step_id
    self._special_ids = frozenset((PAD_ID, BOS_ID, EOS_ID))

  @classmethod
  def load(cls, path: str | os.PathLike) -> Tokenizer:
    """Loads a model file written by `train_tokenizer`.

    Raises:
      ValueError: the file is missing, unreadable or not such a model.
    """
    try:
      model_proto = epath.Path(path).read_bytes()  # local or gs://
    except OSError as error:
      raise ValueError(
        f"cannot read tokenizer model {os.fspath(path)!r}: {error.strerror}"
      ) from None
    return cls(model_proto, source=f"tokenizer model {os.fspath(path)!r}")

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def unk_id(self) -> int:
    """The id of characters unseen in training."""
    return UNK_ID

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def step_id(self) -> int:
    """The id of the step delimiter "\\n"."""
    return self._step_id

  @property
  def fingerprint(self) -> str:
    """A short hash of the serialized model; equal models, equal prints."""
    return hashlib.sha256(self._model_proto).hexdigest()[:16]

  @property
  def model_proto(self) -> bytes:
    """The serialized sentencepiece model."""
    return self._model_proto

  def encode(self, text: str) -> list[int]:
    """Returns the ids of `text`, one per character; no bos or eos added.

    Characters unseen in training map to the unk id.
    """
    return self._processor.encode(_to_model_text(text))

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of `ids`, skipping pad, bos and eos wherever they are.

    Raises:
      ValueError: an id is outside [0, vocab_size).
    """
    kept_ids = checked_ids(ids, self.vocab_size)
    kept_ids = [token_id for token_id in kept_ids if token_id not in self._special_ids]
    return self._processor.decode(kept_ids).replace(STEP_SYMBOL, "\n")

  def id_to_piece(self, token_id: int) -> str:
    """Returns the piece of one id ("\\n" for the step delimiter)."""
    piece = self._processor.id_to_piece(token_id)
    return "\n" if token_id == self._step_id else piece.replace(_SPACE_MARKER, " ")


def train_tokenizer(
  texts: Iterable[str], path: str | os.PathLike, vocab_size: int | None = None
) -> Tokenizer:
  """Trains a character-level tokenizer on `texts` and writes it to `path`.

  The file is written atomically (a temporary file in the same directory,
  then renamed), so a reader never sees a half-written model.

  Args:
    texts: the training corpus; texts may contain "\\n".
    path: where to write the model file.
    vocab_size: the number of pieces; by default exactly enough for every
      character of the corpus, the digits and the special pieces. A larger
      size is allowed (the model then just has fewer pieces).

  Returns:
    the trained tokenizer.

  Raises:
    ValueError: the corpus is empty, a text contains a reserved character,
      or `vocab_size` is too small to hold every character.
  """
  model_texts = [_to_model_text(text) for text in texts]
  model_texts = [text for text in model_texts if text]
  if not model_texts:
    raise ValueError("cannot train a tokenizer on an empty corpus")
  too_long = [text for text in model_texts if len(text) > _MAX_TEXT_CHARS]
  if too_long:
    raise ValueError(
      f"a tokenizer training text has {len(too_long[0])} characters;"
      f" at most {_MAX_TEXT_CHARS} are supported"
    )
  characters = set(_REQUIRED_CHARACTERS).union(*model_texts) - {STEP_SYMBOL}
  needed_vocab_size = len(characters) + _NUM_SPECIAL_PIECES
  if vocab_size is None:
    vocab_size = needed_vocab_size
  elif vocab_size < needed_vocab_size:
    raise ValueError(
      f"vocab_size={vocab_size} cannot hold the corpus's {len(characters)}"
      f" characters plus {_NUM_SPECIAL_PIECES} special pieces; use at least"
      f" {needed_vocab_size}"
    )
  model_writer = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(model_texts),
    model_writer=model_writer,
    model_type="char",
    vocab_size=vocab_size,
    # A larger vocab_size than the corpus has characters is not an error.
    hard_vocab_limit=False,
    character_coverage=1.0,
    required_chars=_REQUIRED_CHARACTERS,
    user_defined_symbols=[STEP_SYMBOL],
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    max_sentence_length=4 * _MAX_TEXT_CHARS,  # counted in UTF-8 bytes
    pad_id=PAD_ID,
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    minloglevel=2,
  )
  model_proto = model_writer.getvalue()
  tokenizer = Tokenizer(model_proto)
  io_utils.write_bytes_atomic(path, model_proto)
  return tokenizer
