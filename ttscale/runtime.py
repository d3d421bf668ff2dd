"""Process-level settings for running JAX on a host CPU.

XLA's CPU backend allocates its temporaries with `malloc`. glibc serves
blocks above a threshold with fresh `mmap`s and returns freed memory to the
OS, so every decode or train step page-faults its buffers in again: on this
project's 2-core machine that made small elementwise ops 3–4x slower and the
sampler ~1.5x slower. Raising glibc's mmap and trim thresholds keeps freed
blocks for reuse, the same effect as linking a caching allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling on 64-bit hosts


def keep_freed_host_memory() -> bool:
  """Asks glibc to keep freed memory for reuse; False where that is not glibc."""
  name = ctypes.util.find_library("c")
  if name is None:
    return False
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  return all([
      mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD) == 1,
      mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1,
      mallopt(_M_TOP_PAD, 64 << 20) == 1,
  ])
