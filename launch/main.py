r"""Runs the study, stage by stage, in a workdir.

  python -m launch.main --config=configs/arith.py:tiny --workdir=/tmp/tts \
      [--stages=data,train_policy,eval_policy] [--config.train.num_steps=100]

Every stage is skipped when the workdir says it is done and resumes when it
was interrupted. Bad flags or a workdir made with other settings end with a
one-line `error: ...` on stderr and exit code 2, before anything is written.

On a TPU pod slice run the same command on every host (`gcloud compute tpus
tpu-vm ssh ... --worker=all`) with a workdir they share (`gs://...`);
`--multihost=auto` connects the hosts when the environment says there are
several (`ttscale.distributed`).
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ttscale import distributed, io_utils, pipeline, runtime

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/arith.py", "Config file, optionally with :variant.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every output goes.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 2,
    "On a CPU host, split it into this many JAX devices so that data-parallel "
    "work uses every core (1: one device).")
_MULTIHOST = flags.DEFINE_enum(
    "multihost", "auto", list(distributed.MODES),
    "Connect the hosts of a pod slice or cluster with jax.distributed: auto "
    "(when the environment names several hosts), on, off.")
_STAGES = flags.DEFINE_list("stages", None,
                            f"Stages to run (default all): {', '.join(pipeline.STAGES)}.")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with errors (a bad variant or override) on one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # config files raise any type; all are input errors.
    _fail(_one_line(error.__cause__ or error))


def _one_line(error: BaseException) -> str:
  """The telling line of a flag error (absl embeds config tracebacks)."""
  text = str(error.args[0] if len(error.args) == 1 else error).replace("\\n", "\n")
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if "Traceback" in text:
    return re.sub(r"^\w+(Error|Exception): ", "", lines[-1])
  if isinstance(error, (KeyError, AttributeError)):  # their text is a repr
    return "unknown config field " + " ".join(line.strip("'\\") for line in lines)
  return " ".join(lines)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    _fail("--workdir is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO.
  runtime.keep_freed_host_memory()
  runtime.split_host_cpu(_CPU_DEVICES.value)
  try:
    distributed.initialize(_MULTIHOST.value)  # before anything asks for devices
    # Second runs reuse compiled programs (process-wide, so set here only).
    # JAX reads and writes a gs:// cache through etils, like the workdir.
    import jax
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(io_utils.absolute(_WORKDIR.value), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    pipeline.run(_CONFIG.value, _WORKDIR.value, _STAGES.value)
  except ValueError as error:
    _fail(str(error))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
