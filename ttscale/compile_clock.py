"""How long a stretch of the run spent turning Python into XLA programs.

On CPU a cold study spends a large share of its wall time tracing, lowering
and compiling (or loading from the persistent cache) its programs, and that
share is what fewer or smaller programs save. JAX reports each of those
phases through `jax.monitoring` as time spans; `CompileClock` measures the
wall time those spans cover while it is open. Spans nest (tracing a program
traces the programs it calls) and overlap across threads, so their union is
taken, not their sum.
"""

from __future__ import annotations

import threading

import jax

# The phases of getting a program ready to run. The backend phase includes a
# persistent-cache read when the program is found there.
_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
           "/jax/core/compile/jaxpr_to_mlir_module_duration",
           "/jax/core/compile/backend_compile_duration")

_lock = threading.Lock()
_open_clocks: list[CompileClock] = []
_listening = False


def _on_span(event: str, start: float, end: float, **_) -> None:
  if event in _EVENTS:
    with _lock:
      for clock in _open_clocks:
        clock.spans.append((start, end))


def covered_seconds(spans: list[tuple[float, float]]) -> float:
  """The length of the union of the intervals [start, end] in `spans`."""
  total, reach = 0.0, float("-inf")
  for start, end in sorted(spans):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total


class CompileClock:
  """`with CompileClock() as clock: ...`, then `clock.seconds`: the wall time
  in the block during which some thread was tracing, lowering or compiling
  (a program compiled on a worker thread counts too). Clocks may nest."""

  def __init__(self):
    self.spans: list[tuple[float, float]] = []

  @property
  def seconds(self) -> float:
    with _lock:
      return covered_seconds(self.spans)

  def __enter__(self) -> CompileClock:
    global _listening
    with _lock:
      if not _listening:
        jax.monitoring.register_event_time_span_listener(_on_span)
        _listening = True
      _open_clocks.append(self)
    return self

  def __exit__(self, *exc) -> None:
    with _lock:
      _open_clocks.remove(self)
