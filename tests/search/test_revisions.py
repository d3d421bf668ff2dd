"""Tests of sequential revision chains: splits, chains on a tiny policy, rates.

Chains run the tiny real policy (`ttscale.testing.tiny_policy`, its vocabulary
sized to a small character tokenizer) at temperature 1. Every attempt is
checked against an independent route: the shared sampler called directly with
the contexts the chain should have built, and contexts written out from the
previous attempts' texts. Shapes are few (2 questions, 2 chains, a batch of 4,
6 new tokens) so that only a couple of sampler programs compile.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from ttscale import testing
from ttscale.data.tokenizer import train_tokenizer
from ttscale.models import Network
from ttscale.search import generate, revisions, sampling
from ttscale.search.budget import FlopsRate
from ttscale.tasks.arith import ArithTask

TASK = ArithTask()
QUESTIONS = ["3+4", "2*4-1"]
PARALLEL = 2
SEQUENTIAL = 6  # more than the 4 attempts a context shows
BATCH_SIZE = 4
MAX_NEW_TOKENS = 6
POLICY_SEED = 0


def _key(seed: int) -> jax.Array:
  # "rbg" keys: threefry programs take seconds to compile on CPU.
  return jax.random.key(seed, impl="rbg")


KEY = _key(3)


# ----------------------------------------------------------------- splits


def test_splits_of_16_are_the_papers_ratios():
  """Fails if a split is missing, out of order, or does not multiply to N."""
  assert revisions.splits(16) == [(1, 16), (2, 8), (4, 4), (8, 2), (16, 1)]
  assert revisions.splits(1) == [(1, 1)]
  assert revisions.splits(2) == [(1, 2), (2, 1)]


@pytest.mark.parametrize("budget", [12, 3, 0, -4])
def test_splits_reject_a_budget_that_is_not_a_power_of_two(budget):
  """Fails if a budget without an exact set of power-of-two splits is accepted."""
  with pytest.raises(ValueError, match=f"revision budget {budget}"):
    revisions.splits(budget)


GRID = [1, 2, 4, 8, 16]


def test_parse_splits_reads_s_x_p():
  """Fails if "SxP" is misread (e.g. s and p swapped)."""
  assert revisions.parse_splits(["4x4"], GRID) == [(4, 4)]
  assert revisions.parse_splits(["1x16", "8x2"], GRID) == [(1, 16), (8, 2)]


@pytest.mark.parametrize("text", ["3x5", "4by4", "4x", "x4", "0x4", "-2x8", "4x4x1", "2.0x8"])
def test_parse_splits_rejects_bad_splits_naming_the_field(text):
  """Fails if a malformed split, or one off the budget grid (3x5 = 15), is
  accepted, or if the error does not name the config field."""
  with pytest.raises(ValueError, match="sweep_revisions.splits") as error:
    revisions.parse_splits(["4x4", text], GRID)
  assert repr(text) in str(error.value)


# ----------------------------------------------------------------- chains


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
  return train_tokenizer(["3+4*2-1\n3+4=7\nAnswer: 7"], str(path))


@pytest.fixture(scope="module")
def model(tokenizer):
  config = dataclasses.replace(testing.TINY_CONFIG, vocab_size=tokenizer.vocab_size)
  return Network(*testing.tiny_policy(POLICY_SEED, config))


@pytest.fixture(scope="module")
def sampler_config(tokenizer):
  return sampling.SamplerConfig(
      rule=sampling.SamplingRule(temperature=1.0), stop_at=sampling.StopAt.SOLUTION,
      max_new_tokens=MAX_NEW_TOKENS, step_id=tokenizer.step_id, eos_id=tokenizer.eos_id)


def _run(model, tokenizer, sampler_config, sequential: int, key=KEY) -> revisions.Chains:
  return revisions.run_chains(
      model, tokenizer, TASK, QUESTIONS, sequential=sequential, parallel=PARALLEL,
      sampler_config=sampler_config, batch_size=BATCH_SIZE, key=key)


@pytest.fixture(scope="module")
def chains(model, tokenizer, sampler_config) -> revisions.Chains:
  return _run(model, tokenizer, sampler_config, SEQUENTIAL)


def _reference(model, sampler_config, contexts, copies: int, j: int):
  """The shared sampler called directly, as attempt j of a chain should call it."""
  return generate.sample_continuations(
      model, contexts, sampler_config=sampler_config, batch_size=BATCH_SIZE,
      key=jax.random.fold_in(KEY, j),
      width_multiple=revisions.CONTEXT_WIDTH_MULTIPLE, copies=copies)


def _summary(chains: revisions.Chains):
  return [[[(a.context, a.tokens.tolist(), a.ended, a.text) for a in chain]
           for chain in question] for question in chains.attempts]


def _context_by_hand(tokenizer, question: str, previous: list[str]) -> list[int]:
  """bos, the last 4 attempts, each one step per line and closed by an empty
  line, then the prompt."""
  shown = previous[-4:]
  text = "".join(
      "\n".join(line for line in t.split("\n") if line.strip()) + "\n\n" for t in shown
  ) + TASK.prompt(question)
  return [tokenizer.bos_id] + tokenizer.encode(text)


def test_every_question_gets_p_chains_of_s_attempts(chains, tokenizer):
  """Fails if a chain is missing or short, if an attempt's text or `ended` does
  not follow from its tokens, or if generated tokens are miscounted."""
  assert len(chains.attempts) == len(QUESTIONS)
  for question in chains.attempts:
    assert len(question) == PARALLEL
    assert all(len(chain) == SEQUENTIAL for chain in question)
  total = 0
  for question in chains.attempts:
    for chain in question:
      for a in chain:
        tokens = a.tokens.tolist()
        assert a.tokens.dtype == np.int32
        assert 1 <= len(tokens) <= MAX_NEW_TOKENS
        assert a.ended == (tokens[-1] == tokenizer.eos_id)
        assert tokenizer.eos_id not in tokens[:-1]
        assert a.text == tokenizer.decode([t for t in tokens if t != tokenizer.eos_id])
        total += len(tokens)
  assert chains.generated_tokens == total
  assert chains.flops.shape == (len(QUESTIONS),)


def test_first_attempts_are_ordinary_parallel_samples(chains, model, tokenizer,
                                                       sampler_config):
  """Fails if a chain's first attempt (so every chain with s = 1) is not the
  plain sampler's draw from the question's prompt with `fold_in(key, 0)`, in
  question-major, chain-minor order."""
  contexts = [revisions.context_tokens(tokenizer, TASK, q, []) for q in QUESTIONS]
  assert contexts[0] == [tokenizer.bos_id] + tokenizer.encode("3+4\n")
  reference = _reference(model, sampler_config, contexts, copies=PARALLEL, j=0)
  one = _run(model, tokenizer, sampler_config, sequential=1)
  for q in range(len(QUESTIONS)):
    for c in range(PARALLEL):
      expected = reference.tokens[q * PARALLEL + c].tolist()
      assert len(one.attempts[q][c]) == 1
      assert one.attempts[q][c][0].tokens.tolist() == expected, (q, c)
      assert one.attempts[q][c][0].context == contexts[q]
      assert chains.attempts[q][c][0].tokens.tolist() == expected, (q, c)
  # Chains draw independently: two chains of a question differ.
  assert any(one.attempts[q][0][0].tokens.tolist() != one.attempts[q][1][0].tokens.tolist()
             for q in range(len(QUESTIONS)))


def test_later_attempts_see_the_last_four_attempts_of_their_own_chain(
    chains, model, tokenizer, sampler_config):
  """Fails if attempt j > 0 is not drawn from its chain's revision context (the
  last 4 previous attempts of that chain, oldest first, then the question) with
  `fold_in(key, j)`, or if the recorded context is not the one sampled from."""
  for j in range(1, SEQUENTIAL):
    contexts = []
    for q, question in enumerate(QUESTIONS):
      for c in range(PARALLEL):
        previous = [a.text for a in chains.attempts[q][c][:j]]
        expected = _context_by_hand(tokenizer, question, previous)
        assert expected == revisions.context_tokens(tokenizer, TASK, question, previous)
        assert chains.attempts[q][c][j].context == expected, (q, c, j)
        contexts.append(expected)
    reference = _reference(model, sampler_config, contexts, copies=1, j=j)
    found = [chains.attempts[q][c][j].tokens.tolist()
             for q in range(len(QUESTIONS)) for c in range(PARALLEL)]
    assert found == [t.tolist() for t in reference.tokens], j
  # The window slid: the last attempt shows attempts 2..5 of its chain, not 1..5.
  last = chains.attempts[0][0][SEQUENTIAL - 1].context
  texts = [a.text for a in chains.attempts[0][0]]
  assert last == _context_by_hand(tokenizer, QUESTIONS[0], texts[1:SEQUENTIAL - 1])


def test_the_same_key_gives_the_same_chains(chains, model, tokenizer, sampler_config):
  """Fails if chains depend on anything but their inputs and key."""
  again = _run(model, tokenizer, sampler_config, SEQUENTIAL)
  assert _summary(again) == _summary(chains)
  np.testing.assert_array_equal(again.flops, chains.flops)
  other = _run(model, tokenizer, sampler_config, SEQUENTIAL, key=_key(4))
  assert _summary(other) != _summary(chains)


def test_flops_count_every_prefill_and_every_decoded_token(chains, model):
  """Fails if the first attempt's shared context is prefilled once per chain
  (or later contexts only once per question), if the last context token is
  counted as prefilled, or if any attempt's decoding is left out."""
  rate = FlopsRate.of(model.config)
  for q in range(len(QUESTIONS)):
    expected = 0.0
    first_context = chains.attempts[q][0][0].context
    expected += float(rate.decode(0, len(first_context) - 1))  # once for the question
    for chain in chains.attempts[q]:
      for j, a in enumerate(chain):
        if j > 0:
          expected += float(rate.decode(0, len(a.context) - 1))  # once per chain
        expected += float(rate.decode(len(a.context) - 1, len(a.tokens)))
    assert chains.flops[q] == pytest.approx(expected, rel=1e-6)
  # A cross-check without FlopsRate, token by token, for question 0's first chain
  # and the prefill: the counts above are the sums of per-token costs.
  config = model.config
  context = len(chains.attempts[0][0][0].context)
  prefill = sum(config.flops_per_token(c) for c in range(1, context))
  assert float(rate.decode(0, context - 1)) == pytest.approx(prefill, rel=1e-5)


