r"""Benchmarks that print JSON.

  python -m launch.bench --bench=decode [--config=configs/arith.py]
  python -m launch.bench --bench=search --workdir=workdir \
      [--config.search.max_budget=256 --budgets=16,64,256]
  python -m launch.bench --bench=grader [--fuzz_count=3000]
  python -m launch.bench --bench=train [--config=configs/arith.py]

`decode`: sampler tokens/s at batch 1, 16, 64, 256 for the config's policy
size, next to this machine's f32 matmul rate and memory bandwidth measured in
the same run, and the fraction of the roofline achieved:

  roofline tokens/s = 1 / max(flops_per_token / matmul_flops_per_s,
                              bytes_per_token / memory_bytes_per_s)
  flops_per_token   = 2 × matmul parameters + 4 × layers × heads × head_dim × context
  bytes_per_token   = KV cache read (2 × layers × kv_heads × head_dim × 4 B × context)
                      + parameter bytes / batch

with `context` the mean number of real tokens attended over the run
(prompt + half the new tokens). The machine's rates are measured in the same
run: an f32 1024² matmul and a read-only sum over 64 MiB. Rows are split over
the host's JAX devices (`--cpu_devices`) when they divide evenly.

`search`: with the trained policy and PRM of `--workdir`, wall time per
question of best-of-N, beam search (M=4) and lookahead (k=3, M=4) at each
budget, their ratio to best-of-N, policy tokens decoded per second (rollouts
included), and the PRM's share of the time (each program timed again with
its PRM calls left out); see `launch.bench_lib.search_benchmark`.

`train`: training steps per second of the policy, the larger policy and the
PRM at their configs' batch sizes and a row width of `data.seq_len`, and of
the revision model on rows of `revision.seq_len`, tokens/s,
and the fraction of the matmul rate measured in the same run (a step counted
as 3x the forward FLOPs, 1x for a PRM whose trunk stays as trained); see
`launch.bench_lib.train_benchmark`.

`grader`: the MATH grader on fuzzed answers (`ttscale.tasks.math_fuzz`):
strings, errors raised (should be 0), mean and worst seconds per string.
"""

import json
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from launch import bench_lib
from ttscale import runtime

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/arith.py", "Config file (its model block is benchmarked).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 2,
    "On a CPU host, split it into this many JAX devices so that data-parallel "
    "work uses every core (1: one device).")
_BENCH = flags.DEFINE_enum("bench", "decode", ["decode", "search", "grader", "train"],
                           "What to measure.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "search: a workdir with a trained policy and PRM (stages through "
    "train_prm) made with --config.")
_BUDGETS = flags.DEFINE_list(
    "budgets", None, "search: budgets N on the config's grid (default: its three largest "
    "from 16 up; raise --config.search.max_budget for more).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16", "64", "256"],
                                 "Decode batch sizes.")
_FUZZ_COUNT = flags.DEFINE_integer(
    "fuzz_count", 3000, "grader: random strings (the adversarial ones are added).")
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 27, "Vocabulary size (the embedded task's tokenizer has 27).")


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO.
  runtime.keep_freed_host_memory()
  runtime.split_host_cpu(_CPU_DEVICES.value)
  del argv
  started = time.time()
  if _BENCH.value == "decode":
    result = bench_lib.decode_benchmark(
        _CONFIG.value, [int(b) for b in _BATCH_SIZES.value], _VOCAB_SIZE.value)
  elif _BENCH.value == "grader":
    result = bench_lib.grader_benchmark(_FUZZ_COUNT.value)
  elif _BENCH.value == "train":
    result = bench_lib.train_benchmark(_CONFIG.value, _VOCAB_SIZE.value)
  else:
    if not _WORKDIR.value:
      print("error: --bench=search needs --workdir with a trained policy and PRM",
            file=sys.stderr)
      sys.exit(2)
    try:
      budgets = [int(b) for b in _BUDGETS.value] if _BUDGETS.value else None
      result = bench_lib.search_benchmark(_CONFIG.value, _WORKDIR.value, budgets)
    except ValueError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)
  result["bench_seconds"] = round(time.time() - started, 1)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
