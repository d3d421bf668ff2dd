"""Running the study's stages, each resumable from the workdir.

A stage that finished writes `stages/<name>.json` (atomically, with its wall
time, summary, inputs and the digests of the files it vouches for); a re-run
skips it. A stage killed half-way resumes from its own checkpoints or
outputs. Every stage is a plain function of a `Context`, importable from a
notebook:

    ctx = Context(config, workdir)
    run_stage(ctx, "eval_policy")
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
from etils import epath

from ttscale import io_utils, layout
from ttscale.compile_clock import CompileClock
from ttscale.pipeline import workdir_lock
from ttscale.pipeline.config_checks import check_config
from ttscale.pipeline.context import Context
from ttscale.pipeline.fingerprints import check_workdir, digest, stage_inputs
from ttscale.pipeline.model_blocks import derive_model_blocks
from ttscale.pipeline.stages import STAGES
from ttscale.progress import format_seconds


def _prerequisites(config, name: str) -> list[str]:
  """Every stage `name` needs, directly or not, in pipeline order."""
  needed, pending = set(), list(STAGES[name].required(config))
  while pending:
    stage = pending.pop()
    if stage not in needed:
      needed.add(stage)
      pending.extend(STAGES[stage].required(config))
  return [stage for stage in STAGES if stage in needed]


def _is_done(ctx: Context, name: str) -> bool:
  return epath.Path(ctx.path(layout.marker(name))).exists()


def invalidate_changed_outputs(ctx: Context) -> list[str]:
  """Removes the markers of finished stages whose outputs changed since
  (`Stage.vouches_for`), and of the stages that read them; returns their names."""
  changed = {}
  for stage in STAGES.values():
    if stage.vouches_for and _is_done(ctx, stage.name):
      marker = io_utils.read_json(ctx.path(layout.marker(stage.name)))
      for relative, recorded in marker.get("outputs", {}).items():
        if digest(ctx.path(relative)) != recorded:
          changed[stage.name] = relative
          break
  stale = [stage for stage in STAGES
           if stage in changed or set(_prerequisites(ctx.config, stage)) & set(changed)]
  for stage in stale:
    if _is_done(ctx, stage):
      why = (f"{changed[stage]} changed after it finished (cut or replaced)"
             if stage in changed else "it reads what changed")
      ctx.log(f"stage {stage}: to run again: {why}")
      epath.Path(ctx.path(layout.marker(stage))).unlink()
  return stale


def check_prerequisites(ctx: Context, names: list[str]) -> None:
  """Raises ValueError when a stage needs one neither done nor requested."""
  for name in names:
    for stage in _prerequisites(ctx.config, name):
      if stage not in names and not _is_done(ctx, stage):
        raise ValueError(f"stage {name} needs stage {stage}, which is not done in "
                         f"{ctx.workdir}: run it first or add it to --stages")


def validate_workdir(ctx: Context, names: list[str]) -> None:
  """Checks, reading only, that the workdir was made with this config
  (`fingerprints.check_workdir`); raises ValueError naming the first field
  that differs."""
  check_workdir(ctx, STAGES.values(), names)


def check_stage_names(names) -> list[str]:
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise ValueError(f"--stages: unknown stage {unknown[0]!r}; expected some "
                     f"of {', '.join(STAGES)}")
  return [name for name in STAGES if name in names]  # always in pipeline order


def run_stage(ctx: Context, name: str) -> dict:
  """Runs one stage unless its marker says it is done; returns the marker."""
  marker = ctx.path(layout.marker(name))
  if epath.Path(marker).exists():
    record = io_utils.read_json(marker)
    ctx.log(f"stage {name}: already done "
            f"({format_seconds(record['seconds'])}), skipped")
    return record
  ctx.log(f"stage {name}: running")
  started = time.time()
  stage = STAGES[name]
  with CompileClock() as compiling:
    summary = stage.run(ctx)
  record = {"stage": name, "seconds": time.time() - started,
            "compile_seconds": round(compiling.seconds, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary,
            "inputs": stage_inputs(ctx.config, stage),
            "outputs": {relative: digest(ctx.path(relative)) for relative in stage.vouches_for}}
  io_utils.write_json_atomic(marker, record)
  ctx.log(f"stage {name}: done in {format_seconds(record['seconds'])} "
          f"({format_seconds(compiling.seconds)} of it compiling)")
  return record


def run(config, workdir: str, stages=None, log: Callable[[str], None] = print) -> dict:
  """Runs `stages` (default: all, in order); returns {stage: marker record}."""
  names = check_stage_names(stages or list(STAGES))
  config = derive_model_blocks(config)
  check_config(config)
  ctx = Context(config, workdir, log)
  if "://" not in ctx.workdir:
    workdir_lock.check_usable(ctx.workdir)
  validate_workdir(ctx, names)
  check_prerequisites(ctx, names)
  # Every check above only reads: the lock is the run's first write.
  with workdir_lock.hold(ctx.workdir, log):
    log(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; "
        f"mesh {dict(ctx.mesh.shape)}")
    if invalidate_changed_outputs(ctx):
      check_prerequisites(ctx, names)
    records = {name: run_stage(ctx, name) for name in names}
  total = sum(r["seconds"] for r in records.values())
  timings = ", ".join(f"{name} {format_seconds(record['seconds'])}"
                      for name, record in records.items())
  log(f"stages: {timings}; total {format_seconds(total)}")
  return records
