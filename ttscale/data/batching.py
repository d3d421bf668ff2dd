"""Fixed-shape batches for training and decoding (numpy only).

Token layout of one training sequence::

    tokens:     [bos]  question  "\\n"  solution ("...\\nAnswer: N")  [eos]
    loss_mask:    0    0 ... 0    0    1 ... 1                      1

`encode_example` returns the tokens and a mask aligned with the tokens: True
on every token the model must learn to produce (the solution and the eos).
`pack_sequences` turns that into input/target pairs: at each position the
input is a token, the target is the next token of the same sequence, and the
packed `loss_mask` is 1 where that target is a masked token, i.e. it is
aligned with the targets. So the first solution token is predicted from the
prompt's final "\\n", and the eos from the answer's last digit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ttscale.data.tokenizer import Tokenizer
from ttscale.tasks.base import Example, Task


def encode_example(
  tokenizer: Tokenizer, task: Task, example: Example
) -> tuple[np.ndarray, np.ndarray]:
  """Encodes one example as [bos] + prompt + solution + [eos].

  Returns:
    tokens: int32 [length].
    loss_mask: bool [length], aligned with `tokens`; True exactly on the
      solution tokens and the eos, the tokens the model learns to produce.
  """
  prompt_ids = tokenizer.encode(task.prompt(example.question))
  solution_ids = tokenizer.encode(example.solution)
  tokens = np.array(
    [tokenizer.bos_id, *prompt_ids, *solution_ids, tokenizer.eos_id],
    dtype=np.int32,
  )
  loss_mask = np.zeros(len(tokens), dtype=bool)
  loss_mask[1 + len(prompt_ids) :] = True
  return tokens, loss_mask


def _assign_rows(
  lengths: Sequence[int], seq_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Best-fit packing: each sequence goes to the open row it fills most tightly.

  Returns:
    rows: int64 [num_sequences], the row of each sequence.
    offsets: int64 [num_sequences], where each sequence starts in its row.
    segment_ids: int64 [num_sequences], 1 + how many sequences its row held
      before it.
  """
  # rows_with_space[s] lists the rows with exactly s free positions, so the
  # tightest row is found by scanning up from the length, not over all rows.
  rows_with_space: list[list[int]] = [[] for _ in range(seq_len + 1)]
  used_positions: list[int] = []
  sequences_in_row: list[int] = []
  rows = np.empty(len(lengths), dtype=np.int64)
  offsets = np.empty(len(lengths), dtype=np.int64)
  segment_ids = np.empty(len(lengths), dtype=np.int64)
  for index, length in enumerate(lengths):
    fitting_space = next(
      (space for space in range(length, seq_len + 1) if rows_with_space[space]),
      None,
    )
    if fitting_space is None:
      row = len(used_positions)
      used_positions.append(0)
      sequences_in_row.append(0)
    else:
      row = rows_with_space[fitting_space].pop()
    rows[index] = row
    offsets[index] = used_positions[row]
    used_positions[row] += length
    sequences_in_row[row] += 1
    segment_ids[index] = sequences_in_row[row]
    rows_with_space[seq_len - used_positions[row]].append(row)
  return rows, offsets, segment_ids


def pack_sequences(
  sequences: Sequence[Sequence[int]],
  loss_masks: Sequence[Sequence[bool]],
  seq_len: int,
) -> dict[str, np.ndarray]:
  """Packs whole sequences into rows of `seq_len` positions.

  A row holds several sequences one after another; `segment_ids` and
  `positions` let attention and position embeddings treat them as separate.
  Each position holds one input token and the target that follows it in
  the same sequence; a sequence's last token has target 0 and no loss.

  Args:
    sequences: token ids, e.g. from `encode_example`.
    loss_masks: aligned with `sequences`; True on tokens to be learned.
    seq_len: positions per row.

  Returns:
    inputs: int32 [num_rows, seq_len], 0 on padding.
    targets: int32 [num_rows, seq_len], the next token of the same
      sequence, 0 where there is none.
    loss_mask: float32 [num_rows, seq_len], 1 where the target is a masked
      token of the same sequence.
    positions: int32 [num_rows, seq_len], restarting at 0 in each sequence.
    segment_ids: int32 [num_rows, seq_len], 1, 2, 3, ... for the sequences
      of a row, 0 on padding.

  Raises:
    ValueError: a sequence is empty, longer than seq_len, or its mask has
      another length.
  """
  if len(sequences) != len(loss_masks):
    raise ValueError(f"got {len(sequences)} sequences but {len(loss_masks)} loss masks")
  lengths = np.array([len(sequence) for sequence in sequences], dtype=np.int64)
  for index, (sequence, loss_mask) in enumerate(zip(sequences, loss_masks, strict=True)):
    if not 1 <= len(sequence) <= seq_len:
      raise ValueError(
        f"sequence {index} has length {len(sequence)}; packing needs "
        f"1 <= length <= seq_len={seq_len}"
      )
    if len(loss_mask) != len(sequence):
      raise ValueError(
        f"sequence {index} has length {len(sequence)} but its loss "
        f"mask has length {len(loss_mask)}"
      )
  rows, offsets, segment_ids = _assign_rows(lengths.tolist(), seq_len)
  num_rows = int(rows.max()) + 1 if len(rows) else 0

  if len(sequences):
    # Work on all sequences at once, concatenated end to end: `flat_*`
    # arrays have one entry per token of every sequence.
    flat_tokens = np.concatenate(sequences).astype(np.int32)
    flat_mask = np.concatenate(loss_masks).astype(bool)
  else:
    flat_tokens = np.zeros(0, dtype=np.int32)
    flat_mask = np.zeros(0, dtype=bool)
  sequence_starts = np.cumsum(lengths) - lengths
  position_in_sequence = np.arange(len(flat_tokens)) - np.repeat(
    sequence_starts, lengths
  )
  is_last_token = position_in_sequence == np.repeat(lengths - 1, lengths)
  next_tokens = np.where(is_last_token, 0, np.roll(flat_tokens, -1))
  next_is_learned = ~is_last_token & np.roll(flat_mask, -1)

  destination = np.repeat(rows * seq_len + offsets, lengths) + position_in_sequence
  packed = {
    "inputs": np.zeros(num_rows * seq_len, dtype=np.int32),
    "targets": np.zeros(num_rows * seq_len, dtype=np.int32),
    "loss_mask": np.zeros(num_rows * seq_len, dtype=np.float32),
    "positions": np.zeros(num_rows * seq_len, dtype=np.int32),
    "segment_ids": np.zeros(num_rows * seq_len, dtype=np.int32),
  }
  packed["inputs"][destination] = flat_tokens
  packed["targets"][destination] = next_tokens
  packed["loss_mask"][destination] = next_is_learned
  packed["positions"][destination] = position_in_sequence
  packed["segment_ids"][destination] = np.repeat(segment_ids, lengths)
  return {name: array.reshape(num_rows, seq_len) for name, array in packed.items()}


