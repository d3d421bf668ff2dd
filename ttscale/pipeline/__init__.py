"""The study as stages, each resumable from the workdir; see `registry`."""

from ttscale.pipeline.context import Context
from ttscale.pipeline.registry import (
                                       STAGE_INPUTS,
                                       STAGES,
                                       check_config,
                                       check_stage_names,
                                       run,
                                       run_stage,
                                       validate_workdir,
)

__all__ = ["STAGES", "STAGE_INPUTS", "Context", "check_config", "check_stage_names", "run",
           "run_stage", "validate_workdir"]
