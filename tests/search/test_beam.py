"""Tests of the search programs on a toy policy and a toy PRM known by hand.

The toy policy (a bigram table) starts every step with "a" (p 0.4), "b"
(0.3) or "z" (0.3); "a" and "b" are followed by the step delimiter, "z" by
the end of the solution. The toy PRM scores a step by its content token:
"a" +3, "b" -3, "z" -1 (logits). So every draw, every score and every
selection can be checked by hand from the first-round draws, which a run
with beam width 1 and an all-zero PRM returns in their original rows.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttscale import testing
from ttscale.models.value import ValueModel
from ttscale.search import beam, best_of_n, common, runner, sampling
from ttscale.search.budget import (
  FlopsRate,
  SearchSetting,
  budget_grid,
  paper_settings,
  parse_setting,
)
from ttscale.tasks import get_task

PAD, BOS, EOS, STEP = 0, 2, 3, 4
A, B, Z = 5, 6, 8
VOCAB = testing.TINY_CONFIG.vocab_size
PROMPT = [BOS, 10, STEP]
N = 8
CONFIG = dataclasses.replace(testing.TINY_CONFIG, num_layers=1)


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="rbg")


@functools.cache
def _models(prm_values: tuple[float, ...]):
  policy = testing.bigram_policy({STEP: {A: 0.4, B: 0.3, Z: 0.3}, A: {STEP: 1.0},
                                  B: {STEP: 1.0}, Z: {EOS: 1.0}}, VOCAB, default_next=EOS)
  values = np.zeros(VOCAB, np.float32)
  values[[A, B, Z]] = prm_values
  prm_graphdef, prm_params = nnx.split(testing.LastContentValueModel(values, (STEP, EOS)))
  models = common.SearchModels(policy.graphdef, prm_graphdef, CONFIG, CONFIG)
  return models, policy.params, prm_params


REAL_PRM = (3.0, -3.0, -1.0)
ZERO_PRM = (0.0, 0.0, 0.0)


@functools.cache
def _beam(prm_values, beam_width: int, lookahead: int, max_rounds: int, seed: int = 1,
          distinct: bool = False, group_size: int = 0):
  models, policy_params, prm_params = _models(prm_values)
  config = beam.BeamConfig(
      budget=N, beam_width=beam_width, lookahead=lookahead, max_rounds=max_rounds,
      max_new_tokens=12, max_step_tokens=4, rule=sampling.SamplingRule(1.0),
      step_id=STEP, eos_id=EOS, distinct=distinct, group_size=group_size)
  prompts = jnp.asarray([PROMPT], jnp.int32)
  run = jax.jit(functools.partial(beam.beam_search, models, config=config))
  out = run(policy_params, prm_params, prompts, jnp.asarray([len(PROMPT)]), _key(seed))
  return jax.tree.map(np.asarray, out)


def _rows(out) -> list[tuple[int, ...]]:
  return [tuple(out.tokens[r, :out.lengths[r]].tolist()) for r in range(N)]


def _score(token: int) -> float:
  return float(jax.nn.sigmoid(dict(zip((A, B, Z), REAL_PRM, strict=True))[token]))


# ------------------------------------------------------------- selection


def test_keep_top_beams_keeps_the_best_n_over_m_each_m_times():
  source = beam.keep_top_beams(jnp.array([0.1, 0.9, 0.5, 0.7]), jnp.ones(4, bool), 4, 2)
  np.testing.assert_array_equal(source, [1, 3, 1, 3])


def test_keep_top_beams_leaves_finished_rows_and_counts_only_live_ones():
  # Row 1 is finished (best score, but not searched further); 3 live rows keep 2.
  live = jnp.array([True, False, True, True])
  source = beam.keep_top_beams(jnp.array([0.2, 0.99, 0.8, 0.5]), live, 4, 2)
  np.testing.assert_array_equal(source, [2, 1, 3, 2])


def test_keep_top_beams_breaks_ties_by_row_and_offsets_questions():
  scores = jnp.array([0.5, 0.5, 0.5, 0.5, 0.1, 0.2, 0.3, 0.4])
  source = beam.keep_top_beams(scores, jnp.ones(8, bool), 4, 4)
  np.testing.assert_array_equal(source, [0, 0, 0, 0, 7, 7, 7, 7])
  nothing_live = beam.keep_top_beams(scores, jnp.zeros(8, bool), 4, 2)
  np.testing.assert_array_equal(nothing_live, np.arange(8))


def test_keep_top_beams_counts_token_identical_prefixes_once():
  # Rows 0 and 1 are copies of one prefix (same score); rows 2, 3 differ.
  tokens = jnp.array([[A, STEP], [A, STEP], [B, STEP], [Z, STEP]])
  scores, live = jnp.array([0.9, 0.9, 0.5, 0.1]), jnp.ones(4, bool)
  plain = beam.keep_top_beams(scores, live, 4, 2)
  np.testing.assert_array_equal(plain, [0, 1, 0, 1])  # both kept beams are one prefix
  distinct = beam.keep_top_beams(scores, live, 4, 2, tokens, jnp.full(4, 2))
  np.testing.assert_array_equal(distinct, [0, 2, 0, 2])


def test_copies_fill_kept_slots_only_when_distinct_prefixes_run_out():
  tokens = jnp.array([[A, STEP], [A, STEP], [A, STEP], [B, STEP]])
  scores = jnp.array([0.9, 0.9, 0.9, 0.2])
  # M = 1 keeps all four: the two distinct prefixes first, then the copies.
  source = beam.keep_top_beams(scores, jnp.ones(4, bool), 4, 1, tokens, jnp.full(4, 2))
  np.testing.assert_array_equal(source, [0, 3, 1, 2])
  # A prefix is its tokens up to its length: "a" is not "a\n".
  short = beam.keep_top_beams(scores, jnp.ones(4, bool), 4, 2, tokens,
                              jnp.array([2, 1, 2, 2]))
  np.testing.assert_array_equal(short, [0, 1, 0, 1])


def test_distinct_prefixes_are_compared_within_a_group_only():
  tokens = jnp.array([[A, STEP]] * 4 + [[B, STEP]] * 4)
  scores = jnp.array([0.9, 0.8, 0.7, 0.6] * 2)
  source = beam.keep_top_beams(scores, jnp.ones(8, bool), 4, 2, tokens, jnp.full(8, 2))
  # Each group has one distinct prefix: its best row, then its best copy.
  np.testing.assert_array_equal(source, [0, 1, 0, 1, 4, 5, 4, 5])


def test_groups_within_a_block_select_as_blocks_of_the_group_size():
  """Fails if a traced group size inside a question's block of rows selects
  differently from blocks of that size (DVTS subtrees sharing beam search's
  compiled program), with copies, finished rows and ties."""
  rng = np.random.default_rng(0)
  block, rows = 8, 32
  beam_width_traced = jax.jit(beam.keep_top_beams, static_argnums=2)
  for trial in range(8):
    scores = jnp.asarray(rng.choice([0.1, 0.5, 0.9], rows), jnp.float32)
    live = jnp.asarray(rng.random(rows) < 0.8)
    tokens = jnp.asarray(rng.integers(0, 2, (rows, 2)), jnp.int32)
    lengths = jnp.asarray(rng.integers(1, 3, rows), jnp.int32)
    for group in (1, 2, 4, 8):
      for width in sorted({1, 2, group} & set(range(1, group + 1))):
        prefixes = (tokens, lengths) if trial % 2 else (None, None)
        expected = beam.keep_top_beams(scores, live, group, width, *prefixes)
        grouped = beam_width_traced(scores, live, block, jnp.int32(width), *prefixes,
                                    group_size=jnp.int32(group))
        np.testing.assert_array_equal(grouped, expected, err_msg=f"group {group}, M {width}")


# ------------------------------------------------------------- programs


def test_one_round_of_beam_search_keeps_exactly_the_top_beams():
  draws = _rows(_beam(ZERO_PRM, beam_width=1, lookahead=0, max_rounds=1))
  assert {d[0] for d in draws} == {A, B, Z}, "this seed must draw every first step"
  out = _beam(REAL_PRM, beam_width=2, lookahead=0, max_rounds=1)
  scores = np.array([_score(d[0]) for d in draws])
  live = np.array([d[-1] != EOS for d in draws])
  source = np.asarray(beam.keep_top_beams(jnp.asarray(scores), jnp.asarray(live), N, 2))
  assert _rows(out) == [draws[s] for s in source]
  np.testing.assert_allclose(out.scores, scores[source], rtol=1e-6)


def test_lookahead_scores_at_the_rollout_end_and_drops_its_tokens():
  draws = _rows(_beam(ZERO_PRM, beam_width=1, lookahead=0, max_rounds=1))
  out = _beam(REAL_PRM, beam_width=2, lookahead=1, max_rounds=1)
  # The greedy rollout of every live row is "a\n": all live rows tie at
  # sigmoid(3), so the lowest-index live rows are kept, whatever they drew.
  live = np.array([d[-1] != EOS for d in draws])
  scores = np.where(live, _score(A), [_score(d[0]) for d in draws])
  source = np.asarray(beam.keep_top_beams(jnp.asarray(scores), jnp.asarray(live), N, 2))
  assert _rows(out) == [draws[s] for s in source]
  np.testing.assert_allclose(out.scores, scores[source], rtol=1e-6)
  # One round, one step: no rollout token in any returned solution.
  assert all(len(row) == 2 for row in _rows(out))


def test_copies_of_a_prefix_share_one_lookahead_rollout(monkeypatch):
  """Fails if rows whose prefixes repeat do not get what rolling each of them
  out would give (a copy scored by another prefix's rollout, or a prefix left
  out when the rollouts take several passes): a PRM that reads the whole
  prefix (a random value model), two questions of 8 rows, passes of 4 rows."""
  models = _models(REAL_PRM)[0]
  prm_graphdef, prm_params, _ = testing.tiny_policy(seed=1, config=CONFIG,
                                                    module=ValueModel)
  models = dataclasses.replace(models, prm_graphdef=prm_graphdef)
  policy_params = _models(REAL_PRM)[1]
  config = beam.BeamConfig(
      budget=N, beam_width=2, lookahead=2, max_rounds=3, max_new_tokens=12,
      max_step_tokens=4, rule=sampling.SamplingRule(1.0), step_id=STEP, eos_id=EOS,
      distinct=False)  # (distinct beams would read the patched `first_copy_of` too)
  prompts = jnp.asarray([PROMPT, PROMPT], jnp.int32)
  lengths = jnp.asarray([len(PROMPT)] * 2)

  def run():
    out = jax.jit(functools.partial(beam.beam_search, models, config=config))(
        policy_params, prm_params, prompts, lengths, _key(5))
    return jax.tree.map(np.asarray, out)

  shared = run()
  rows = [tuple(shared.tokens[r, :shared.lengths[r]].tolist()) for r in range(2 * N)]
  assert len(set(rows[:N])) < N, "this seed must repeat a prefix"
  # Every row its own first copy: each row rolled out by itself.
  monkeypatch.setattr(beam, "first_copy_of", lambda tokens, lengths, live, groups=None:
                      jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32),
                                       live.shape))
  alone = run()
  np.testing.assert_array_equal(shared.tokens, alone.tokens)
  np.testing.assert_allclose(shared.scores, alone.scores, rtol=1e-6)
  np.testing.assert_allclose(shared.flops, alone.flops, rtol=1e-6)
  np.testing.assert_array_equal(shared.policy_tokens, alone.policy_tokens)


def test_finished_candidates_survive_later_rounds():
  one = _rows(_beam(REAL_PRM, beam_width=2, lookahead=0, max_rounds=1))
  three = _beam(REAL_PRM, beam_width=2, lookahead=0, max_rounds=3)
  finished = [r for r, row in enumerate(one) if row == (Z, EOS)]
  assert finished, "this seed must finish a row in the first round"
  for r in finished:
    assert _rows(three)[r] == (Z, EOS)
    assert three.scores[r] == pytest.approx(_score(Z))
  # Live rows went on: longer than one step, each a valid path.
  for r, row in enumerate(_rows(three)):
    if r not in finished:
      assert len(row) > 2
    steps = [row[i] for i in range(0, len(row), 2)]
    assert all(t in (A, B) for t in steps[:-1]) and row[-1] in (STEP, EOS)


def _expected_distinct_sources(draws, scores, live, beam_width):
  """keep_top_beams with distinct prefixes, by hand: rank live rows by score
  (ties by row), the first of each prefix before any copy, then cycle."""
  ranked = sorted((r for r in range(N) if live[r]), key=lambda r: (-scores[r], r))
  seen, firsts, copies = set(), [], []
  for r in ranked:
    (copies if draws[r] in seen else firsts).append(r)
    seen.add(draws[r])
  order = firsts + copies
  kept = order[:max(-(-len(ranked) // beam_width), 1)]
  slots = iter(range(N * N))
  return [kept[next(slots) % len(kept)] if live[r] else r for r in range(N)]


def test_one_round_of_distinct_beam_search_keeps_every_distinct_prefix_first():
  draws = _rows(_beam(ZERO_PRM, beam_width=1, lookahead=0, max_rounds=1))
  live = [d[-1] != EOS for d in draws]
  scores = [_score(d[0]) for d in draws]
  live_prefixes = {d for d, alive in zip(draws, live, strict=True) if alive}
  assert len(live_prefixes) == 2 and sum(d == (A, STEP) for d in draws) >= 2, \
      "this seed must draw 'a' at least twice and 'b' at least once"
  # M = 4: two of the live rows are kept.
  out = _beam(REAL_PRM, beam_width=4, lookahead=0, max_rounds=1, distinct=True)
  source = _expected_distinct_sources(draws, scores, live, 4)
  assert _rows(out) == [draws[s] for s in source]
  # Kept: "a" and "b". Without distinct beams: "a" twice.
  assert float(out.distinct_prefixes[0]) == 2.0
  plain = _beam(REAL_PRM, beam_width=4, lookahead=0, max_rounds=1, distinct=False)
  assert float(plain.distinct_prefixes[0]) == 1.0
  assert {row for row, alive in zip(_rows(plain), live, strict=True) if alive} == {(A, STEP)}


def test_distinct_beams_keep_more_prefixes_over_many_rounds():
  distinct = _beam(REAL_PRM, beam_width=4, lookahead=0, max_rounds=4, distinct=True)
  plain = _beam(REAL_PRM, beam_width=4, lookahead=0, max_rounds=4, distinct=False)
  assert float(distinct.distinct_prefixes[0]) > float(plain.distinct_prefixes[0])
  assert float(distinct.distinct_prefixes[0]) <= N / 2  # never more than the kept beams


def test_dvts_subtrees_never_exchange_rows():
  """Fails if a DVTS subtree takes a row of another: every final row of a
  subtree descends from a first step drawn in that subtree."""
  width = 2
  draws = _rows(_beam(ZERO_PRM, beam_width=1, lookahead=0, max_rounds=1))
  drawn = [{d[0] for d in draws[g * width:(g + 1) * width]} for g in range(N // width)]
  without_a = [g for g, firsts in enumerate(drawn) if A not in firsts]
  assert without_a and any(A in firsts for firsts in drawn), \
      "this seed must leave some subtree without an 'a' that another has"
  dvts = _rows(_beam(REAL_PRM, beam_width=width, lookahead=0, max_rounds=3,
                     group_size=width))
  for g, firsts in enumerate(drawn):
    assert {row[0] for row in dvts[g * width:(g + 1) * width]} <= firsts
  # Beam search over the question's N rows moves the best "a" rows into them.
  shared = _rows(_beam(REAL_PRM, beam_width=width, lookahead=0, max_rounds=3))
  assert any(shared[r][0] == A for g in without_a for r in range(g * width, (g + 1) * width))


def test_best_of_n_counts_flops_token_by_token():
  models, policy_params, prm_params = _models(REAL_PRM)
  sampler_config = sampling.SamplerConfig(
      rule=sampling.SamplingRule(1.0), stop_at=sampling.StopAt.SOLUTION, max_new_tokens=12,
      step_id=STEP, eos_id=EOS)
  prompts = jnp.asarray([[PAD] + PROMPT, PROMPT[:1] + [11] + PROMPT[1:]], jnp.int32)
  prompt_lengths = [len(PROMPT), len(PROMPT) + 1]
  out = jax.jit(functools.partial(best_of_n.best_of_n, models, num_samples=4,
                                  sampler_config=sampler_config))(
      policy_params, prm_params, prompts, jnp.asarray(prompt_lengths), _key(1))
  lengths = np.asarray(out.lengths).reshape(2, 4)
  for q, prompt_length in enumerate(prompt_lengths):
    # Policy: the prompt once without its last token; each sample feeds that
    # token and its own tokens but the last. PRM: the prompt once, each sample.
    expected = sum(CONFIG.flops_per_token(c) for c in range(1, prompt_length))
    expected += sum(CONFIG.flops_per_token(c) for c in range(1, prompt_length + 1))
    for n, length in enumerate(lengths[q]):
      expected += sum(CONFIG.flops_per_token(prompt_length - 1 + j + 1) for j in range(length))
      expected += sum(CONFIG.flops_per_token(prompt_length + j + 1) for j in range(length))
      # With only the first n + 1 samples drawn, the question would have used this much.
      assert float(out.prefix_flops[q, n]) == pytest.approx(expected, rel=1e-6)
    assert float(out.flops[q]) == pytest.approx(expected, rel=1e-6)
  # Best-of-N scores a solution at its last step end: by its last content token
  # ("z" for a finished one; a solution cut by the token budget ends in "\n").
  tokens = np.asarray(out.tokens)
  last_content = [tokens[r, int(length) - 2] for r, length in enumerate(np.asarray(out.lengths))]
  assert {tokens[r, int(n) - 1] for r, n in enumerate(np.asarray(out.lengths))} <= {STEP, EOS}
  np.testing.assert_allclose(out.scores, [_score(t) for t in last_content], rtol=1e-6)


def test_flops_rate_matches_the_model_config():
  rate = FlopsRate.of(CONFIG)
  assert float(rate.decode(7, 5)) == pytest.approx(
      sum(CONFIG.flops_per_token(7 + j + 1) for j in range(5)), rel=1e-6)


@pytest.mark.parametrize("start, count", [(0, 3), (2, 4), (5, 9), (12, 5), (0, 30)])
def test_flops_rate_of_sliding_window_layers_matches_the_model_config(start, count):
  # Windows of 6 on 3 of 4 layers: decodes before, across and past the window.
  config = dataclasses.replace(CONFIG, num_layers=4, sliding_window=6,
                               sliding_window_pattern=4)
  rate = FlopsRate.of(config)
  assert float(rate.decode(start, count)) == pytest.approx(
      sum(config.flops_per_token(start + j + 1) for j in range(count)), rel=1e-6)
  all_global = FlopsRate.of(dataclasses.replace(config, sliding_window=0))
  if start + count > 6:  # some token read past the window
    assert float(rate.decode(start, count)) < float(all_global.decode(start, count))
  else:
    assert float(rate.decode(start, count)) == float(all_global.decode(start, count))


# ------------------------------------------------------------- settings


def test_paper_settings_and_generation_counts():
  settings = paper_settings(budget_grid(16))
  names = {(s.method, s.budget, s.params) for s in settings}
  assert ("beam", 16, "M=4,k=0") in names and ("lookahead", 16, "M=4,k=1") in names
  assert ("beam", 8, "M=4,k=0") in names and ("beam", 8, "M=2,k=0") not in names
  # Best-of-N, beam, lookahead k=3 and k=1 (√16 = 4: not twice), DVTS M=4.
  assert sum(1 for s in settings if s.budget == 16) == 5
  assert ("dvts", 16, "M=4,k=0") in names and ("dvts", 4, "M=2,k=0") in names
  assert SearchSetting("dvts", 16, beam_width=4).group_size == 4
  assert SearchSetting("beam", 16, beam_width=4).group_size == 16
  exact = paper_settings(budget_grid(4), distinct=False, verifier="exact")
  assert {s.params for s in exact} == {"verifier=exact"} | {
      f"{p},distinct=0,verifier=exact" for p in ("M=4,k=0", "M=4,k=3", "M=2,k=0", "M=2,k=3",
                                                 "M=2,k=1")}
  assert SearchSetting("lookahead", 16, beam_width=4, lookahead=3).generations == 64
  assert SearchSetting("beam", 16, beam_width=4).generations == 16


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="beam", budget=6, beam_width=4), "M=4 must divide the budget N=6"),
    (dict(method="lookahead", budget=8, beam_width=4), "k=0 is beam search"),
    (dict(method="bfs", budget=8), "search method 'bfs'"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SearchSetting(**kwargs)


def test_a_budget_grid_must_be_powers_of_two():
  assert budget_grid(8) == [1, 2, 4, 8]
  with pytest.raises(ValueError, match="search.max_budget=12"):
    budget_grid(12)


def test_a_setting_parses_from_its_text():
  grid = budget_grid(16)
  assert parse_setting("beam:N=16,M=2", grid) == SearchSetting("beam", 16, beam_width=2)
  assert parse_setting("lookahead:N=8,M=2,k=2", grid) == SearchSetting(
      "lookahead", 8, beam_width=2, lookahead=2)
  assert parse_setting("best_of_n:N=4", grid) == SearchSetting("best_of_n", 4)
  assert parse_setting("dvts:N=16,M=4,distinct=0,verifier=exact", grid) == SearchSetting(
      "dvts", 16, beam_width=4, distinct=False, verifier="exact")


@pytest.mark.parametrize("text, message", [
    ("beam:N=16,M=3", "'beam:N=16,M=3': beam width M=3 must divide the budget N=16"),
    ("beam:N=12,M=4", "budget N=12 is not on the grid"),
    ("bfs:N=4", "search method 'bfs'"),
    ("beam:M=2", "has no budget N="),
    ("beam:N=16,W=2", "expected METHOD:N=<int>"),
    ("beam:N=sixteen", "expected METHOD:N=<int>"),
    ("beam:N=16,M=4,verifier=oracle", "expected METHOD:N=<int>"),
    ("dvts:N=16,M=4,k=1", "dvts has lookahead k=0"),
])
def test_a_bad_setting_text_is_a_one_line_error_naming_the_field(text, message):
  with pytest.raises(ValueError, match="search.extra_settings: ") as error:
    parse_setting(text, budget_grid(16))
  assert message in str(error.value) and "\n" not in str(error.value)


def test_best_of_n_prefixes_choose_among_their_first_candidates_only():
  """Fails if best-of-n from a pool looks past its first n candidates, picks
  other than weighted best-of-n among them, or reports the pool's FLOPs or
  wall time rather than its first n's share."""
  task = get_task({"name": "arith", "min_ops": 1, "max_ops": 2, "max_operand": 9,
                   "max_multiplier": 3, "max_abs_value": 99})
  pool = runner.QuestionResult(
      answer="1", candidates=["Answer: 1", "Answer: 2", "Answer: 2", "Answer: 1"],
      scores=np.asarray([0.9, 0.5, 0.5, 0.3], np.float32), flops=100.0, policy_tokens=40,
      seconds=2.0, prefix_flops=np.asarray([40.0, 60.0, 80.0, 100.0]))
  picked = runner.prefix_results(pool, task, [1, 2, 3, 4])
  # Weighted sums: n=2 {1: 0.9, 2: 0.5}; n=3 {1: 0.9, 2: 1.0}; n=4 {1: 1.2, 2: 1.0}.
  assert [picked[n].answer for n in (1, 2, 3, 4)] == ["1", "1", "2", "1"]
  assert [picked[n].flops for n in (1, 2, 3, 4)] == [40.0, 60.0, 80.0, 100.0]
  assert picked[2].seconds == pytest.approx(1.0) and picked[2].candidates == pool.candidates[:2]
  with pytest.raises(ValueError, match="best-of-8 from a pool of 4"):
    runner.prefix_results(pool, task, [8])
