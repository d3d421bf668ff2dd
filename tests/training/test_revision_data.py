"""The revision model's training records (`training/revision_data.py`): the
policy's own data, as reference solutions or as its own samples."""

from __future__ import annotations

import numpy as np
import pytest

from ttscale.tasks.base import Example
from ttscale.training import revision_data

EXAMPLES = [Example(question=f"{i}+1", solution=f"{i}+1={i + 1}\nAnswer: {i + 1}",
                    answer=str(i + 1), level=1) for i in range(40)]


def test_policy_data_count_makes_the_fraction_of_all_records():
  assert revision_data.policy_data_count(30, 0.5) == 30
  assert revision_data.policy_data_count(30, 0.25) == 10
  assert revision_data.policy_data_count(30, 0.0) == 0


def test_reference_records_are_the_solutions_of_the_questions_after_first():
  """Fails if the reference records are not `count` consecutive training
  questions from `first`, with their reference solutions and no previous
  attempt."""
  records = revision_data.policy_data_records(EXAMPLES, 10, 8, holdout_seed=0,
                                              holdout_fraction=0.25)
  assert [r["question_index"] for r in records] == list(range(10, 18))
  assert all(r["target"] == EXAMPLES[r["question_index"]].solution and r["previous"] == []
             for r in records)
  assert sum(r["holdout"] for r in records) == 2
  with pytest.raises(ValueError, match="revision.policy_data_fraction"):
    revision_data.policy_data_records(EXAMPLES, 35, 8, holdout_seed=0, holdout_fraction=0.25)


def test_sample_records_are_the_policys_own_samples_right_or_wrong():
  """Fails if a sample record's target is not one of its question's samples,
  if it has a previous attempt, if it is not held out with its question, or
  if the draws favour right samples or a few questions."""
  examples = EXAMPLES[:4]
  texts = [[f"{q}+1={q + 1}\nAnswer: {q + 1}", f"{q}+1={q + 7}\nAnswer: {q + 7}"]
           for q in range(4)]
  records = revision_data.policy_sample_records(examples, texts, 400, holdout={2},
                                                rng=np.random.default_rng(0))
  assert len(records) == 400
  for record in records:
    q = record["question_index"]
    assert record["question"] == examples[q].question and record["previous"] == []
    assert record["target"] in texts[q] and record["holdout"] == (q == 2)
    assert record["source"] == "policy_data"
  wrong = np.mean([r["target"] == texts[r["question_index"]][1] for r in records])
  assert 0.4 < wrong < 0.6
  assert np.bincount([r["question_index"] for r in records], minlength=4).min() > 70
