"""The study as stages, each resumable from the workdir; see `registry`."""

from ttscale.pipeline.config_checks import check_config
from ttscale.pipeline.context import Context
from ttscale.pipeline.registry import (
                                       check_stage_names,
                                       run,
                                       run_stage,
                                       validate_workdir,
)
from ttscale.pipeline.stages import STAGES, Stage

__all__ = ["STAGES", "Context", "Stage", "check_config", "check_stage_names", "run",
           "run_stage", "validate_workdir"]
