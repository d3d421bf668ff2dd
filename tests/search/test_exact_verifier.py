"""Tests of the exact verifier: its scores are the task's exact labels, by hand
and inside the compiled search programs.

The search tests use a bigram policy over the real character tokenizer that
writes solutions of "1+2" with slips: the first step is "1+2=3" or "1+2=4",
the answer line "Answer: 3" or "Answer: 4", in any order and number, so that
every returned candidate can be judged by the task's own `step_labels`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttscale import testing
from ttscale.data.tokenizer import Tokenizer, train_tokenizer
from ttscale.search import beam, best_of_n, common, sampling, step_success
from ttscale.search.exact_verifier import ExactVerifier
from ttscale.tasks import get_task
from ttscale.tasks.arith import ArithTask
from ttscale.tasks.base import Example

TASK = ArithTask(min_ops=1, max_ops=3, max_operand=9, max_multiplier=3, max_abs_value=99)
QUESTION = "1+2"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
  path = tmp_path_factory.mktemp("tokenizer") / "arith.model"
  train_tokenizer([TASK.prompt(e.question) + e.solution for e in TASK.generate(300, 0)], path)
  return Tokenizer.load(path)


@pytest.fixture(scope="module")
def verifier(tokenizer) -> ExactVerifier:
  return ExactVerifier(tokenizer, TASK, [QUESTION, "4*2-1"])


@pytest.mark.parametrize("solution, expected", [
    ("1+2=3\nAnswer: 3", 1.0),      # all right
    ("1+2=3\n", 1.0),               # a right prefix
    ("1+2=4\nAnswer: 4", 0.0),      # a slip, carried on consistently
    ("1+2=3\nAnswer: 4", 0.0),      # a wrong answer line
    ("Answer: 3", 0.0),             # the answer without the step
    ("1+2=3\nAnswer: 3\nAnswer: 3", 0.0),  # past the answer line
    ("", 0.0),                      # no step
])
def test_scores_are_the_task_exact_labels_on_hand_made_solutions(verifier, solution, expected):
  assert verifier.score_texts(QUESTION, [solution])[0] == expected
  labels = TASK.step_labels(QUESTION, solution)
  assert expected == float(bool(labels) and all(labels))


def test_a_task_without_exact_labels_is_refused(tokenizer):
  with pytest.raises(ValueError, match="task 'math' has no exact step labels"):
    ExactVerifier(tokenizer, get_task({"name": "math", "few_shot_file": ""}), ["1+1"])


def _slip_policy(tokenizer: Tokenizer):
  """Bigram policy writing "1+2=3" / "1+2=4" steps and "Answer: 3/4" lines."""
  piece = {c: tokenizer.encode(c)[0] for c in "12+=34Answer: "}
  step, eos = tokenizer.step_id, tokenizer.eos_id
  chain = "Answer: "
  transitions = {step: {piece["1"]: 0.5, piece["A"]: 0.5}, piece["1"]: {piece["+"]: 1.0},
                 piece["+"]: {piece["2"]: 1.0}, piece["2"]: {piece["="]: 1.0},
                 piece["="]: {piece["3"]: 0.5, piece["4"]: 0.5},
                 piece[" "]: {piece["3"]: 0.5, piece["4"]: 0.5},
                 piece["3"]: {step: 0.5, eos: 0.5}, piece["4"]: {step: 0.5, eos: 0.5}}
  for a, b in zip(chain, chain[1:], strict=False):
    transitions[piece[a]] = {piece[b]: 1.0}
  return testing.bigram_policy(transitions, tokenizer.vocab_size, default_next=eos)


@functools.cache
def _search(tokenizer, verifier, method: str):
  policy = _slip_policy(tokenizer)
  values = np.zeros(policy.config.vocab_size, np.float32)
  prm_graphdef, prm_params = nnx.split(testing.LastContentValueModel(
      values, (tokenizer.step_id, tokenizer.eos_id)))
  models = common.SearchModels(policy.graphdef, prm_graphdef, policy.config, policy.config,
                               exact_verifier=verifier)
  prompt = list(verifier.prompt_tokens(QUESTION))
  prompts, lengths = jnp.asarray([prompt]), jnp.asarray([len(prompt)])
  rule = sampling.SamplingRule(1.0)
  if method == "best_of_n":
    config = sampling.SamplerConfig(rule=rule, stop_at=sampling.StopAt.SOLUTION,
                                    max_new_tokens=40, step_id=tokenizer.step_id,
                                    eos_id=tokenizer.eos_id)
    program = functools.partial(best_of_n.best_of_n, models, num_samples=8,
                                sampler_config=config)
  else:
    config = beam.BeamConfig(budget=8, beam_width=8 if method == "beam_keep_one" else 2,
                             lookahead=1 if method == "lookahead" else 0,
                             max_rounds=3, max_new_tokens=40, max_step_tokens=12, rule=rule,
                             step_id=tokenizer.step_id, eos_id=tokenizer.eos_id,
                             group_size=2 if method == "dvts" else 0)
    program = functools.partial(beam.beam_search, models, config=config)
  out = jax.jit(program)(policy.params, prm_params, prompts, lengths, jax.random.key(3))
  return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("method", ["best_of_n", "beam", "lookahead", "dvts"])
def test_search_programs_score_candidates_by_the_exact_labels(tokenizer, verifier, method):
  out = _search(tokenizer, verifier, method)
  texts = [tokenizer.decode([int(t) for t in out.tokens[r, :out.lengths[r]]
                             if t != tokenizer.eos_id]) for r in range(8)]
  expected = [float(bool(labels) and all(labels))
              for labels in (TASK.step_labels(QUESTION, t) for t in texts)]
  if method != "lookahead":  # lookahead scores at the end of a rollout, not of the row
    np.testing.assert_array_equal(out.scores, expected)
  assert 0.0 < np.mean(expected) < 1.0 or method != "best_of_n", \
      "best-of-N must draw both right and wrong solutions here"
  # The exact verifier is an oracle: no verifier FLOPs beyond the policy's.
  assert np.all(out.flops > 0)


def test_tree_search_with_the_exact_verifier_continues_only_right_prefixes(tokenizer,
                                                                         verifier):
  """With a perfect verifier and one beam kept (M = N), a wrong live prefix is
  never kept while a right one exists: every row that went past its first
  step started "1+2=3" (rows that finished in the first round stay as they
  were)."""
  out = _search(tokenizer, verifier, "beam_keep_one")
  texts = [tokenizer.decode([int(t) for t in out.tokens[r, :out.lengths[r]]
                             if t != tokenizer.eos_id]) for r in range(8)]
  continued = [TASK.split_steps(t) for t in texts if len(TASK.split_steps(t)) > 1]
  assert continued, "this seed must continue some rows past the first step"
  assert all(steps[0] == "1+2=3" for steps in continued)


def test_step_success_rates_of_the_slip_policy(tokenizer):
  """After the prompt the slip policy writes "1+2=3" with chance 1/4 (a step
  starting "1", then "3"); after "1+2=3" it writes "Answer: 3" with 1/4."""
  example = Example(QUESTION, "1+2=3\nAnswer: 3", "3", 1)
  rates = step_success.step_success_rates(
      _slip_policy(tokenizer), tokenizer, TASK, [example], num_samples=256,
      rule=sampling.SamplingRule(1.0), max_step_tokens=12, batch_size=256, seed=0)
  assert len(rates) == 1 and len(rates[0]) == 2
  # 256 draws of p = 1/4: standard error 0.027.
  np.testing.assert_allclose(rates[0], [0.25, 0.25], atol=0.09)


def test_step_success_rates_need_exact_labels(tokenizer):
  math_task = get_task({"name": "math", "few_shot_file": ""})
  with pytest.raises(ValueError, match="exact step labels"):
    step_success.step_success_rates(
        _slip_policy(tokenizer), tokenizer, math_task, [Example("1+1", "2", "2", 1)],
        num_samples=2, rule=sampling.SamplingRule(1.0), max_step_tokens=4,
        batch_size=2, seed=0)
