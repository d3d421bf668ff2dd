"""Tests of example encoding, sequence packing and resumable train batches."""

from __future__ import annotations

import numpy as np
import pytest

from ttscale.data.batching import (
  TrainBatches,
  encode_example,
  left_pad,
  pack_sequences,
  rows_by_length,
)
from ttscale.data.tokenizer import train_tokenizer
from ttscale.tasks.arith import ArithTask

TASK = ArithTask(max_ops=6)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  corpus = [
    TASK.prompt(example.question) + example.solution
    for example in TASK.generate(300, seed=0)
  ]
  return train_tokenizer(corpus, tmp_path_factory.mktemp("tokenizer") / "model")


@pytest.fixture(scope="module")
def encoded(tokenizer):
  return [
    encode_example(tokenizer, TASK, example) for example in TASK.generate(200, seed=1)
  ]


def test_encode_example_layout(tokenizer):
  example = next(TASK.generate(1, seed=2))
  tokens, loss_mask = encode_example(tokenizer, TASK, example)
  prompt_ids = tokenizer.encode(TASK.prompt(example.question))
  solution_ids = tokenizer.encode(example.solution)
  assert tokens.dtype == np.int32
  assert tokens.tolist() == [
    tokenizer.bos_id,
    *prompt_ids,
    *solution_ids,
    tokenizer.eos_id,
  ]
  # The prompt ends with the step delimiter, right before the solution.
  assert tokens[len(prompt_ids)] == tokenizer.step_id
  assert loss_mask.tolist() == [False] * (1 + len(prompt_ids)) + [True] * (
    len(solution_ids) + 1
  )
  assert tokenizer.decode(tokens) == TASK.prompt(example.question) + example.solution


def _unpack(packed):
  """Returns [(inputs, targets, loss_mask, positions)] per packed sequence."""
  sequences = []
  for row in range(packed["inputs"].shape[0]):
    segment_ids = packed["segment_ids"][row]
    for segment in range(1, segment_ids.max() + 1):
      where = segment_ids == segment
      sequences.append(
        tuple(
          packed[name][row][where].tolist()
          for name in ("inputs", "targets", "loss_mask", "positions")
        )
      )
  return sequences


@pytest.mark.parametrize("spare_positions", [0, 30, 200])
def test_packing_keeps_every_sequence_whole_with_its_targets_and_loss(
  encoded, spare_positions
):
  sequences = [tokens for tokens, _ in encoded]
  seq_len = max(len(tokens) for tokens in sequences) + spare_positions
  loss_masks = [loss_mask for _, loss_mask in encoded]
  packed = pack_sequences(sequences, loss_masks, seq_len)

  num_rows = packed["inputs"].shape[0]
  expected_dtypes = {
    "inputs": np.int32,
    "targets": np.int32,
    "loss_mask": np.float32,
    "positions": np.int32,
    "segment_ids": np.int32,
  }
  for name, dtype in expected_dtypes.items():
    assert packed[name].shape == (num_rows, seq_len)
    assert packed[name].dtype == dtype

  expected = sorted(
    (
      tokens.tolist(),
      [*tokens[1:].tolist(), 0],
      [*loss_mask[1:].astype(np.float32).tolist(), 0.0],
      list(range(len(tokens))),
    )
    for tokens, loss_mask in encoded
  )
  # Every sequence comes back once, whole and in order: positions restart at
  # 0, targets are the next token of the same sequence (0 after the last),
  # and the loss falls exactly on targets that are solution tokens or eos.
  assert sorted(_unpack(packed)) == [tuple(item) for item in expected]

  padding = packed["segment_ids"] == 0
  for name in ("inputs", "targets", "loss_mask", "positions"):
    assert not packed[name][padding].any()
  assert packed["loss_mask"].sum() == sum(mask[1:].sum() for _, mask in encoded)
  # Non-pad inputs are exactly the tokens given, each once.
  assert (~padding).sum() == sum(len(tokens) for tokens, _ in encoded)


