"""The jitted batched sampler that every search method calls.

One `lax.while_loop` decodes one token per row per trip, at fixed shapes. Each
row stops on its own: at the end of its `steps`-th step (`StopAt.STEP`: the
step delimiter or end-of-solution token) or at the end of the solution
(`StopAt.SOLUTION`: end-of-solution only), or when its token budget or the
cache runs out.

The sampler continues from any state: it takes a `KVCache` and, per row, the
*pending* token — the last token of the row's context, not yet written to the
cache. A prompt is prefilled without its last token (`prefill`), which then
becomes the pending token; after sampling, the token that ended a row is
pending. So a beam can be continued, re-ordered with `gather_rows`, or
extended by other rows of different lengths, without re-reading its prefix.

The model comes in as a callable, an `ExtendFn` `(params, tokens,
token_valid, cache) -> (logits, cache)` (`ttscale.models.policy_extend_fn`
makes one); the caller jits.
"""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp
from flax import struct

from ttscale.models.kv_cache import KVCache, SharedPrefix
from ttscale.models.network import ExtendFn


class StopAt(enum.Enum):
  STEP = "step"          # stop a row at the step delimiter or end of solution
  SOLUTION = "solution"  # stop a row at end of solution only


@dataclasses.dataclass(frozen=True)
class SamplingRule:
  """Temperature sampling with optional nucleus (top-p); temperature 0 is greedy."""
  temperature: float = 1.0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature}: expected >= 0")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p}: expected in (0, 1]")

  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    """Draws int32 [batch] tokens from float logits [batch, vocab]."""
    if self.temperature == 0.0:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / self.temperature
    if self.top_p < 1.0:
      sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
      probs = jax.nn.softmax(sorted_logits, axis=-1)
      # Mass strictly before each token; keep tokens whose preceding mass < p.
      mass_before = jnp.cumsum(probs, axis=-1) - probs
      kept = jnp.where(mass_before < self.top_p, sorted_logits, jnp.inf)
      threshold = jnp.min(kept, axis=-1, keepdims=True)
      logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static settings of one compiled sampling program."""
  rule: SamplingRule
  stop_at: StopAt
  max_new_tokens: int
  step_id: int
  eos_id: int
  steps: int = 1             # with StopAt.STEP: step delimiters a row samples before stopping


@struct.dataclass
class SampleOutput:
  tokens: jax.Array          # int32: [batch, max_new_tokens] sampled tokens, 0 after a row stops
  logprobs: jax.Array        # float32: [batch, max_new_tokens] log-prob at temperature 1
  lengths: jax.Array         # int32: [batch] tokens sampled per row (the stop token included)
  ended_solution: jax.Array  # bool: [batch] the row sampled the end-of-solution token
  truncated: jax.Array       # bool: [batch] the row stopped for lack of tokens or cache slots
  cache: KVCache             # the cache after sampling (stop tokens not yet written)
  pending: jax.Array         # int32: [batch] each row's last token, not yet in the cache


@struct.dataclass
class _LoopState:
  step: jax.Array            # int32: [] decode trips done
  cache: KVCache
  pending: jax.Array         # int32: [batch] token to feed next
  running: jax.Array         # bool: [batch] row still sampling
  tokens: jax.Array          # int32: [batch, max_new_tokens]
  logprobs: jax.Array        # float32: [batch, max_new_tokens]
  lengths: jax.Array         # int32: [batch]
  ended_solution: jax.Array  # bool: [batch]
  steps_left: jax.Array      # int32: [batch] step delimiters still to sample
  rng: jax.Array             # PRNG key


def sample(extend_fn: ExtendFn, params, cache: KVCache, pending: jax.Array,
           active: jax.Array, rng: jax.Array,
           config: SamplerConfig) -> SampleOutput:
  """Samples a continuation for every active row, each stopping on its own.

  Args:
    extend_fn: the model, `(params, tokens [B, T], token_valid [B, T], cache)
      -> (logits [B, T, vocab], cache)`.
    params: the model's parameters, passed through to `extend_fn`.
    cache: context so far; needs `max_new_tokens` free slots for a row to use
      its whole budget (rows stop, `truncated`, when slots run out).
    pending: int32 [B], each row's last context token, not yet in the cache.
    active: bool [B]; inactive rows sample nothing and keep their state.
    rng: PRNG key.
    config: static settings (jit with `static_argnames="config"`).

  Returns:
    A `SampleOutput`; its `cache` and `pending` continue the rows.
  """
  batch = pending.shape[0]
  width = config.max_new_tokens

  def cond(state: _LoopState):
    has_slot = state.cache.write_index < state.cache.max_slots
    return (state.step < width) & jnp.any(state.running) & has_slot

  def body(state: _LoopState):
    logits, cache = extend_fn(params, state.pending[:, None],
                              state.running[:, None], state.cache)
    logits = logits[:, 0].astype(jnp.float32)
    rng, step_rng = jax.random.split(state.rng)
    next_token = config.rule(logits, step_rng)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits),
                                  next_token[:, None], axis=-1)[:, 0]
    next_token = jnp.where(state.running, next_token, 0)
    logprob = jnp.where(state.running, logprob, 0.0)
    column = (0, state.step)
    tokens = jax.lax.dynamic_update_slice(state.tokens, next_token[:, None], column)
    logprobs = jax.lax.dynamic_update_slice(state.logprobs, logprob[:, None], column)
    is_eos = state.running & (next_token == config.eos_id)
    stops = is_eos
    steps_left = state.steps_left
    if config.stop_at == StopAt.STEP:
      steps_left = steps_left - (state.running & (next_token == config.step_id))
      stops = stops | (steps_left == 0)
    return _LoopState(
        step=state.step + 1,
        cache=cache,
        pending=jnp.where(state.running, next_token, state.pending),
        running=state.running & ~stops,
        tokens=tokens,
        logprobs=logprobs,
        lengths=state.lengths + state.running.astype(jnp.int32),
        ended_solution=state.ended_solution | is_eos,
        steps_left=steps_left,
        rng=rng,
    )

  initial = _LoopState(
      step=jnp.zeros((), jnp.int32),
      cache=cache,
      pending=pending.astype(jnp.int32),
      running=active,
      tokens=jnp.zeros((batch, width), jnp.int32),
      logprobs=jnp.zeros((batch, width), jnp.float32),
      lengths=jnp.zeros((batch,), jnp.int32),
      ended_solution=jnp.zeros((batch,), bool),
      steps_left=jnp.full((batch,), config.steps, jnp.int32),
      rng=rng,
  )
  final = jax.lax.while_loop(cond, body, initial)
  return SampleOutput(
      tokens=final.tokens,
      logprobs=final.logprobs,
      lengths=final.lengths,
      ended_solution=final.ended_solution,
      truncated=final.running,
      cache=final.cache,
      pending=final.pending,
  )


def grow_cache(cache: KVCache, max_slots: int) -> KVCache:
  """`cache` with `max_slots` slots, the new ones free (a copy of the buffers)."""
  extra = max_slots - cache.max_slots
  return cache.replace(
      keys=tuple(jnp.pad(k, ((0, 0), (0, 0), (0, 0), (0, extra))) for k in cache.keys),
      values=tuple(jnp.pad(v, ((0, 0), (0, 0), (0, extra), (0, 0))) for v in cache.values),
      slot_valid=jnp.pad(cache.slot_valid, ((0, 0), (0, extra))))


# Token budgets from which whole solutions start in a cache of half the budget
# (smaller ones gain less than the second loop costs to compile).
_TWO_CACHES_FROM = 64


def first_cache_tokens(config: SamplerConfig) -> int:
  """The trips `sample_in_two_caches` runs in its first cache: half the
  budget for whole solutions of 64 tokens or more, else 0 (one cache)."""
  if config.stop_at == StopAt.SOLUTION and config.max_new_tokens >= _TWO_CACHES_FROM:
    return config.max_new_tokens // 2
  return 0


def sample_in_two_caches(extend_fn: ExtendFn, params, cache: KVCache, pending: jax.Array,
                         active: jax.Array, rng: jax.Array, config: SamplerConfig,
                         first_tokens: int, max_slots: int) -> SampleOutput:
  """`sample` of whole solutions, its first `first_tokens` trips in `cache`
  as given, the rest, for the rows still running, in the cache grown to
  `max_slots` slots.

  A decode trip reads every slot of the cache, used or not; most solutions
  end well within their token budget, so a cache sized for the whole budget
  is mostly empty while they are sampled. The second half runs only if some
  row is still running. Its draws come from another key than a one-cache
  `sample`'s, so the samples differ from those, not in distribution.

  Args:
    cache: with at least `first_tokens` free slots (more are never used in
      the first part).
    config: `StopAt.SOLUTION`; `max_new_tokens` > `first_tokens`.
    first_tokens: `first_cache_tokens(config)`; 0 is one `sample` in
      `cache` as given (then of `max_slots` slots).
    max_slots: the grown cache's slots (its free ones bound the rest).

  Returns:
    As `sample`, its arrays `config.max_new_tokens` wide and its cache
    `max_slots` wide.
  """
  if not first_tokens:
    return sample(extend_fn, params, cache, pending, active, rng, config)
  assert config.stop_at == StopAt.SOLUTION and first_tokens < config.max_new_tokens
  first_rng, second_rng = jax.random.split(rng)
  first = sample(extend_fn, params, cache, pending, active, first_rng,
                 dataclasses.replace(config, max_new_tokens=first_tokens))
  rest = dataclasses.replace(config, max_new_tokens=config.max_new_tokens - first_tokens)
  running = first.truncated
  grown = grow_cache(first.cache, max_slots)

  def go_on(_):
    return sample(extend_fn, params, grown, first.pending, running, second_rng, rest)

  def done(_):
    batch = pending.shape[0]
    return SampleOutput(
        tokens=jnp.zeros((batch, rest.max_new_tokens), jnp.int32),
        logprobs=jnp.zeros((batch, rest.max_new_tokens), jnp.float32),
        lengths=jnp.zeros((batch,), jnp.int32), ended_solution=jnp.zeros((batch,), bool),
        truncated=jnp.zeros((batch,), bool), cache=grown, pending=first.pending)

  second = jax.lax.cond(jnp.any(running), go_on, done, None)
  return SampleOutput(
      tokens=jnp.concatenate([first.tokens, second.tokens], axis=1),
      logprobs=jnp.concatenate([first.logprobs, second.logprobs], axis=1),
      lengths=first.lengths + second.lengths,
      ended_solution=first.ended_solution | second.ended_solution,
      truncated=second.truncated, cache=second.cache, pending=second.pending)


def prefill(extend_fn: ExtendFn, params, cache: KVCache, prompts: jax.Array,
            lengths: jax.Array) -> tuple[KVCache, jax.Array]:
  """Writes all but the last token of each prompt into `cache`.

  Args:
    prompts: int32 [B, P], each prompt right-aligned (left padding), so the
      last token of every row is in column P - 1.
    lengths: int32 [B] ≥ 1, real tokens per row.

  Returns:
    (cache, pending [B]): the last prompt token of each row is pending.
  """
  width = prompts.shape[1]
  columns = jnp.arange(width)
  token_valid = (columns[None, :] >= width - lengths[:, None]) & (
      columns[None, :] < width - 1)
  _, cache = extend_fn(params, prompts, token_valid, cache)
  return cache, prompts[:, -1]


def gather_rows(tree, indices: jax.Array):
  """Re-orders or duplicates rows: every array's leading axis by `indices` [B'].

  Scalars (the cache's shared `write_index`) and a cache's shared prefix are
  kept as they are: rows must stay in their prefix's group of rows.
  """
  def take(x):
    if isinstance(x, SharedPrefix) or x.ndim == 0:
      return x
    return jnp.take(x, indices, axis=0, mode="clip")

  return jax.tree.map(take, tree, is_leaf=lambda x: isinstance(x, SharedPrefix))
