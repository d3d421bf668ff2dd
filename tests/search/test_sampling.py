"""Tests of the batched sampler: where rows stop, and what the cache says after.

Stopping is checked on the successor toy model (`ttscale.testing`), whose
continuation of a pending token t is t+1, t+2, ...: every length, token and
cache slot below is computed by hand. Everything else runs the tiny real
policy and compares two routes (cached sampling vs a full-forward argmax loop,
one call vs two, a batch vs a row alone).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttscale import testing
from ttscale.models import init_cache, policy_extend_fn, policy_forward_fn
from ttscale.models.kv_cache import continue_shared
from ttscale.search import sampling
from ttscale.search.sampling import SamplerConfig, SamplingRule, StopAt

VOCAB = testing.TINY_CONFIG.vocab_size


def _key(seed: int) -> jax.Array:
  # "rbg" keys: threefry programs take seconds to compile on CPU.
  return jax.random.key(seed, impl="rbg")


# ----------------------------------------------------------------- toy model

TOY_STEP_ID, TOY_EOS_ID = 5, 9
TOY_BUDGET = 10
TOY_LOGPROB = testing.successor_logprob(VOCAB)


@functools.cache
def _toy_sampler(stop_at: StopAt):
  config = SamplerConfig(rule=SamplingRule(temperature=0.0), stop_at=stop_at,
                         max_new_tokens=TOY_BUDGET, step_id=TOY_STEP_ID,
                         eos_id=TOY_EOS_ID)
  extend = testing.successor_extend_fn(VOCAB)
  return jax.jit(lambda cache, pending, active: sampling.sample(
      extend, None, cache, pending, active, _key(0), config))


def _toy_run(stop_at: StopAt, pending, active=None, context: int = 0,
             free_slots: int | None = None) -> sampling.SampleOutput:
  """Samples from the toy model after `context` tokens already in every row.

  `free_slots` fills the cache with context up to that many free slots.
  """
  batch = len(pending)
  cache = init_cache(testing.TINY_CONFIG, batch, 2 * TOY_BUDGET)
  if free_slots is not None:
    context = cache.max_slots - free_slots
  # The toy model reads no keys or values: context is slots and positions.
  cache = cache.replace(
      slot_valid=jnp.asarray(np.broadcast_to(np.arange(cache.max_slots) < context,
                                             (batch, cache.max_slots))),
      next_position=jnp.full((batch,), context, jnp.int32),
      write_index=jnp.asarray(context, jnp.int32))
  active = np.ones(batch, bool) if active is None else np.asarray(active)
  return _toy_sampler(stop_at)(cache, jnp.asarray(pending, jnp.int32),
                               jnp.asarray(active))


def _padded(rows: list[list[int]], width: int = TOY_BUDGET) -> np.ndarray:
  return np.array([row + [0] * (width - len(row)) for row in rows])


def _expected_logprobs(lengths) -> np.ndarray:
  return np.where(np.arange(TOY_BUDGET)[None, :] < np.asarray(lengths)[:, None],
                  TOY_LOGPROB, 0.0)


def test_stop_at_step_stops_every_row_at_its_own_delimiter():
  # Step delimiter 5, eos 9: from 2 the row reaches 5 after 3 tokens; from 7
  # it meets eos first; from 4 it stops at once; from 12 it wraps past 0.
  out = _toy_run(StopAt.STEP, pending=[2, 7, 4, 12])
  np.testing.assert_array_equal(out.tokens, _padded([
      [3, 4, 5],
      [8, 9],
      [5],
      [13, 14, 15, 0, 1, 2, 3, 4, 5],
  ]))
  np.testing.assert_array_equal(out.lengths, [3, 2, 1, 9])
  np.testing.assert_array_equal(out.ended_solution, [False, True, False, False])
  np.testing.assert_array_equal(out.truncated, [False] * 4)
  np.testing.assert_array_equal(out.pending, [5, 9, 5, 5])
  np.testing.assert_allclose(out.logprobs, _expected_logprobs([3, 2, 1, 9]), atol=1e-6)
  # The stop token stays pending: slots hold the old pending token and all
  # sampled tokens but the last, one per trip of the longest row.
  assert int(out.cache.write_index) == 9
  np.testing.assert_array_equal(out.cache.next_position, [3, 2, 1, 9])
  np.testing.assert_array_equal(
      out.cache.slot_valid,
      np.arange(out.cache.max_slots)[None, :] < np.array([3, 2, 1, 9])[:, None])


def test_stop_at_solution_passes_delimiters_and_truncates_at_the_budget():
  out = _toy_run(StopAt.SOLUTION, pending=[2, 10, 8, 4])
  np.testing.assert_array_equal(out.tokens, _padded([
      [3, 4, 5, 6, 7, 8, 9],                   # past the delimiter 5, to eos
      [11, 12, 13, 14, 15, 0, 1, 2, 3, 4],     # eos is 15 tokens away: budget
      [9],
      [5, 6, 7, 8, 9],
  ]))
  np.testing.assert_array_equal(out.lengths, [7, 10, 1, 5])
  np.testing.assert_array_equal(out.ended_solution, [True, False, True, True])
  np.testing.assert_array_equal(out.truncated, [False, True, False, False])
  np.testing.assert_array_equal(out.pending, [9, 4, 9, 9])
  np.testing.assert_allclose(out.logprobs, _expected_logprobs([7, 10, 1, 5]), atol=1e-6)
  assert int(out.cache.write_index) == 10


def test_rows_stop_truncated_when_the_cache_runs_out_of_slots():
  # 4 free slots: 4 trips for everyone.
  out = _toy_run(StopAt.SOLUTION, pending=[2, 10, 8, 6], free_slots=4)
  np.testing.assert_array_equal(out.tokens, _padded([
      [3, 4, 5, 6],
      [11, 12, 13, 14],
      [9],
      [7, 8, 9],
  ]))
  np.testing.assert_array_equal(out.lengths, [4, 4, 1, 3])
  np.testing.assert_array_equal(out.truncated, [True, True, False, False])
  np.testing.assert_array_equal(out.ended_solution, [False, False, True, True])
  assert int(out.cache.write_index) == out.cache.max_slots
  assert bool(out.cache.slot_valid[0].all())
  np.testing.assert_array_equal(out.cache.slot_valid[:, -4:], [
      [True, True, True, True],
      [True, True, True, True],
      [True, False, False, False],
      [True, True, True, False],
  ])


def test_inactive_rows_sample_nothing_and_keep_their_state():
  out = _toy_run(StopAt.STEP, pending=[2, 7, 4, 12], active=[True, False, True, False],
                 context=2)
  np.testing.assert_array_equal(out.tokens, _padded([[3, 4, 5], [], [5], []]))
  np.testing.assert_array_equal(out.lengths, [3, 0, 1, 0])
  np.testing.assert_allclose(out.logprobs, _expected_logprobs([3, 0, 1, 0]), atol=1e-6)
  np.testing.assert_array_equal(out.ended_solution, [False] * 4)
  np.testing.assert_array_equal(out.truncated, [False] * 4)
  np.testing.assert_array_equal(out.pending, [5, 7, 5, 12])
  # Every row keeps its 2 context slots; the 3 trips were used by rows 0 and 2 only.
  assert int(out.cache.write_index) == 5
  np.testing.assert_array_equal(out.cache.next_position, [5, 2, 3, 2])
  np.testing.assert_array_equal(out.cache.slot_valid[:, :5], [
      [True, True, True, True, True],
      [True, True, False, False, False],
      [True, True, True, False, False],
      [True, True, False, False, False],
  ])
  assert not out.cache.slot_valid[:, 5:].any()


# ----------------------------------------------------------- tiny real model

# A policy seed and ids for which the greedy continuations of PROMPTS differ
# in how they end: (1 8 1 8 0 0 15), (1 10 15), (5 3 8 3 1 8 3 1 ...): a row
# whose first step is the delimiter alone, one that ends within its second
# step, one that runs out of budget.
POLICY_SEED = 2
STEP_ID, EOS_ID = 1, 15
BUDGET = 8
PROMPTS = [[1, 2, 3, 4, 5], [6, 7, 8], [9]]  # left-padded into one batch
PROMPT_WIDTH = 5
MAX_SLOTS = PROMPT_WIDTH + 2 * BUDGET        # room for two calls of BUDGET trips

GREEDY = SamplerConfig(SamplingRule(temperature=0.0), StopAt.SOLUTION, BUDGET,
                       STEP_ID, EOS_ID)
GREEDY_STEP = SamplerConfig(SamplingRule(temperature=0.0), StopAt.STEP, BUDGET,
                            STEP_ID, EOS_ID)


def _params():
  return testing.tiny_policy(POLICY_SEED)[1]


@functools.cache
def _prefill_fn():
  graphdef, _, config = testing.tiny_policy(POLICY_SEED)
  extend = policy_extend_fn(graphdef)

  @jax.jit
  def prefill(params, prompts, lengths):
    cache = init_cache(config, prompts.shape[0], MAX_SLOTS)
    return sampling.prefill(extend, params, cache, prompts, lengths)

  return prefill


@functools.cache
def _sample_fn(config: SamplerConfig):
  extend = policy_extend_fn(testing.tiny_policy(POLICY_SEED)[0])
  return jax.jit(lambda params, cache, pending, active, rng: sampling.sample(
      extend, params, cache, pending, active, rng, config))


def _prefilled(prompts: list[list[int]]):
  """(cache, pending) after prefilling `prompts`, left-padded to their longest."""
  width = max(map(len, prompts))
  padded = np.array([[0] * (width - len(p)) + p for p in prompts], np.int32)
  lengths = np.array([len(p) for p in prompts], np.int32)
  return _prefill_fn()(_params(), jnp.asarray(padded), jnp.asarray(lengths))


def _sample(config: SamplerConfig, cache, pending, active=None, seed: int = 0):
  if active is None:
    active = jnp.ones(pending.shape, bool)
  return _sample_fn(config)(_params(), cache, pending, active, _key(seed))


@pytest.fixture(scope="module")
def greedy_out() -> sampling.SampleOutput:
  return _sample(GREEDY, *_prefilled(PROMPTS))


def _continuations(out: sampling.SampleOutput) -> list[list[int]]:
  return [row[:n].tolist() for row, n in zip(np.asarray(out.tokens),
                                             np.asarray(out.lengths), strict=True)]


def _argmax_reference(prompts, config: SamplerConfig):
  """Greedy decoding by re-running the whole forward pass on growing rows.

  Returns:
    (continuations, logprobs): per row, the argmax tokens up to and including
    the first stop token (or `max_new_tokens` of them), and their
    log-softmax values.
  """
  forward = jax.jit(policy_forward_fn(testing.tiny_policy(POLICY_SEED)[0]))
  width = max(map(len, prompts)) + config.max_new_tokens
  rows = [list(p) for p in prompts]
  continuations = [[] for _ in prompts]
  logprobs = [[] for _ in prompts]
  running = [True] * len(prompts)
  stops = {config.eos_id}
  if config.stop_at == StopAt.STEP:
    stops.add(config.step_id)
  for _ in range(config.max_new_tokens):
    # Rows start at column 0, right-padded: causal attention ignores the padding.
    tokens = np.array([row + [0] * (width - len(row)) for row in rows], np.int32)
    positions = np.broadcast_to(np.arange(width), tokens.shape)
    log_probs = np.asarray(jax.nn.log_softmax(forward(
        _params(), tokens, positions, np.ones_like(tokens))))
    for b, row in enumerate(rows):
      if not running[b]:
        continue
      last = len(row) - 1
      token = int(np.argmax(log_probs[b, last]))
      row.append(token)
      continuations[b].append(token)
      logprobs[b].append(log_probs[b, last, token])
      running[b] = token not in stops
  return continuations, logprobs


def test_greedy_sampling_equals_an_argmax_loop_over_the_full_forward_pass(greedy_out):
  continuations, logprobs = _argmax_reference(PROMPTS, GREEDY)
  assert _continuations(greedy_out) == continuations
  for row, row_logprobs in enumerate(logprobs):
    np.testing.assert_allclose(greedy_out.logprobs[row, :len(row_logprobs)],
                               row_logprobs, rtol=1e-4, atol=1e-4)
  ended = [c[-1] == EOS_ID for c in continuations]
  np.testing.assert_array_equal(greedy_out.ended_solution, ended)
  np.testing.assert_array_equal(
      greedy_out.truncated, [not e and len(c) == BUDGET
                             for e, c in zip(ended, continuations, strict=True)])
  # The check has teeth only if rows differ in how they end.
  assert any(ended) and not all(ended), "pick EOS_ID anew for this policy"


def test_prefill_of_left_padded_prompts_matches_each_prompt_alone(greedy_out):
  _, pending = _prefilled(PROMPTS)
  np.testing.assert_array_equal(pending, [p[-1] for p in PROMPTS])
  batched = _continuations(greedy_out)
  for row, prompt in enumerate(PROMPTS[1:], start=1):  # the left-padded rows
    # The prompt without padding, in every row (the sampler's compiled shape).
    alone = _sample(GREEDY, *_prefilled([prompt] * len(PROMPTS)))
    assert _continuations(alone) == [batched[row]] * len(PROMPTS), f"prompt {prompt}"
    np.testing.assert_allclose(alone.logprobs[0], greedy_out.logprobs[row],
                               rtol=1e-4, atol=1e-4)


def test_two_greedy_steps_continue_into_the_greedy_solution(greedy_out):
  first = _sample(GREEDY_STEP, *_prefilled(PROMPTS))
  still_going = ~first.ended_solution & ~first.truncated
  second = _sample(GREEDY_STEP, first.cache, first.pending, still_going)
  assert bool((first.pending == STEP_ID).any()), "pick STEP_ID anew for this policy"
  assert int(second.lengths.sum()) > 0
  np.testing.assert_array_equal(second.pending, np.where(
      second.lengths > 0, second.pending, first.pending))
  solution = _continuations(greedy_out)
  solution_logprobs = np.asarray(greedy_out.logprobs)
  for row, (one, two) in enumerate(zip(_continuations(first), _continuations(second),
                                       strict=True)):
    joined = (one + two)[:BUDGET]
    assert joined == solution[row][:len(joined)], f"row {row}"
    joined_logprobs = np.concatenate([first.logprobs[row, :len(one)],
                                      second.logprobs[row, :len(two)]])[:BUDGET]
    np.testing.assert_allclose(joined_logprobs, solution_logprobs[row, :len(joined)],
                               rtol=1e-4, atol=1e-4)


def test_gather_rows_gives_every_copy_the_original_continuation(greedy_out):
  indices = jnp.array([2, 0, 2])
  cache, pending = sampling.gather_rows(_prefilled(PROMPTS), indices)
  copies = _sample(GREEDY, cache, pending)
  original = _continuations(greedy_out)
  assert _continuations(copies) == [original[i] for i in indices.tolist()]
  np.testing.assert_allclose(copies.logprobs, np.asarray(greedy_out.logprobs)[indices],
                             rtol=1e-5, atol=1e-5)


def test_gather_rows_moves_rows_and_keeps_the_shared_prefix_they_read():
  context = init_cache(testing.TINY_CONFIG, 2, 4).replace(
      slot_valid=jnp.array([[True, True, False, False], [True, False, False, False]]))
  cache = continue_shared(context, 3, 5)
  cache = cache.replace(next_position=jnp.arange(6, dtype=jnp.int32))
  moved = sampling.gather_rows(cache, jnp.array([2, 1, 0, 5, 5, 3]))
  assert moved.next_position.tolist() == [2, 1, 0, 5, 5, 3]
  # The prefix has a row per group of 3 rows, not per row: taken whole.
  assert moved.prefix.slot_valid.shape == (2, 4)
  np.testing.assert_array_equal(moved.prefix.slot_valid, context.slot_valid)


def test_random_sampling_is_a_function_of_the_rng():
  config = SamplerConfig(SamplingRule(temperature=1.0), StopAt.SOLUTION, BUDGET,
                         STEP_ID, EOS_ID)
  cache, pending = _prefilled(PROMPTS)
  first = _sample(config, cache, pending, seed=1)
  again = _sample(config, cache, pending, seed=1)
  other = _sample(config, cache, pending, seed=2)
  np.testing.assert_array_equal(first.tokens, again.tokens)
  np.testing.assert_array_equal(first.logprobs, again.logprobs)
  assert not np.array_equal(first.tokens, other.tokens)


def _draws(rule: SamplingRule, logits: np.ndarray, num_draws: int) -> np.ndarray:
  """int32 [num_draws, batch]: independent draws of `rule` from `logits` [batch, vocab]."""
  batch, vocab = logits.shape
  tiled = jnp.broadcast_to(jnp.asarray(logits), (num_draws, batch, vocab))
  draws = jax.jit(rule)(tiled.reshape(num_draws * batch, vocab), _key(0))
  return np.asarray(draws).reshape(num_draws, batch)


def test_a_tiny_top_p_always_draws_the_argmax():
  logits = np.random.default_rng(0).normal(size=(8, VOCAB)).astype(np.float32)
  draws = _draws(SamplingRule(temperature=1.0, top_p=1e-4), logits, num_draws=64)
  np.testing.assert_array_equal(draws, np.broadcast_to(logits.argmax(-1), draws.shape))


def test_top_p_keeps_the_smallest_prefix_of_tokens_reaching_p():
  # Probabilities 0.4, 0.3, 0.2, 0.1: the mass before token 2 is 0.7 >= 0.5,
  # so only tokens 0 and 1 remain, renormalised to 4/7 and 3/7.
  logits = np.log(np.array([[0.4, 0.3, 0.2, 0.1]], np.float32))
  draws = _draws(SamplingRule(temperature=1.0, top_p=0.5), logits, num_draws=4000)
  assert set(np.unique(draws).tolist()) == {0, 1}
  assert abs(np.mean(draws == 0) - 4 / 7) < 0.03


def test_sampling_rule_rejects_negative_temperature():
  with pytest.raises(ValueError, match="temperature=-0.5"):
    SamplingRule(temperature=-0.5)


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5])
def test_sampling_rule_rejects_top_p_outside_the_unit_interval(top_p):
  with pytest.raises(ValueError, match=f"top_p={top_p}"):
    SamplingRule(top_p=top_p)


def test_solutions_begun_in_a_half_cache_end_as_in_one_cache(greedy_out):
  """Fails if the rows still running after the first part lose or repeat a
  token when the cache grows, if a row that ended there samples again, or
  if lengths, ends and truncation are not those of one `sample`."""
  graphdef, _, config = testing.tiny_policy(POLICY_SEED)
  extend = policy_extend_fn(graphdef)
  first_tokens = 4  # row 1 ends within it (3 tokens); rows 0 and 2 go on

  @jax.jit
  def run(params, prompts, lengths, rng):
    cache = init_cache(config, prompts.shape[0], PROMPT_WIDTH + first_tokens)
    cache, pending = sampling.prefill(extend, params, cache, prompts, lengths)
    return sampling.sample_in_two_caches(extend, params, cache, pending,
                                         jnp.ones(pending.shape, bool), rng, GREEDY,
                                         first_tokens, MAX_SLOTS)

  padded = np.array([[0] * (PROMPT_WIDTH - len(p)) + p for p in PROMPTS], np.int32)
  out = run(_params(), padded, np.array([len(p) for p in PROMPTS], np.int32), _key(0))
  assert out.tokens.shape == (len(PROMPTS), BUDGET) and out.cache.max_slots == MAX_SLOTS
  assert _continuations(out) == _continuations(greedy_out)
  assert 0 < min(out.lengths) < first_tokens < max(out.lengths)
  np.testing.assert_array_equal(out.tokens, greedy_out.tokens)
  np.testing.assert_allclose(out.logprobs, greedy_out.logprobs, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(out.ended_solution, greedy_out.ended_solution)
  np.testing.assert_array_equal(out.truncated, greedy_out.truncated)


def test_only_whole_solutions_of_64_tokens_or_more_start_in_a_half_cache():
  wide = dataclasses.replace(GREEDY, max_new_tokens=128)
  assert sampling.first_cache_tokens(wide) == 64
  assert sampling.first_cache_tokens(GREEDY) == 0                                  # 8 tokens
  assert sampling.first_cache_tokens(dataclasses.replace(wide, stop_at=StopAt.STEP)) == 0