def test_segment_ids_number_sequences_from_one_within_each_row(encoded):
  packed = pack_sequences(
    [tokens for tokens, _ in encoded], [mask for _, mask in encoded], 128
  )
  for segment_ids in packed["segment_ids"]:
    segments = segment_ids[segment_ids > 0]
    boundaries = np.flatnonzero(np.diff(segments)) + 1
    assert segments[0] == 1
    assert (np.diff(segments) >= 0).all()
    assert np.array_equal(segments[boundaries], np.arange(2, len(boundaries) + 2))


def test_packing_fills_rows_best_fit():
  # Best fit puts 3 beside 7 and 5 beside 5; packing in order would need 3 rows.
  lengths = [7, 5, 3, 5]
  sequences = [np.arange(1, length + 1) for length in lengths]
  masks = [np.ones(length, dtype=bool) for length in lengths]
  packed = pack_sequences(sequences, masks, seq_len=10)
  assert packed["inputs"].shape == (2, 10)
  assert (packed["segment_ids"] > 0).all()


def test_too_long_sequence_is_rejected_naming_seq_len_and_length():
  with pytest.raises(ValueError, match=r"length 11.*seq_len=10"):
    pack_sequences([np.arange(11)], [np.ones(11, dtype=bool)], seq_len=10)


def test_mask_of_other_length_is_rejected():
  with pytest.raises(ValueError, match="mask"):
    pack_sequences([np.arange(5)], [np.ones(4, dtype=bool)], seq_len=10)


def _row_batches(num_rows=43, batch_size=5, seed=0):
  # One column holding the row number identifies rows in the batches.
  packed = {
    "row": np.arange(num_rows, dtype=np.int32)[:, None],
    "inputs": np.zeros((num_rows, 3), dtype=np.int32),
  }
  return TrainBatches(packed, batch_size=batch_size, seed=seed)


def _epoch_rows(batches, epoch):
  steps = range(epoch * batches.steps_per_epoch, (epoch + 1) * batches.steps_per_epoch)
  return np.concatenate([batches.batch(step)["row"][:, 0] for step in steps])


def test_train_batches_are_a_function_of_seed_and_step():
  batches = _row_batches()
  later_first = [batches.batch(step)["row"] for step in (20, 3, 9, 3)]
  fresh = _row_batches()
  assert all(
    np.array_equal(batch, fresh.batch(step)["row"])
    for batch, step in zip(later_first, (20, 3, 9, 3), strict=True)
  )
  assert not np.array_equal(
    _row_batches(seed=1).batch(0)["row"], _row_batches(seed=0).batch(0)["row"]
  )


def test_each_epoch_visits_distinct_rows_in_a_new_order_and_drops_the_remainder():
  batches = _row_batches(num_rows=43, batch_size=5)
  assert batches.steps_per_epoch == 8
  batch = batches.batch(0)
  assert batch["row"].shape == (5, 1) and batch["inputs"].shape == (5, 3)
  epochs = [_epoch_rows(batches, epoch) for epoch in range(3)]
  for rows in epochs:
    assert len(rows) == 40 and len(set(rows.tolist())) == 40
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])


def test_train_batches_reject_too_few_rows_and_negative_steps():
  with pytest.raises(ValueError, match="batch_size"):
    _row_batches(num_rows=3, batch_size=4)
  with pytest.raises(ValueError, match="step"):
    _row_batches().batch(-1)