def test_copies_of_a_context_sample_what_one_row_per_copy_samples(model, tokenizer,
                                                                 sampler_config):
  """Fails if rows that read their context as a shared prefix (`copies`)
  sample other tokens than rows that each hold the context themselves, with
  the same draws: the shared prefix changes what is read, not the result."""
  contexts = [revisions.context_tokens(tokenizer, TASK, q, []) for q in QUESTIONS]
  repeated = [c for c in contexts for _ in range(PARALLEL)]

  def sample(given, copies):
    return generate.sample_continuations(
        model, given, sampler_config=sampler_config, batch_size=BATCH_SIZE, key=KEY,
        width=16, copies=copies, shortest_first=False)

  shared, own = sample(contexts, PARALLEL), sample(repeated, 1)
  assert [t.tolist() for t in shared.tokens] == [t.tolist() for t in own.tokens]
  assert shared.ended.tolist() == own.ended.tolist()
  # Temperature 1 on a random policy: the copies of a context differ.
  assert shared.tokens[0].tolist() != shared.tokens[1].tolist()


def test_continuations_keep_the_callers_order_when_asked(model, tokenizer, sampler_config):
  """Fails if `shortest_first=False` still sorts the contexts: batch b draws
  with `fold_in(key, b)`, so a long context given first must get batch 0's
  draws, those it gets when sampled alone."""
  long, short = (revisions.context_tokens(tokenizer, TASK, q, []) for q in ("2*4-1", "3+4"))
  assert len(long) > len(short)

  def sample(contexts, shortest_first):
    return generate.sample_continuations(
        model, contexts, sampler_config=sampler_config, batch_size=BATCH_SIZE,
        key=KEY, width=16, copies=BATCH_SIZE, shortest_first=shortest_first)

  alone = [t.tolist() for t in sample([long], True).tokens]
  kept = sample([long, short], False)
  assert [t.tolist() for t in kept.tokens[:BATCH_SIZE]] == alone
  assert len(kept.tokens) == 2 * BATCH_SIZE
  # Sorted, the short context takes batch 0 and the long one batch 1's draws.
  short_alone = [t.tolist() for t in sample([short], True).tokens]
  sorted_ = sample([long, short], True)
  assert [t.tolist() for t in sorted_.tokens[BATCH_SIZE:]] == short_alone
