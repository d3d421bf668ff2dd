"""Process-level settings: freed host memory is kept for reuse.

Each check runs in a fresh interpreter, since the settings are process-wide
and must be made before threads take their malloc arenas.
"""

import ctypes.util
import json
import subprocess
import sys
import textwrap

import pytest

_PAGE = 4096
_BLOCK = 300 << 20  # larger than a worker thread's 64 MB arena heap

# A worker thread allocates a block, touches every page, frees it, twice; it
# prints the page faults of each round.
_SCRIPT = textwrap.dedent("""
    import ctypes, json, resource, sys, threading
    from ttscale import runtime
    applied = runtime.keep_freed_host_memory() if sys.argv[1] == "keep" else None
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []

    def rounds():
      for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(BLOCK)
        ctypes.memset(block, 1, BLOCK)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    thread = threading.Thread(target=rounds)
    thread.start()
    thread.join()
    print(json.dumps({"applied": applied, "faults": faults}))
""").replace("BLOCK", str(_BLOCK))


def _faults(mode: str) -> dict:
  result = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True,
                          text=True, check=True, timeout=60)
  return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="glibc's mallopt")
def test_a_thread_reuses_a_freed_large_block_without_faulting_it_in_again():
  pages = _BLOCK // _PAGE
  default = _faults("default")
  # Without the settings the thread's block is mmapped afresh each round: the
  # check can tell the two apart.
  assert default["faults"][1] > 0.9 * pages
  kept = _faults("keep")
  assert kept["applied"] is True
  assert kept["faults"][0] > 0.9 * pages  # the first touch faults, as always
  assert kept["faults"][1] < 0.05 * pages
