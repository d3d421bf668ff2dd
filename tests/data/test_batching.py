"""Tests of example encoding, sequence packing and resumable train batches."""

from __future__ import annotations

import numpy as np
import pytest

from ttscale.data.batching import TrainBatches, encode_example, left_pad, pack_sequences
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


def test_left_pad_right_aligns_sequences():
  tokens, lengths = left_pad([[5, 6], [7], []], length=4, pad_id=0)
  assert tokens.dtype == np.int32 and lengths.dtype == np.int32
  assert tokens.tolist() == [[0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]]
  assert lengths.tolist() == [2, 1, 0]


def test_left_pad_rejects_too_long_sequence():
  with pytest.raises(ValueError, match="length=2"):
    left_pad([[1, 2, 3]], length=2, pad_id=0)