class TrainBatches:
  """Batches of packed rows, each a pure function of (seed, step).

  Epoch e visits the rows in the order of a permutation drawn from
  (seed, e) and drops the rows left over after its last full batch, so a run
  resumed at step s sees exactly the batches an uninterrupted run sees.
  """

  def __init__(self, packed: dict[str, np.ndarray], batch_size: int, seed: int):
    """Serves `packed` in batches.

    Args:
      packed: arrays with a common leading row axis, e.g. from
        `pack_sequences`.
      batch_size: rows per batch.
      seed: the seed of the per-epoch permutations.

    Raises:
      ValueError: the arrays disagree on rows, or there are fewer rows than
        one batch.
    """
    num_rows = {name: array.shape[0] for name, array in packed.items()}
    if len(set(num_rows.values())) != 1:
      raise ValueError(f"packed arrays disagree on the number of rows: {num_rows}")
    self._num_rows = next(iter(num_rows.values()))
    if batch_size < 1 or batch_size > self._num_rows:
      raise ValueError(
        f"batch_size={batch_size} must be in [1, {self._num_rows}], "
        "the number of packed rows"
      )
    self._packed = packed
    self._batch_size = batch_size
    self._seed = seed
    self._cached_epoch = -1
    self._cached_order = np.zeros(0, dtype=np.int64)

  @property
  def steps_per_epoch(self) -> int:
    return self._num_rows // self._batch_size

  def _epoch_order(self, epoch: int) -> np.ndarray:
    # Consecutive steps share an epoch, so keep its permutation around.
    if epoch != self._cached_epoch:
      rng = np.random.default_rng([self._seed, epoch])
      self._cached_order = rng.permutation(self._num_rows)
      self._cached_epoch = epoch
    return self._cached_order

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """Returns the batch of training step `step` (counted from 0).

    Returns:
      the packed arrays' rows for this step: [batch_size, ...] each.
    """
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    order = self._epoch_order(epoch)
    start = step_in_epoch * self._batch_size
    batch_rows = order[start : start + self._batch_size]
    return {name: array[batch_rows] for name, array in self._packed.items()}


def left_pad(
  sequences: Sequence[Sequence[int]], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
  """Right-aligns sequences in a fixed-width array, e.g. prompts for decoding.

  Returns:
    tokens: int32 [num_sequences, length], each sequence at the right end,
      `pad_id` before it.
    lengths: int32 [num_sequences], each sequence's length.

  Raises:
    ValueError: a sequence is longer than `length`.
  """
  tokens = np.full((len(sequences), length), pad_id, dtype=np.int32)
  lengths = np.zeros(len(sequences), dtype=np.int32)
  for index, sequence in enumerate(sequences):
    if len(sequence) > length:
      raise ValueError(f"sequence {index} has length {len(sequence)} > length={length}")
    if len(sequence):
      tokens[index, length - len(sequence) :] = sequence
    lengths[index] = len(sequence)
  return tokens, lengths


def fit_to_seq_len(encoded: list, seq_len: int, how: str) -> tuple[list, int]:
  """Training sequences ([(tokens, loss mask)]) that fit `seq_len`, by
  `data.too_long`: "skip" drops longer ones, "truncate" cuts them, "refuse"
  raises naming how many are longer. Returns (sequences, how many were longer).
  """
  longer = [i for i, (tokens, _) in enumerate(encoded) if len(tokens) > seq_len]
  if not longer:
    return encoded, 0
  if how == "refuse":
    longest = max(len(encoded[i][0]) for i in longer)
    raise ValueError(f"data.seq_len={seq_len}: {len(longer)} of {len(encoded)} training "
                     f"examples are longer (up to {longest} tokens); raise it, or set "
                     "data.too_long='skip' or 'truncate'")
  if how == "truncate":
    return [(t[:seq_len], m[:seq_len]) for t, m in encoded], len(longer)
  kept = [pair for pair in encoded if len(pair[0]) <= seq_len]
  if not kept:
    raise ValueError(f"data.seq_len={seq_len}: every training example is longer")
  return kept, len(longer)
