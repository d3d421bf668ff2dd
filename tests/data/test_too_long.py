"""What training does with examples longer than `data.seq_len` (`data.too_long`)."""

import pytest

from ttscale.data.batching import fit_to_seq_len


def _encoded(lengths):
  return [(list(range(n)), [True] * n) for n in lengths]


@pytest.mark.parametrize("how, kept_lengths", [("skip", [3, 4]), ("truncate", [3, 5, 4])])
def test_training_examples_longer_than_seq_len_are_skipped_or_truncated(how, kept_lengths):
  kept, longer = fit_to_seq_len(_encoded([3, 9, 4]), seq_len=5, how=how)
  assert longer == 1
  assert [len(t) for t, _ in kept] == kept_lengths
  assert all(len(t) == len(m) for t, m in kept)


def test_training_examples_longer_than_seq_len_are_refused_when_asked():
  with pytest.raises(ValueError, match=r"data.seq_len=5: 2 of 3 training examples are "
                                       r"longer \(up to 9 tokens\)"):
    fit_to_seq_len(_encoded([3, 9, 7]), seq_len=5, how="refuse")
  assert fit_to_seq_len(_encoded([3]), seq_len=5, how="refuse") == (_encoded([3]), 0)
