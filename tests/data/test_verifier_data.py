"""Tests of the verifier's view of a solution: its step ends and fixed-shape arrays."""

from __future__ import annotations

import numpy as np
import pytest

from ttscale.data.tokenizer import train_tokenizer
from ttscale.data.verifier_data import find_step_ends, verifier_arrays


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
  return train_tokenizer(["3+4=7\nAnswer: 7", "8 9"], str(path))


def test_find_step_ends_skips_blank_steps_and_an_unfinished_tail(tokenizer):
  tokens = tokenizer.encode("3+4=7\n\n \nAnswer: 7") + [tokenizer.eos_id]
  #                          0123456 7 89 ...
  assert find_step_ends(tokens, tokenizer) == [5, len(tokens) - 1]
  truncated = tokenizer.encode("3+4=7\nAnsw")
  assert find_step_ends(truncated, tokenizer) == [5]


def _record(prompt, tokens, step_ends, labels, ended, correct):
  return {"prompt": prompt, "tokens": tokens, "step_ends": step_ends,
          "mc_labels": labels, "ended": ended, "correct": correct}


def test_verifier_arrays_put_targets_at_step_ends():
  records = [_record([2, 5], [6, 7, 4, 8, 3], [2, 4], [0.5, 1.0], True, True),
             _record([2], [6, 4, 9], [1], [0.25], False, False)]
  steps = verifier_arrays(records, "steps", width=8)
  np.testing.assert_array_equal(steps["inputs"][0], [2, 5, 6, 7, 4, 8, 3, 0])
  np.testing.assert_array_equal(steps["token_mask"][1], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(steps["step_ends"], [[4, 6], [2, 0]])
  np.testing.assert_array_equal(steps["step_mask"], [[1, 1], [1, 0]])
  np.testing.assert_array_equal(steps["targets"], [[0.5, 1.0], [0.25, 0.0]])
  # The ORM learns outcomes of finished solutions only, at their last step.
  outcome = verifier_arrays(records, "outcome", width=8)
  np.testing.assert_array_equal(outcome["step_ends"], [[6]])
  np.testing.assert_array_equal(outcome["targets"], [[1.0]])
  with pytest.raises(ValueError, match="does not fit width=4"):
    verifier_arrays(records, "steps", width=4)
  with pytest.raises(ValueError, match="verifier target 'value'"):
    verifier_arrays(records, "value")
