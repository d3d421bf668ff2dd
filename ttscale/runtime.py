"""Process-level settings for running JAX on a host CPU.

Both settings here must be made before JAX starts its backends, so the
launchers call them first thing in `main`.

XLA's CPU backend allocates its temporaries with `malloc`, one block per
program run: ~280 MB for a training step of the default policy, ~600 MB for
the larger one. glibc serves large blocks with fresh `mmap`s and unmaps them
when freed, so every step page-faulted its buffers in again (72k faults a
step for the policy, 149k for the larger one): on this project's 2-core
machine that made small elementwise ops 3–4x slower and a training step
~20% slower. Raising the mmap threshold is not enough: glibc caps it at
32 MB, and the per-thread arenas of XLA's worker threads `mmap` any block
larger than their 64 MB heaps whatever the settings. So the settings here
put every thread on the main arena, which grows with `brk`, never `mmap`
blocks, and never hand freed memory back: the same effect as linking a
caching allocator; the process keeps its peak heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER = -1  # as M_TRIM_THRESHOLD: never give memory back (mallopt(3))


def keep_freed_host_memory() -> bool:
  """Asks glibc to keep freed memory for reuse; False where that is not glibc.

  Threads take their arena at their first `malloc`: call it before JAX starts
  its thread pools (a thread that already has an arena keeps it).
  """
  name = ctypes.util.find_library("c")
  if name is None:
    return False
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  return all([
      mallopt(_M_ARENA_MAX, 1) == 1,
      mallopt(_M_MMAP_MAX, 0) == 1,
      mallopt(_M_TRIM_THRESHOLD, _NEVER) == 1,
      mallopt(_M_TOP_PAD, 64 << 20) == 1,
  ])


def split_host_cpu(num_devices: int) -> None:
  """Makes the host CPU appear as `num_devices` JAX devices.

  Data-parallel work sharded over them runs one thread per device, which uses
  every core for the many small ops of a small model. Measured here on 2
  cores, 2 devices against 1: sampling ~2x faster (`--bench=decode`, batch
  256: 59k against 30k tokens/s); training about even (the default policy
  19k against 22k loss tokens/s, the larger one 8.0k against 7.6k). It
  only affects the CPU platform, and must run before JAX creates its
  backends; an `XLA_FLAGS` that already sets the count wins.
  """
  flag = "--xla_force_host_platform_device_count"
  current = os.environ.get("XLA_FLAGS", "")
  if num_devices > 1 and flag not in current:
    os.environ["XLA_FLAGS"] = f"{current} {flag}={num_devices}".strip()
