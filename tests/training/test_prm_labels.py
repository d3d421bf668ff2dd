"""Tests of Monte-Carlo step labels, on a toy policy whose odds are known by hand.

The toy policy (`testing.bigram_policy`) continues a step delimiter with
"Answer: " and then writes the right final digit with probability p, a wrong
one otherwise, then ends. So the label of a step that ends with the delimiter
is, in expectation, exactly p; with p in {0, 1} it is exact for every draw.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest

from ttscale import testing
from ttscale.data.tokenizer import train_tokenizer
from ttscale.search import sampling
from ttscale.tasks.arith import ArithTask
from ttscale.training import prm_labels

TASK = ArithTask(max_ops=3)
QUESTION, ANSWER = "3+4", "7"
NUM_ROLLOUTS = 16


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
  return train_tokenizer(["3+4=7\nAnswer: 7", "8 9"], str(path))


def _ids(tokenizer, text: str) -> list[int]:
  return tokenizer.encode(text)


@functools.cache
def _policy(tokenizer_path: str, vocab_size: int, p_right: float, ids: tuple):
  newline, right, wrong, eos, *answer = ids
  chain = [newline, *answer]  # "\n" -> "A" -> ... -> " "
  transitions = {a: {b: 1.0} for a, b in zip(chain, chain[1:], strict=False)}
  transitions[chain[-1]] = {right: p_right, wrong: 1.0 - p_right}
  return testing.bigram_policy(transitions, vocab_size, default_next=eos)


def _policy_for(tokenizer, p_right: float):
  ids = (tokenizer.step_id, *_ids(tokenizer, "78"), tokenizer.eos_id,
         *_ids(tokenizer, "Answer: "))
  return _policy(str(tokenizer.fingerprint), tokenizer.vocab_size, p_right, ids)


def _settings(tokenizer, prefixes_per_part: int = 64,
              max_new_tokens: int = 16) -> prm_labels.RolloutSettings:
  return prm_labels.RolloutSettings(
      num_rollouts=NUM_ROLLOUTS, prefixes_per_part=prefixes_per_part, batch_size=256,
      seed=0, sampler_config=sampling.SamplerConfig(
          rule=sampling.SamplingRule(temperature=1.0), stop_at=sampling.StopAt.SOLUTION,
          max_new_tokens=max_new_tokens, step_id=tokenizer.step_id, eos_id=tokenizer.eos_id))


def _solution(tokenizer, text: str, ended: bool = True, question: str = QUESTION):
  prompt = [tokenizer.bos_id] + tokenizer.encode(TASK.prompt(question))
  return prm_labels.solution_to_label(prompt, np.array(_ids(tokenizer, text)), ended,
                                      tokenizer, TASK, ANSWER)


def _questions(count: int) -> list[str]:
  """Distinct questions (the toy policy ignores them; only distinct prefixes
  get rollouts of their own)."""
  digits = "34789"
  return [f"{digits[k // 25]}+{digits[k // 5 % 5]}+{digits[k % 5]}" for k in range(count)]


def _labels(tokenizer, solutions, p_right, parts_dir, prefixes_per_part=64,
            max_new_tokens=16):
  counts = prm_labels.count_correct_rollouts(
      _policy_for(tokenizer, p_right), tokenizer, TASK, solutions, [ANSWER] * len(solutions),
      _settings(tokenizer, prefixes_per_part, max_new_tokens), str(parts_dir),
      log=lambda _: None)
  return prm_labels.step_labels(solutions, counts["correct"], NUM_ROLLOUTS), counts


@pytest.mark.parametrize("p_right", [0.0, 1.0])
def test_labels_are_exact_when_the_policy_is_certain(tokenizer, tmp_path, p_right):
  right = _solution(tokenizer, "3+4=7\nAnswer: 7")
  wrong = _solution(tokenizer, "3+4=7\nAnswer: 8")
  labels, counts = _labels(tokenizer, [right, wrong], p_right, tmp_path)
  # Step 1 is rolled out; step 2 ends the solution: its label is the outcome.
  assert labels == [[p_right, 1.0], [p_right, 0.0]]
  assert set(counts["correct"]) == {(0, 0), (1, 0)}


def test_labels_estimate_the_policys_chance_of_success(tokenizer, tmp_path):
  p_right, num_solutions = 0.75, 64
  solutions = [_solution(tokenizer, "3+4=7\nAnswer: 7", question=q)
               for q in _questions(num_solutions)]
  labels, _ = _labels(tokenizer, solutions, p_right, tmp_path)
  first = np.array([row[0] for row in labels])
  assert set(np.unique(first * NUM_ROLLOUTS)) <= set(range(NUM_ROLLOUTS + 1))
  sigma = np.sqrt(p_right * (1 - p_right) / (NUM_ROLLOUTS * num_solutions))
  assert abs(first.mean() - p_right) < 4 * sigma
  # Different prefixes draw differently: not one count copied to all.
  assert len(np.unique(first)) > 1


def test_a_rollout_has_only_the_rest_of_the_solution_budget(tokenizer, tmp_path):
  # The prefix "3+4=7\n" uses 6 of the budget; "Answer: 7" and the end token
  # need 10 more. With 14 in all (8 left) the certain policy cannot write its
  # answer, although the part samples up to 16 tokens per rollout.
  solution = _solution(tokenizer, "3+4=7\nAnswer: 7")
  exact_fit, _ = _labels(tokenizer, [solution], 1.0, tmp_path / "a", max_new_tokens=16)
  one_short, _ = _labels(tokenizer, [solution], 1.0, tmp_path / "b", max_new_tokens=14)
  assert exact_fit[0][0] == 1.0 and one_short[0][0] == 0.0


def test_an_unfinished_solution_has_no_outcome_step(tokenizer, tmp_path):
  truncated = _solution(tokenizer, "3+4=7\nAnsw", ended=False)
  assert not truncated.correct and truncated.step_ends == [5]
  labels, _ = _labels(tokenizer, [truncated], 1.0, tmp_path)
  assert labels == [[1.0]]  # rolled out, not taken from the (missing) outcome


def test_parts_are_resumed_and_give_the_same_labels(tokenizer, tmp_path):
  solutions = [_solution(tokenizer, "3+4=7\nAnswer: 7", question=q) for q in _questions(12)]
  whole, _ = _labels(tokenizer, solutions, 0.5, tmp_path / "whole", prefixes_per_part=4)
  assert len(os.listdir(tmp_path / "whole")) == 3
  resumed_dir = tmp_path / "resumed"
  resumed_dir.mkdir()
  # As if killed after the first part: only its file is there.
  first = sorted(os.listdir(tmp_path / "whole"))[0]
  (resumed_dir / first).write_bytes((tmp_path / "whole" / first).read_bytes())
  resumed, counts = _labels(tokenizer, solutions, 0.5, resumed_dir, prefixes_per_part=4)
  assert counts["parts_resumed"] == 1
  assert resumed == whole


def test_a_repeated_prefix_is_rolled_out_once_and_shares_its_label(tokenizer, tmp_path):
  """Fails if identical prefixes of one question draw rollouts of their own
  (wasted), or if a repeat does not get its first occurrence's label, or if
  the same prefix of another question is merged with it."""
  same = [_solution(tokenizer, text) for text in
          ("3+4=7\nAnswer: 7", "3+4=7\nAnswer: 8", "3+4=7\n4+3=7\nAnswer: 7")]
  other = _solution(tokenizer, "3+4=7\nAnswer: 7", question=_questions(1)[0])
  labels, counts = _labels(tokenizer, [*same, other], 0.5, tmp_path)
  # Prefixes: "3+4=7\n" in all four (three of one question), "3+4=7\n4+3=7\n" once.
  assert (counts["num_prefixes"], counts["num_distinct_prefixes"]) == (5, 3)
  assert labels[0][0] == labels[1][0] == labels[2][0]
  assert counts["correct"][(0, 0)] == counts["correct"][(2, 0)]
  part = json.loads((tmp_path / "00000.json").read_text())
  assert len(part["num_correct"]) == 3


def test_a_part_of_other_prefixes_is_an_error(tokenizer, tmp_path):
  solutions = [_solution(tokenizer, "3+4=7\nAnswer: 7", question=q) for q in _questions(4)]
  _labels(tokenizer, solutions, 0.5, tmp_path / "a")
  saved = json.loads((tmp_path / "a" / "00000.json").read_text())
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "00000.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r"00000.json: written for another part \(prefixes "
                     r".*delete .*b$"):
    _labels(tokenizer, solutions[::-1], 0.5, tmp_path / "b")


def test_a_part_of_another_size_is_an_error(tokenizer, tmp_path):
  """Fails if a damaged part (its prefixes right, too few counts) is read."""
  solutions = [_solution(tokenizer, "3+4=7\nAnswer: 7", question=q) for q in _questions(4)]
  _labels(tokenizer, solutions, 0.5, tmp_path)
  saved = json.loads((tmp_path / "00000.json").read_text())
  (tmp_path / "00000.json").write_text(json.dumps({**saved, "num_correct": [1, 2]}))
  with pytest.raises(ValueError, match="00000.json: 2 counts for a part of 4"):
    _labels(tokenizer, solutions, 0.5, tmp_path)
