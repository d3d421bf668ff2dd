"""The sentencepiece tokenizer of a released model (Gemma, Llama), behind our interface.

`Tokenizer` (ttscale/data/tokenizer.py) is the embedded task's own character
model, with fixed special ids and a reserved step symbol. A released model comes
with its own `tokenizer.model`; `PretrainedTokenizer` gives it the same
interface (`encode`, `decode`, `vocab_size`, `pad_id`, `bos_id`, `eos_id`,
`step_id`, `fingerprint`), reading the special ids from the model:

- Gemma: pad 0, eos 1, bos 2, unk 3; "\\n" is a piece of its own.
- Llama 2: unk 0, bos 1, eos 2 and no pad (padding then uses eos: padded
  positions are masked, and decoding drops eos anyway); "\\n" is the byte
  piece "<0x0A>".

The step delimiter must be one token, because the sampler ends a step when it
samples `step_id`. Vocabularies also hold pieces that merge a newline with
other characters (":\n") or runs of newlines ("\n\n"), so `encode` splits the
text at every "\n", encodes the lines and joins them with `step_id`: every text
we encode has one token per delimiter. A model may still sample a merged piece;
that ends no step (its text still splits into steps).

Lines are encoded without sentencepiece's dummy prefix (the "▁" Llama's model
puts before the first word of a text), so that encoding is the same wherever a
line starts: `encode(a + b) == encode(a) + encode(b)` when `a` ends with "\n",
which lets prompt and solution be encoded separately.

`load_tokenizer(path)` opens either kind, and a Hugging Face `tokenizer.json`
(`hf_tokenizer.HFTokenizer`, the same interface and the same step contract).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import sentencepiece
from etils import epath
from sentencepiece import sentencepiece_model_pb2

from ttscale.data import tokenizer as own_tokenizer
from ttscale.data.hf_tokenizer import HFTokenizer, is_tokenizer_json

_STEP_PIECES = ("\n", "<0x0A>")  # a piece of its own, or the byte piece


class PretrainedTokenizer:
  """A released model's sentencepiece tokenizer; see the module docstring."""

  def __init__(self, model_proto: bytes, source: str = "<in memory>"):
    """Wraps a serialized sentencepiece model.

    Raises:
      ValueError: the bytes are not a sentencepiece model, or it lacks an eos
        or bos piece or a one-token "\\n"; the message names `source`.
    """
    processor = sentencepiece.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError, TypeError) as error:
      raise ValueError(f"{source} is not a valid sentencepiece model: {error}") from None
    for name in ("eos", "bos"):
      if getattr(processor, f"{name}_id")() < 0:
        raise ValueError(f"{source}: the model has no {name} piece")
    step_id = next((processor.piece_to_id(piece) for piece in _STEP_PIECES
                    if processor.piece_to_id(piece) != processor.unk_id()), None)
    if step_id is None:
      raise ValueError(f"{source}: no one-token step delimiter; expected a piece "
                       f"{' or '.join(map(repr, _STEP_PIECES))}")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    if proto.normalizer_spec.add_dummy_prefix:
      proto.normalizer_spec.add_dummy_prefix = False
      processor = sentencepiece.SentencePieceProcessor(
          model_proto=proto.SerializeToString())
    self._processor = processor
    self._model_proto = model_proto
    self._step_id = step_id
    pad_id = processor.pad_id()
    self._pad_id = pad_id if pad_id >= 0 else processor.eos_id()
    self._special_ids = frozenset((self._pad_id, processor.bos_id(), processor.eos_id()))

  @classmethod
  def load(cls, path: str | os.PathLike) -> PretrainedTokenizer:
    return cls(epath.Path(path).read_bytes(), source=f"tokenizer model {os.fspath(path)!r}")

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def unk_id(self) -> int:
    return self._processor.unk_id()

  @property
  def bos_id(self) -> int:
    return self._processor.bos_id()

  @property
  def eos_id(self) -> int:
    return self._processor.eos_id()

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
    return self._model_proto

  def encode(self, text: str) -> list[int]:
    """Returns the ids of `text`, no bos or eos added; "\\n" is always `step_id`."""
    lines = text.split("\n")
    ids = self._processor.encode(lines[0])
    for line in lines[1:]:
      ids.append(self._step_id)
      ids.extend(self._processor.encode(line))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of `ids`, skipping pad, bos and eos wherever they are.

    Raises:
      ValueError: an id is outside [0, vocab_size).
    """
    kept_ids = own_tokenizer.checked_ids(ids, self.vocab_size)
    return self._processor.decode([i for i in kept_ids if i not in self._special_ids])

  def id_to_piece(self, token_id: int) -> str:
    """Returns the piece of one id ("\\n" for the step delimiter)."""
    if token_id == self._step_id:
      return "\n"
    return self._processor.id_to_piece(token_id).replace("\u2581", " ")


def load_tokenizer(path: str | os.PathLike):
  """Opens a tokenizer file: ours (`Tokenizer`) or a released model's.

  Returns:
    `HFTokenizer` for a `tokenizer.json`; `Tokenizer` when the file was
    written by `train_tokenizer` (fixed special ids and the step symbol);
    else `PretrainedTokenizer` (a released sentencepiece model).

  Raises:
    ValueError: the file is missing, unreadable or not a usable model.
  """
  try:
    model_proto = epath.Path(path).read_bytes()  # local or gs://
  except OSError as error:
    raise ValueError(
        f"cannot read tokenizer model {os.fspath(path)!r}: {error.strerror}") from None
  source = f"tokenizer model {os.fspath(path)!r}"
  if is_tokenizer_json(model_proto):
    return HFTokenizer(model_proto, source=f"tokenizer {os.fspath(path)!r}")
  try:
    return own_tokenizer.Tokenizer(model_proto, source=source)
  except ValueError as error:
    if "not a valid sentencepiece model" in str(error):
      raise
  return PretrainedTokenizer(model_proto, source=source)
