"""Session setup: 8 fake CPU devices, fixed before JAX is first imported.

Single-device code runs on device 0 as usual; `tests/test_parallel.py` lays
meshes over all 8.
"""

import os

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count=8"

if _DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      flag for flag in (os.environ.get("XLA_FLAGS", ""), _DEVICE_COUNT_FLAG) if flag)
