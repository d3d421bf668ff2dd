"""Quantile difficulty bins on hand-made easiness scores."""

import numpy as np
import pytest

from ttscale.scaling.difficulty import quantile_bins


def test_ten_distinct_values_make_five_bins_of_two_easiest_first():
  """Fails if bins are not two per bin with bin 1 holding the two highest values."""
  easiness = [0.9, 0.1, 0.5, 0.7, 0.3, 0.0, 0.8, 0.4, 0.6, 0.2]
  # Ranks from the easiest: 0.9 0.8 | 0.7 0.6 | 0.5 0.4 | 0.3 0.2 | 0.1 0.0.
  expected = [1, 5, 3, 2, 4, 5, 1, 3, 2, 4]
  bins = quantile_bins(easiness, 5)
  assert bins.tolist() == expected
  assert bins.dtype == np.int64
  assert np.bincount(bins).tolist() == [0, 2, 2, 2, 2, 2]


def test_bins_do_not_depend_on_the_order_of_the_questions():
  """Fails if permuting the questions changes any question's bin."""
  rng = np.random.default_rng(0)
  easiness = rng.random(20)
  permutation = rng.permutation(20)
  bins = quantile_bins(easiness, 4)
  assert quantile_bins(easiness[permutation], 4).tolist() == bins[permutation].tolist()
  assert np.bincount(bins).tolist() == [0, 5, 5, 5, 5]


def test_a_tie_straddling_a_boundary_takes_the_bin_of_its_mean_rank():
  """Fails if a tie is split across bins or placed other than by its mean rank."""
  # 6 questions, 3 bins: rank r goes to bin floor(r * 3 / 6) + 1 = floor(r / 2) + 1.
  # The three 0.5s have ranks 2, 3, 4 (bins 2, 2, 3 if split); mean rank 3 -> bin 2.
  assert quantile_bins([0.9, 0.8, 0.5, 0.5, 0.5, 0.1], 3).tolist() == [1, 1, 2, 2, 2, 3]
  # Ranks 1, 2, 3 (bins 1, 2, 2 if split); mean rank 2 -> bin 2, so bin 1 keeps one question.
  assert quantile_bins([0.5, 0.9, 0.5, 0.0, 0.5, 0.1], 3).tolist() == [2, 1, 2, 3, 2, 3]
  # 4 questions, 2 bins: ranks 1, 2 (bins 1, 2 if split); mean rank 1.5 -> 1.5 * 2 / 4 -> bin 1.
  assert quantile_bins([0.1, 0.5, 0.9, 0.5], 2).tolist() == [2, 1, 1, 1]


def test_all_equal_values_share_one_bin():
  """Fails if equal values are spread over bins (mean rank 4.5 of 10 -> bin 3 of 5)."""
  bins = quantile_bins([0.25] * 10, 5)
  assert bins.tolist() == [3] * 10
  assert quantile_bins([0.7], 5).tolist() == [1]


def test_one_bin_and_more_bins_than_questions():
  """Fails if num_bins=1 is not all ones, or bins exceed num_bins when it is large."""
  assert quantile_bins([0.3, 0.2, 0.9], 1).tolist() == [1, 1, 1]
  # 2 questions, 5 bins: ranks 0 and 1 -> floor(0) + 1 = 1 and floor(2.5) + 1 = 3.
  assert quantile_bins([0.1, 0.8], 5).tolist() == [3, 1]


@pytest.mark.parametrize("easiness, num_bins, match", [
    ([], 5, "non-empty"),
    ([[0.1, 0.2]], 2, "non-empty vector"),
    ([0.1, float("nan"), 0.3], 2, "finite"),
    ([0.1, float("inf")], 2, "finite"),
    ([0.1, 0.2], 0, "num_bins=0"),
    ([0.1, 0.2], -1, "num_bins=-1"),
])
def test_bad_input_raises(easiness, num_bins, match):
  """Fails if empty, non-finite or 2-D scores, or num_bins < 1, are accepted."""
  with pytest.raises(ValueError, match=match):
    quantile_bins(easiness, num_bins)
