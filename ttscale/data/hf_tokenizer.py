"""A Hugging Face `tokenizer.json` (the `tokenizers` library), behind our interface.

`HFTokenizer` offers what `PretrainedTokenizer` (sentencepiece) offers:
`encode`, `decode`, `vocab_size`, `pad_id`, `unk_id`, `bos_id`, `eos_id`,
`step_id`, `fingerprint`, `id_to_piece`. Llama 3.x and Qwen ship only a
`tokenizer.json` (byte-level BPE); Gemma 2/3 ship one beside their
`tokenizer.model`.

The file alone decides everything, since the study copies that one file into
its workdir (`tokenizer.model`, whatever the format) and reads it back:
- bos: the special token the post-processor puts first (Llama 3's
  "<|begin_of_text|>", Gemma's "<bos>"), else a special token named as in
  `_BOS_NAMES`; a model without one (Qwen) starts its contexts with eos, its
  document separator ("<|endoftext|>"), as its pre-training did between
  documents.
- eos: the first special token named as in `_EOS_NAMES`; none is an error.
- pad: "<pad>" if there is one, else eos (padded positions are masked, and
  decoding drops eos anyway), as for Llama 2's sentencepiece model.

The step delimiter. The sampler ends a step when it samples `step_id`, so
"\\n" must encode to exactly one token (the byte-level "Ċ", or "<0x0A>", or a
"\\n" piece); a tokenizer where it does not is an error naming the file. Like
the sentencepiece path, `encode` splits the text at every "\\n", encodes the
lines and joins them with `step_id`, so every text we encode has one token
per delimiter even where the vocabulary merges newlines with other characters
("\\n\\n", ".\\n", " \\n"). A model may still sample such a merged piece: it
ends no step (its text still splits into steps when decoded), exactly as a
merged ":\\n" does with sentencepiece.

`decode` decodes the lines between step tokens separately and joins them with
"\\n": a sentencepiece-style tokenizer.json (Metaspace, which adds "▁" at the
start of the text it encodes) then gives back each line as it was encoded,
and `decode(encode(text)) == text` for text the vocabulary covers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from etils import epath

from ttscale.data import tokenizer as own_tokenizer

_BOS_NAMES = ("<bos>", "<s>", "<|begin_of_text|>")
_EOS_NAMES = ("<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>")
_PAD_NAMES = ("<pad>",)


def _without_dummy_prefix(spec: dict) -> dict:
  """`spec` (a parsed tokenizer.json) with no "▁" prepended to encoded text,
  and no decoder step that strips it again (which would eat a real space)."""

  def strip(component, dropped: str):
    if not isinstance(component, dict):
      return component
    if component.get("type") == dropped:
      return None
    if component.get("type") == "Sequence":
      key = next(k for k in ("normalizers", "pretokenizers", "decoders") if k in component)
      parts = [strip(part, dropped) for part in component[key]]
      return dict(component, **{key: [part for part in parts if part is not None]})
    if component.get("type") == "Metaspace":
      unprefixed = dict(component, prepend_scheme="never")
      if "add_prefix_space" in component:  # the field's name before tokenizers 0.15
        unprefixed["add_prefix_space"] = False
      return unprefixed
    return component

  return dict(spec, normalizer=strip(spec.get("normalizer"), "Prepend"),
              pre_tokenizer=strip(spec.get("pre_tokenizer"), "Prepend"),
              decoder=strip(spec.get("decoder"), "Strip"))


def is_tokenizer_json(data: bytes) -> bool:
  """Whether file contents look like a `tokenizer.json` (a JSON object)."""
  return data.lstrip()[:1] == b"{"


class HFTokenizer:
  """A `tokenizer.json` tokenizer; see the module docstring."""

  def __init__(self, data: bytes, source: str = "<in memory>"):
    """Wraps the contents of a `tokenizer.json`.

    Raises:
      ValueError: not a tokenizer the `tokenizers` library reads, no eos
        token, or "\\n" is not one token; the message names `source`.
    """
    import tokenizers  # here, so that importing the data layer stays light

    try:
      spec = json.loads(data)
      tokenizer = tokenizers.Tokenizer.from_str(json.dumps(_without_dummy_prefix(spec)))
    except BaseException as error:  # the library raises Exception and, on a
      # malformed file, pyo3's PanicException (a BaseException)
      if isinstance(error, (KeyboardInterrupt, SystemExit)):
        raise
      message = str(error).splitlines()[0] if str(error) else type(error).__name__
      raise ValueError(f"{source} is not a valid tokenizer.json: {message}") from None
    specials = {token["content"]: token["id"]
                for token in spec.get("added_tokens", ())
                if token.get("special")}

    def named(names):
      return next((specials[name] for name in names if name in specials), None)

    eos_id = named(_EOS_NAMES)
    if eos_id is None:
      raise ValueError(f"{source}: no end-of-sequence token; expected a special token "
                       f"named {' or '.join(map(repr, _EOS_NAMES))}")
    with_specials = tokenizer.encode("", add_special_tokens=True).ids
    bos_id = with_specials[0] if with_specials else named(_BOS_NAMES)
    newline = tokenizer.encode("\n", add_special_tokens=False).ids
    if len(newline) != 1:
      raise ValueError(f"{source}: no one-token step delimiter; '\\n' encodes to "
                       f"{len(newline)} tokens {newline}")
    self._tokenizer = tokenizer
    self._data = data
    self._step_id = newline[0]
    self._eos_id = eos_id
    self._bos_id = eos_id if bos_id is None else bos_id
    pad_id = named(_PAD_NAMES)
    self._pad_id = eos_id if pad_id is None else pad_id
    self._special_ids = frozenset((self._pad_id, self._bos_id, self._eos_id))

  @classmethod
  def load(cls, path: str | os.PathLike) -> HFTokenizer:
    return cls(epath.Path(path).read_bytes(), source=f"tokenizer {os.fspath(path)!r}")

  @property
  def vocab_size(self) -> int:
    """Ids in use, added tokens included (may be fewer than a model's embedding rows)."""
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def unk_id(self) -> int:
    """The unknown token's id, -1 when the model has none (byte-level BPE)."""
    unk = getattr(self._tokenizer.model, "unk_token", None)
    found = None if unk is None else self._tokenizer.token_to_id(unk)
    return -1 if found is None else found

  @property
  def bos_id(self) -> int:
    return self._bos_id

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def step_id(self) -> int:
    """The id of the step delimiter "\\n"."""
    return self._step_id

  @property
  def fingerprint(self) -> str:
    """A short hash of the file; equal files, equal prints."""
    return hashlib.sha256(self._data).hexdigest()[:16]

  def encode(self, text: str) -> list[int]:
    """Returns the ids of `text`, no bos or eos added; "\\n" is always `step_id`."""
    ids: list[int] = []
    for index, line in enumerate(text.split("\n")):
      if index:
        ids.append(self._step_id)
      if line:
        ids.extend(self._tokenizer.encode(line, add_special_tokens=False).ids)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of `ids`, skipping pad, bos and eos wherever they are;
    the lines between step tokens are decoded one by one.

    Raises:
      ValueError: an id is outside [0, vocab_size).
    """
    kept_ids = own_tokenizer.checked_ids(ids, self.vocab_size)
    lines, line = [], []
    for token_id in kept_ids:
      if token_id == self._step_id:
        lines.append(line)
        line = []
      elif token_id not in self._special_ids:
        line.append(token_id)
    lines.append(line)
    return "\n".join(self._tokenizer.decode(line, skip_special_tokens=False)
                     for line in lines)

  def id_to_piece(self, token_id: int) -> str:
    """Returns the text of one id ("\\n" for the step delimiter)."""
    if token_id == self._step_id:
      return "\n"
    return self._tokenizer.decode([token_id], skip_special_tokens=False)