def test_verifier_rows_are_cut_to_the_narrowest_width_with_their_labels_whole():
  """Fails if a row loses a token or a label, carries another row's labels,
  or is cut wider than it needs."""
  rng = np.random.default_rng(2)
  lengths = rng.integers(1, 33, size=120)
  inputs = np.where(np.arange(32)[None, :] < lengths[:, None],
                    np.arange(1, 121)[:, None], 0).astype(np.int32)
  arrays = {"inputs": inputs, "token_mask": (inputs > 0).astype(np.float32),
            "step_ends": np.stack([lengths - 1, lengths // 2], axis=1).astype(np.int32),
            "targets": np.arange(120, dtype=np.float32)[:, None] * np.ones((1, 2))}
  batches = rows_by_length(arrays, lengths.tolist(), batch_size=2, seed=0)
  seen = 0
  for step in range(batches.steps_per_epoch):
    batch = batches.batch(step)
    rows, width = batch["inputs"].shape
    assert rows * width == 2 * 32 and batch["step_ends"].shape == (rows, 2)
    for r in range(rows):
      row = int(batch["inputs"][r, 0]) - 1
      assert width == min(w for w in (8, 16, 32) if w >= lengths[row])
      assert np.count_nonzero(batch["inputs"][r]) == lengths[row]
      assert batch["token_mask"][r].sum() == lengths[row]
      assert batch["step_ends"][r, 0] == lengths[row] - 1 < width
      assert batch["targets"][r, 0] == row
      seen += 1
  assert seen > 0.85 * len(lengths)


def _rows_of_lengths(lengths):
  """Verifier-like rows: row i holds len i's worth of the token i + 1."""
  lengths = np.asarray(lengths)
  inputs = np.where(np.arange(32)[None, :] < lengths[:, None],
                    np.arange(1, len(lengths) + 1)[:, None], 0).astype(np.int32)
  return {"inputs": inputs, "step_ends": (lengths - 1)[:, None].astype(np.int32)}


def _widths_of(batches):
  """{row number: the width it was served in}."""
  widths = {}
  for step in range(batches.steps_per_epoch):
    batch = batches.batch(step)
    widths.update({int(i): batch["inputs"].shape[1] for i in batch["inputs"][:, 0]})
  return widths


def test_a_width_too_sparse_for_a_batch_is_served_wider():
  """Three short rows cannot fill the 8-wide width's batch of 8: they go in
  the 16-wide batches. A single long row cannot fill a batch of the widest
  (2 rows): the 16-wide rows join it there."""
  lengths = [3, 4, 5] + [12] * 40 + [30] * 6
  batches = rows_by_length(_rows_of_lengths(lengths), lengths, batch_size=2, seed=0)
  assert batches.widths == [16, 32]
  assert {w for i, w in _widths_of(batches).items() if i <= 3} == {16}
  lengths = [3] * 40 + [12] * 40 + [30]
  batches = rows_by_length(_rows_of_lengths(lengths), lengths, batch_size=2, seed=0)
  assert batches.widths == [8, 32]
  widths = _widths_of(batches)
  assert {w for i, w in widths.items() if i > 40} == {32}


def test_bucketed_batches_are_a_function_of_seed_and_step():
  lengths = np.random.default_rng(1).integers(1, 33, 200).tolist()

  def make(seed):
    return rows_by_length(_rows_of_lengths(lengths), lengths, batch_size=2, seed=seed)

  first, again, other = make(0), make(0), make(1)
  steps = (17, 2, 40, 2)
  assert all(np.array_equal(first.batch(s)["inputs"], again.batch(s)["inputs"]) for s in steps)
  assert any(first.batch(s)["inputs"].shape != other.batch(s)["inputs"].shape
             or not np.array_equal(first.batch(s)["inputs"], other.batch(s)["inputs"])
             for s in steps)
  epoch = first.steps_per_epoch
  assert any(first.batch(s)["inputs"].shape != first.batch(s + epoch)["inputs"].shape
             or not np.array_equal(first.batch(s)["inputs"], first.batch(s + epoch)["inputs"])
             for s in range(epoch))


def test_bucketed_batches_reject_too_long_rows_too_few_rows_and_negative_steps():
  with pytest.raises(ValueError, match="row 1 has 40 tokens"):
    rows_by_length(_rows_of_lengths([5, 3]), [5, 40], batch_size=1, seed=0)
  with pytest.raises(ValueError, match="batch_size=4"):
    rows_by_length(_rows_of_lengths([5, 6, 30]), [5, 6, 30], batch_size=4, seed=0)
  with pytest.raises(ValueError, match="step"):
    rows_by_length(_rows_of_lengths([5, 6]), [5, 6], batch_size=1, seed=0).batch(-1)


def test_left_pad_right_aligns_sequences():
  tokens, lengths = left_pad([[5, 6], [7], []], length=4, pad_id=0)
  assert tokens.dtype == np.int32 and lengths.dtype == np.int32
  assert tokens.tolist() == [[0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]]
  assert lengths.tolist() == [2, 1, 0]


def test_left_pad_rejects_too_long_sequence():
  with pytest.raises(ValueError, match="length=2"):
    left_pad([[1, 2, 3]], length=2, pad_id=0)
