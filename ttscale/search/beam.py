"""Verifier-guided tree search: beam search, lookahead and DVTS, one compiled loop.

Budget N, beam width M, lookahead depth k (k = 0 is plain beam search). A
question owns N rows of the batch. Each round of one `lax.while_loop`:

1. every live row samples one step (stopping at the step delimiter);
2. the step is appended to the row's PRM cache and scored there (or, with
   the exact verifier, scored by the task's exact labels); with k > 0 the
   score is instead read at the end of a greedy rollout of up to k more
   steps, from copies of both caches that are then dropped, so rollout tokens
   never reach the returned solutions; rows whose prefixes are
   token-identical share one rollout (a greedy rollout is a function of its
   prefix);
3. per group of rows, the live rows are ranked by score; the best ceil(L/M)
   of the L live rows are kept and copied into the L live slots (each about
   M times), caches and all. In the first round L = N: the top N/M are kept,
   each expanded M ways, as in the paper.

A group is a question's N rows (beam search, lookahead) or one of its N/M
DVTS subtrees of M rows (diverse verifier tree search: each subtree a greedy
beam that keeps its best row and expands it M ways; subtrees never exchange
rows). With distinct beams (the default) token-identical prefixes of a group
count once when rows are kept: copies of one prefix, which on short,
deterministic steps are common and score identically, fill slots only when
fewer distinct prefixes exist than rows to keep.

A row finishes when it ends its solution, runs out of tokens or cache, or its
step does not end within `max_step_tokens`. Finished rows are kept as they are
(never dropped or overwritten) and count toward the N candidates returned.
The loop stops when every row has finished or after `max_rounds` rounds.

The beam width M and the group size may come in as traced scalars
(`BeamWidths`), so that beam search and DVTS at one budget and lookahead, at
every M, run one compiled program: on CPU a cold sweep spends much of its
time compiling, one program per setting.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from ttscale.models.kv_cache import KVCache
from ttscale.search import common, sampling
from ttscale.search.best_of_n import Candidates, solution_scores


@dataclasses.dataclass(frozen=True)
class BeamConfig:
  """Static settings of one compiled beam program."""
  budget: int                  # N rows per question
  beam_width: int              # M
  lookahead: int               # k (0: beam search)
  max_rounds: int              # the round cap (paper: 40)
  max_new_tokens: int          # solution budget per row (T)
  max_step_tokens: int         # tokens one step may take (S)
  rule: sampling.SamplingRule  # how steps are sampled
  step_id: int
  eos_id: int
  # Rows that compete for the kept beams: N (beam, lookahead) or M (DVTS:
  # N/M subtrees of M rows that never exchange rows).
  group_size: int = 0          # 0: the budget N
  distinct: bool = True        # token-identical prefixes count once when kept
  # A row's score: its newest step's ("last", the paper's) or its lowest
  # step's so far ("min"; with lookahead, the lower of that and the rollout's).
  aggregation: str = "last"

  @property
  def group(self) -> int:
    return self.group_size or self.budget

  def step_sampler(self, rule=None) -> sampling.SamplerConfig:
    return sampling.SamplerConfig(rule=rule or self.rule, stop_at=sampling.StopAt.STEP,
                                  max_new_tokens=self.max_step_tokens,
                                  step_id=self.step_id, eos_id=self.eos_id)


@struct.dataclass
class BeamWidths:
  """A tree search's widths as program inputs; they override `BeamConfig`'s."""
  beam_width: jax.Array  # int32 []: M, dividing the group size
  group_size: jax.Array  # int32 []: rows that compete (the budget N, or M for DVTS)

  @classmethod
  def of(cls, config: BeamConfig) -> BeamWidths:
    return cls(beam_width=jnp.asarray(config.beam_width, jnp.int32),
               group_size=jnp.asarray(config.group, jnp.int32))


@struct.dataclass
class BeamState:
  round: jax.Array          # int32 []: rounds done
  policy_cache: KVCache     # rows [B = Q·N]
  pending: jax.Array        # int32 [B]: each row's last token, not yet in the policy cache
  prm_cache: KVCache        # rows [B]: every token of the row
  tokens: jax.Array         # int32 [B, T]: the solution so far
  lengths: jax.Array        # int32 [B]: its length
  finished: jax.Array       # bool [B]: the row samples no more
  scores: jax.Array         # float32 [B]: the row's score, by which rows are kept
  lowest: jax.Array         # float32 [B]: the lowest score of the row's own steps
  flops: jax.Array          # float32 [Q]: FLOPs used per question
  policy_tokens: jax.Array  # int32 [Q]: tokens the policy decoded per question
  distinct_kept: jax.Array  # int32 [Q]: distinct live prefixes after selection, summed over rounds
  searching_rounds: jax.Array  # int32 [Q]: rounds that left the question live rows
  rng: jax.Array            # PRNG key


@struct.dataclass
class _Rows:
  """What a row carries from one round to the next (gathered by `source`)."""
  policy_cache: KVCache
  pending: jax.Array        # int32 [B]
  prm_cache: KVCache
  tokens: jax.Array         # int32 [B, T]
  lengths: jax.Array        # int32 [B]
  finished: jax.Array       # bool [B]
  scores: jax.Array         # float32 [B]
  lowest: jax.Array         # float32 [B]


def first_copies(tokens: jax.Array, lengths: jax.Array, live: jax.Array,
                 groups: jax.Array | None = None) -> jax.Array:
  """Which live rows are the first (lowest index) of their token-identical prefix.

  Args:
    tokens: int32 [G, n, T] (0 past each row's length); lengths: int32 [G, n];
    live: bool [G, n]; rows are compared within their group only.
    groups: int32 [G, n], given, splits each group further: rows are
      compared only with rows of the same value.

  Returns:
    bool [G, n]: live and no live row before it in its group is identical.
  """
  return live & (first_copy_of(tokens, lengths, live, groups) == jnp.arange(tokens.shape[1]))


def first_copy_of(tokens: jax.Array, lengths: jax.Array, live: jax.Array,
                  groups: jax.Array | None = None) -> jax.Array:
  """Each live row's first (lowest index) live row of the same prefix, itself if none.

  Args: as `first_copies`.

  Returns:
    int32 [G, n]: an index within the row's group; a row that is not live
    is its own.
  """
  same = ((lengths[:, :, None] == lengths[:, None, :])
          & jnp.all(tokens[:, :, None, :] == tokens[:, None, :, :], axis=-1))  # [G, i, j]
  if groups is not None:
    same &= groups[:, :, None] == groups[:, None, :]
  # A live row is the same as itself, so its first match is at or before it.
  first = jnp.argmax(same & live[:, None, :], axis=2).astype(jnp.int32)
  return jnp.where(live, first, jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :])


def keep_top_beams(scores: jax.Array, live: jax.Array, block_size: int, beam_width,
                   tokens: jax.Array | None = None, lengths: jax.Array | None = None,
                   group_size=None) -> jax.Array:
  """Where each row's next content comes from, per group of rows.

  Args:
    scores: float [B]; live: bool [B] (rows still searching); B = blocks ·
      `block_size` (static: a question's N rows).
    beam_width: M, an int or a traced int32 scalar.
    tokens, lengths: int32 [B, T] and [B], each row's prefix. Given, rows with
      token-identical prefixes count once: distinct prefixes are kept first,
      copies only fill slots that distinct prefixes cannot.
    group_size: rows that compete, consecutive within a block and dividing
      `block_size` (a DVTS subtree's M); an int or a traced int32 scalar;
      default the whole block.

  Returns:
    int32 [B] source rows: a finished row keeps itself; the L live rows of a
    group are filled with its best ceil(L/M) live rows (ties: lower index),
    in rank order, cycling, so each kept row gets about M slots.
  """
  scores = scores.reshape(-1, block_size)
  live = live.reshape(-1, block_size)
  columns = jnp.arange(block_size)
  size = block_size if group_size is None else group_size
  group_of = columns // size                                                 # [n]
  # Live rows first, best first (stable: ties keep row order).
  order = jnp.argsort(jnp.where(live, -scores, jnp.inf), axis=1, stable=True)
  if tokens is not None:
    # Within rank order, the first copy of each prefix is the best-ranked one;
    # then (stable) distinct live rows, copies, finished rows.
    ranked_tokens = jnp.take_along_axis(
        tokens.reshape(*live.shape, -1), order[:, :, None], axis=1)
    ranked_live = jnp.take_along_axis(live, order, axis=1)
    distinct = first_copies(ranked_tokens, jnp.take_along_axis(
        lengths.reshape(live.shape), order, axis=1), ranked_live, group_of[order])
    tier = jnp.where(distinct, 0, jnp.where(ranked_live, 1, 2))
    order = jnp.take_along_axis(order, jnp.argsort(tier, axis=1, stable=True), axis=1)
  # Groups in turn, each in its rank order: group g's ranks fill positions
  # g·group_size onwards.
  order = jnp.take_along_axis(order, jnp.argsort(group_of[order], axis=1, stable=True), axis=1)
  same_group = group_of[:, None] == group_of[None, :]                        # [n, n]
  num_live = live.astype(jnp.int32) @ same_group.astype(jnp.int32)           # [blocks, n]
  num_kept = jnp.maximum((num_live + beam_width - 1) // beam_width, 1)
  # Live rows before each row in its own group.
  live_before = jnp.cumsum(live, axis=1) - live
  group_start = group_of * size
  live_rank = live_before - live_before[:, group_start]
  source = jnp.take_along_axis(order, group_start + live_rank % num_kept, axis=1)
  within = jnp.where(live, source, columns[None, :])
  offsets = jnp.arange(scores.shape[0])[:, None] * block_size
  return (within + offsets).reshape(-1)


def _append_rows(buffer: jax.Array, at: jax.Array, new: jax.Array, counts: jax.Array):
  """Writes row i's first counts[i] tokens of `new` [B, S] at buffer[i, at[i]:]."""
  columns = at[:, None] + jnp.arange(new.shape[1])[None, :]
  valid = (jnp.arange(new.shape[1])[None, :] < counts[:, None]) & (columns < buffer.shape[1])
  rows = jnp.broadcast_to(jnp.arange(buffer.shape[0])[:, None], columns.shape)
  columns = jnp.where(valid, columns, buffer.shape[1])  # out of range: dropped
  return buffer.at[rows, columns].set(new, mode="drop")


# Rows rolled out together, as a fraction of the batch: a round's distinct
# prefixes are usually a third of its rows or fewer (kept beams are copied M
# ways and short steps often repeat); more of them take more passes.
_ROLLOUT_PASS_FRACTION = 4


def _lookahead_scores(models, config: BeamConfig, policy_params, prm_params, step,
                      prm_cache, scores, live, prefixes, rng, verify_exact):
  """Scores at the end of greedy rollouts of up to k steps.

  A greedy rollout is a function of its prefix, so rows whose prefixes are
  token-identical (within a question) share one rollout and its score: the
  first row of each prefix is rolled out, in passes of a quarter of the
  batch's rows (`_ROLLOUT_PASS_FRACTION`) gathered from both caches, and its
  copies take what it got. Each pass rolls its rows out by k steps in one
  sampler call (each row stops on its own) and scores them with one PRM
  append at the rollout's last token (or its lowest step, with "min"). The
  caches the rows go on with are not touched. FLOPs and decoded tokens count
  every row's rollout, as the method spends them.

  Args:
    prefixes: (tokens int32 [B, T], lengths int32 [B]), each row's solution
      so far, the step just sampled included.
    verify_exact: with the exact verifier, `(rollout tokens, counts) -> scores`
      of each row's prefix followed by its rollout; None with the PRM.

  Returns:
    (scores [B], FLOPs [B], rollout tokens [B]): rows that ended their
    solution (or roll out nothing) keep `scores`.
  """
  rolling = live & ~step.ended_solution & ~step.truncated
  rollout = dataclasses.replace(
      config.step_sampler(sampling.SamplingRule(temperature=0.0)),
      steps=config.lookahead, max_new_tokens=config.lookahead * config.max_step_tokens)
  tokens, lengths = prefixes
  rows, n = rolling.shape[0], config.budget
  group_first = first_copy_of(tokens.reshape(-1, n, tokens.shape[1]), lengths.reshape(-1, n),
                              rolling.reshape(-1, n))
  leader = (group_first + jnp.arange(0, rows, n)[:, None]).reshape(-1)      # [B]
  is_leader = rolling & (leader == jnp.arange(rows))
  pass_rows = max(rows // _ROLLOUT_PASS_FRACTION, 1)
  # The leaders first, in row order; `rows` (out of range) fills the rest.
  order = jnp.nonzero(is_leader, size=rows + pass_rows, fill_value=rows)[0]
  width = rollout.max_new_tokens

  def one_pass(carry):
    start, rolled, counts, new_scores = carry
    picked = jax.lax.dynamic_slice_in_dim(order, start, pass_rows)          # [P]
    valid = picked < rows
    policy_cache, pending, prm_rows = sampling.gather_rows(
        (step.cache, step.pending, prm_cache), picked)
    out = sampling.sample(models.policy_extend, policy_params, policy_cache, pending,
                          valid, rng, rollout)
    picked_counts = jnp.where(valid, out.lengths, 0)
    if verify_exact is None:
      if config.aggregation == "min":  # the rollout's lowest step
        token_scores, _, _ = common.append_to_prm(models, prm_params, prm_rows, out.tokens,
                                                  picked_counts)
        # (0 for a rollout that ends no step within its k·S tokens.)
        picked_scores = solution_scores(out.tokens, picked_counts, token_scores,
                                        config.step_id, config.eos_id, "min")
      else:
        picked_scores, _, _ = common.append_and_score(models, prm_params, prm_rows,
                                                      out.tokens, picked_counts)
      new_scores = new_scores.at[picked].set(picked_scores, mode="drop")
    return (start + pass_rows, rolled.at[picked].set(out.tokens, mode="drop"),
            counts.at[picked].set(picked_counts, mode="drop"), new_scores)

  def more(carry):
    return carry[0] < is_leader.sum()

  _, rolled, counts, new_scores = jax.lax.while_loop(more, one_pass, (
      jnp.zeros((), jnp.int32), jnp.zeros((rows, width), jnp.int32),
      jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), jnp.float32)))
  # Every rolling row takes its prefix's first row's rollout.
  rolled, new_scores = rolled[leader], new_scores[leader]
  counts = jnp.where(rolling, counts[leader], 0)
  context = step.cache.next_position
  flops = models.policy_rate.decode(context, counts)
  if verify_exact is not None:
    new_scores = verify_exact(rolled, counts)
  elif models.runs_prm:
    flops = flops + models.prm_rate.decode(prm_cache.next_position, counts)
  return jnp.where(counts > 0, new_scores, scores), flops, counts


def _distinct_live_prefixes(tokens, lengths, finished, budget: int) -> jax.Array:
  """int32 [Q]: distinct prefixes among each question's live rows."""
  live = ~finished.reshape(-1, budget)
  return first_copies(tokens.reshape(*live.shape, -1), lengths.reshape(live.shape),
                      live).sum(axis=1)


def beam_search(models: common.SearchModels, policy_params, prm_params, prompts, lengths,
                rng, widths: BeamWidths | None = None, *, config: BeamConfig) -> Candidates:
  """N candidates per question by verifier-guided tree search: beam (k = 0),
  lookahead (k > 0), or DVTS (`config.group_size` = M).

  Args:
    prompts: int32 [Q, P] left-padded; lengths: int32 [Q]; rng: PRNG key.
    widths: given, the beam width and group size, in place of `config`'s
      (whose other fields fix the program).

  Returns:
    `Candidates` with Q·N rows, question-major; finished or not, every row is
    a candidate (a row without an answer line simply has no answer).
  """
  n, width = config.budget, prompts.shape[1]
  rollout_slots = config.lookahead * config.max_step_tokens
  slots = width + config.max_new_tokens + config.max_step_tokens + rollout_slots
  # A PRM append writes its whole width at the policy's write index (≤ slots):
  # a step's S tokens, or a rollout's k·S.
  widest_append = max(config.max_step_tokens, rollout_slots)
  started = common.start(models, policy_params, prm_params, prompts, lengths, n,
                         slots=slots, prm_slots=slots + widest_append)
  rows = started.pending.shape[0]
  budget_tokens = config.max_new_tokens
  exact = models.exact_verifier
  widths = widths or BeamWidths.of(config)

  def cond(state: BeamState):
    return (state.round < config.max_rounds) & ~jnp.all(state.finished)

  def body(state: BeamState):
    rng, step_rng, rollout_rng = jax.random.split(state.rng, 3)
    live = ~state.finished
    context = state.policy_cache.next_position
    step = sampling.sample(models.policy_extend, policy_params, state.policy_cache,
                           state.pending, live, step_rng, config.step_sampler())
    counts = jnp.where(live, step.lengths, 0)
    tokens = _append_rows(state.tokens, state.lengths, step.tokens, counts)
    new_lengths = state.lengths + counts
    flops = models.policy_rate.decode(context, counts)
    verify_exact = None
    if exact is not None:
      def verify_exact(appended, appended_counts):
        # The prefix and what follows it, in a buffer wide enough for both.
        wide = jnp.pad(tokens, ((0, 0), (0, appended.shape[1])))
        return exact.scores(prompts, lengths, _append_rows(wide, new_lengths, appended,
                                                           appended_counts),
                            new_lengths + appended_counts)
      step_scores, prm_cache = exact.scores(prompts, lengths, tokens, new_lengths), state.prm_cache
    else:
      step_scores, prm_cache, prm_flops = common.append_and_score(
          models, prm_params, state.prm_cache, step.tokens, counts)
      flops += prm_flops
    decoded = counts
    policy_cache = step.cache
    lowest = jnp.where(live, jnp.minimum(state.lowest, step_scores), state.lowest)
    if config.aggregation == "min":
      step_scores = lowest
    if config.lookahead:
      step_scores, rollout_flops, rollout_tokens = _lookahead_scores(
          models, config, policy_params, prm_params, step, prm_cache, step_scores,
          live, (tokens, new_lengths), rollout_rng, verify_exact)
      flops += rollout_flops
      decoded = decoded + rollout_tokens
    if config.lookahead and config.aggregation == "min":
      step_scores = jnp.minimum(step_scores, lowest)
    scores = jnp.where(live, step_scores, state.scores)
    # Out of the solution's token budget or of cache: no more steps.
    out_of_room = new_lengths >= budget_tokens
    finished = state.finished | (live & (step.ended_solution | step.truncated | out_of_room))
    lengths_now = jnp.minimum(new_lengths, budget_tokens)
    prefixes = (tokens, lengths_now) if config.distinct else (None, None)
    source = keep_top_beams(scores, ~finished, n, widths.beam_width, *prefixes,
                            group_size=widths.group_size)
    kept = sampling.gather_rows(_Rows(
        policy_cache=policy_cache, pending=step.pending, prm_cache=prm_cache, tokens=tokens,
        lengths=lengths_now, finished=finished, scores=scores, lowest=lowest), source)
    searching = ~kept.finished.reshape(-1, n).all(axis=1)
    return BeamState(
        round=state.round + 1,
        policy_cache=kept.policy_cache, pending=kept.pending, prm_cache=kept.prm_cache,
        tokens=kept.tokens, lengths=kept.lengths, finished=kept.finished, scores=kept.scores,
        lowest=kept.lowest,
        flops=state.flops + common.per_question(flops, n),
        policy_tokens=state.policy_tokens + common.per_question(decoded, n),
        distinct_kept=state.distinct_kept + _distinct_live_prefixes(
            kept.tokens, kept.lengths, kept.finished, n),
        searching_rounds=state.searching_rounds + searching.astype(jnp.int32),
        rng=rng)

  initial = BeamState(
      round=jnp.zeros((), jnp.int32),
      policy_cache=started.policy_cache, pending=started.pending,
      prm_cache=started.prm_cache,
      tokens=jnp.zeros((rows, budget_tokens), jnp.int32),
      lengths=jnp.zeros((rows,), jnp.int32),
      finished=jnp.zeros((rows,), bool),
      scores=jnp.zeros((rows,), jnp.float32),
      lowest=jnp.ones((rows,), jnp.float32),  # scores are probabilities: 1 is neutral
      flops=started.flops, policy_tokens=jnp.zeros_like(started.flops, jnp.int32),
      distinct_kept=jnp.zeros_like(started.flops, jnp.int32),
      searching_rounds=jnp.zeros_like(started.flops, jnp.int32),
      rng=rng)
  final = jax.lax.while_loop(cond, body, initial)
  # A candidate's score is its own steps' (never a discarded rollout's) under "min".
  scores = final.lowest if config.aggregation == "min" else final.scores
  return Candidates(tokens=final.tokens, lengths=final.lengths, scores=scores,
                    flops=final.flops, policy_tokens=final.policy_tokens,
                    distinct_prefixes=final.distinct_kept / jnp.maximum(final.searching_rounds, 1))
