r"""Runs the study, stage by stage, in a workdir.

  python -m launch.main --config=configs/arith.py:tiny --workdir=/tmp/tts \
      [--stages=data,train_policy,eval_policy] [--config.train.num_steps=100]

Every stage is skipped when the workdir says it is done and resumes when it
was interrupted.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ttscale import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/arith.py", "Config file, optionally with :variant.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every output goes.",
                               required=True)
_STAGES = flags.DEFINE_list("stages", None,
                            f"Stages to run (default all): {', '.join(pipeline.STAGES)}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO.
  try:
    pipeline.run(_CONFIG.value, _WORKDIR.value, _STAGES.value)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
