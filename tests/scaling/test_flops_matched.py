"""FLOPs-matched budgets (paper §5) against hand-computed values."""

import pytest

from ttscale.scaling import flops_matched as fm


def test_budget_multiplier_paper_count_by_hand():
  """Fails if k != M + 3(M - 1)/R (M=14, R=0.16: 14 + 39 / 0.16 = 257.75)."""
  assert fm.budget_multiplier(14, 0.16) == pytest.approx(257.75)
  assert fm.budget_multiplier(2, 1.0) == pytest.approx(5.0)   # 2 + 3 * 1 / 1
  assert fm.budget_multiplier(1, 0.5) == pytest.approx(1.0)   # same model: one generation


def test_budget_multiplier_with_verifier_by_hand():
  """Fails if k != (M(6 + 2R) - 6) / (4R) (M=14, R=0.16: 82.48 / 0.64 = 128.875)."""
  k = fm.budget_multiplier(14, 0.16, count_verifier=True)
  assert k == pytest.approx((14 * (6 + 0.32) - 6) / 0.64)
  assert k == pytest.approx(128.875)
  assert fm.budget_multiplier(1, 0.5, count_verifier=True) == pytest.approx(0.5)


@pytest.mark.parametrize("m, r", [(14, 0.16), (3.5, 2.0), (100, 0.01), (1, 1.0)])
def test_budget_multiplier_satisfies_the_flops_equation(m, r):
  """Fails if plugging k back into the FLOPs equations does not balance both sides."""
  p, d_pre = 3.0, 5.0
  d_inf = r * d_pre
  large = m * (6 * p * d_pre + 2 * p * d_inf)
  k = fm.budget_multiplier(m, r)
  assert 6 * p * d_pre + 2 * p * k * d_inf == pytest.approx(large)
  k = fm.budget_multiplier(m, r, count_verifier=True)
  assert 6 * p * d_pre + 4 * p * k * d_inf == pytest.approx(large)


@pytest.mark.parametrize("r", [0.0, -0.5])
@pytest.mark.parametrize("count_verifier", [False, True])
def test_budget_multiplier_rejects_non_positive_r(r, count_verifier):
  """Fails if R <= 0 gives a number instead of a ValueError."""
  with pytest.raises(ValueError, match="expected > 0"):
    fm.budget_multiplier(14, r, count_verifier=count_verifier)


def test_exact_multiplier_by_hand():
  """Fails if k != (large FLOPs + 6 (P_L - P_S) tokens / R) / small FLOPs per generation."""
  # (1000 + 6 * 100 * 4 / 0.5) / 100 = (1000 + 4800) / 100.
  assert fm.exact_multiplier(10, 110, 0.5, 1000.0, 4.0, 100.0) == pytest.approx(58.0)


def test_exact_multiplier_reduces_to_the_paper_count_at_two_flops_per_parameter():
  """Fails if 2·P FLOPs per token (the paper's count) does not give M + 3(M - 1)/R."""
  small, large, tokens, r = 10, 140, 7.0, 0.16
  k = fm.exact_multiplier(small, large, r, 2 * large * tokens, tokens, 2 * small * tokens)
  assert k == pytest.approx(fm.budget_multiplier(large / small, r))
  assert k == pytest.approx(257.75)


CURVE = {1: 0.2, 4: 0.6}


def test_accuracy_at_interpolates_in_log2_budget():
  """Fails if budget 2 (halfway from 1 to 4 in log2) is not 0.4, or grid points move."""
  assert fm.accuracy_at(CURVE, 2) == (pytest.approx(0.4), "")
  assert fm.accuracy_at(CURVE, 1) == (pytest.approx(0.2), "")
  assert fm.accuracy_at(CURVE, 4) == (pytest.approx(0.6), "")
  # Keys in any order; 4 is halfway from 2 to 8 in log2.
  assert fm.accuracy_at({8: 0.9, 2: 0.3}, 4)[0] == pytest.approx(0.3 + 0.6 / 2)


def test_accuracy_at_caps_above_the_grid_and_refuses_below_it():
  """Fails if a budget above the grid is not capped at the top accuracy, or one below gives one."""
  assert fm.accuracy_at(CURVE, 257.75) == (pytest.approx(0.6), "capped")
  assert fm.accuracy_at(CURVE, 4.5) == (pytest.approx(0.6), "capped")
  assert fm.accuracy_at(CURVE, 0.5) == (None, "below grid")
  assert fm.accuracy_at({2: 0.3, 8: 0.9}, 1.5) == (None, "below grid")
