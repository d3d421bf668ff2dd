"""The compile clock: the union of compile spans, and a compile seen."""

import jax
import jax.numpy as jnp
import pytest

from ttscale.compile_clock import CompileClock, covered_seconds


def test_covered_seconds_counts_nested_and_overlapping_spans_once():
  """Fails if nested or overlapping spans are summed instead of merged."""
  spans = [(0.0, 4.0), (1.0, 2.0), (3.0, 6.0), (10.0, 11.0), (10.5, 10.75)]
  assert covered_seconds(spans) == pytest.approx(7.0)
  assert covered_seconds([]) == 0.0


def test_clock_sees_a_new_program_compile_and_not_a_cached_call():
  """Fails if a compile goes unseen, or if running a compiled program counts."""
  program = jax.jit(lambda x: jnp.tanh(x) * 3.0 + 0.5)
  with CompileClock() as outer:
    with CompileClock() as first:
      program(jnp.ones((3, 5))).block_until_ready()
    with CompileClock() as second:
      program(jnp.ones((3, 5))).block_until_ready()
  assert first.seconds > 0
  assert second.seconds == 0
  assert outer.seconds == pytest.approx(first.seconds)
