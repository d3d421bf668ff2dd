"""The study's stages, in order, each resumable from the workdir.

A stage that finished writes `stages/<name>.json` (atomically, with its wall
time and summary); a re-run skips it. A stage killed half-way resumes from its
own checkpoints or outputs. Every stage is a plain function of a `Context`,
importable from a notebook:

    ctx = Context(config, workdir)
    run_stage(ctx, "eval_policy")
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable

import jax
from etils import epath

from ttscale import io_utils, outcomes
from ttscale.diffs import first_difference
from ttscale.models.checkpoint_import import check_checkpoint_config, check_checkpoint_paths
from ttscale.models.config import ModelConfig
from ttscale.pipeline import (
  policy_stages,
  revision_stages,
  search_stages,
  study_stages,
  verifier_stages,
  workdir_lock,
)
from ttscale.pipeline.context import BOOKKEEPING, Context, without
from ttscale.progress import format_seconds
from ttscale.search import sampling, select
from ttscale.search.best_of_n import SEARCH_AGGREGATIONS
from ttscale.search.budget import METHODS, budget_grid
from ttscale.training.checkpoints import check_spec

STAGES: dict[str, Callable[[Context], dict]] = {
    "data": policy_stages.stage_data,
    "train_policy": policy_stages.stage_train_policy,
    "eval_policy": policy_stages.stage_eval_policy,
    # Before the verifiers: it may be their trunk (`verifier_train.trunk`).
    "train_large": policy_stages.stage_train_large,
    "prm_labels": verifier_stages.stage_prm_labels,
    "train_prm": verifier_stages.stage_train_prm,
    "train_orm": verifier_stages.stage_train_orm,
    "eval_prm": verifier_stages.stage_eval_prm,
    "sweep_search": search_stages.stage_sweep_search,
    "revision_data": revision_stages.stage_revision_data,
    "train_revision": revision_stages.stage_train_revision,
    "train_revision_verifier": revision_stages.stage_train_revision_verifier,
    "sweep_revisions": revision_stages.stage_sweep_revisions,
    "difficulty": study_stages.stage_difficulty,
    "select": study_stages.stage_select,
    "flops_matched": study_stages.stage_flops_matched,
    "report": study_stages.stage_report,
}

_POLICY = ("seed", "task", "data", "checkpoint", "model", "train")
_PRM = (*_POLICY, "sampling", "prm", "verifier_train")
_REVISION = (*_POLICY, "sampling", "revision", "revision_train")

# The config blocks each stage's output depends on. A finished stage records
# them; re-running with other values is an error, not a silent reuse.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "data": ("task", "data", "checkpoint"),
    "train_policy": _POLICY,
    "eval_policy": (*_POLICY, "sampling", "eval"),
    "prm_labels": (*_POLICY, "sampling", "prm"),
    "train_prm": _PRM,
    "train_orm": _PRM,
    "eval_prm": (*_PRM, "eval_prm"),
    "sweep_search": (*_PRM, "search"),
    "revision_data": (*_POLICY, "sampling", "revision"),
    "train_revision": _REVISION,
    "train_revision_verifier": (*_REVISION, "prm", "verifier_train",
                                "revision_verifier_train"),
    "sweep_revisions": (*_REVISION, "prm", "verifier_train", "revision_verifier_train",
                        "sweep_revisions"),
    "difficulty": (*_PRM, "difficulty"),
    "select": (*_REVISION, "prm", "verifier_train", "revision_verifier_train", "search",
               "sweep_revisions", "difficulty"),
    "train_large": ("seed", "task", "data", "checkpoint", "large_model", "train"),
    "flops_matched": (*_REVISION, "prm", "verifier_train", "revision_verifier_train",
                      "search", "sweep_revisions", "difficulty", "large_model",
                      "flops_matched"),
    "report": (*_REVISION, "prm", "verifier_train", "revision_verifier_train", "search",
               "sweep_revisions", "difficulty", "large_model", "flops_matched"),
}


# Files a finished stage vouches for: their digests go into its marker. One
# cut or replaced afterwards (a kill mid-append, a file copied in) makes the
# next run re-run that stage and every stage after it that reads it.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "sweep_search": (os.path.join(*search_stages.SEARCH_TABLE),),
    "sweep_revisions": (os.path.join(*revision_stages.REVISION_TABLE),),
    "difficulty": (study_stages.DIFFICULTY,),
    "select": (study_stages.SELECT,),
}


# Where the PRM and ORM start from (`verifier_train.trunk`).
VERIFIER_TRUNKS = ("policy", "large")
# What training does with examples longer than `data.seq_len`.
TOO_LONG = ("skip", "truncate", "refuse")
# The PRM's targets (`verifier_train.step_labels`).
STEP_LABELS = ("soft", "hard")

# The stages whose outputs a stage reads (each with its own prerequisites).
STAGE_REQUIRES: dict[str, tuple[str, ...]] = {
    "data": (),
    "train_policy": ("data",),
    "eval_policy": ("train_policy",),
    "prm_labels": ("train_policy",),
    "train_prm": ("prm_labels",),
    "train_orm": ("prm_labels",),
    "eval_prm": ("train_prm", "train_orm"),
    "sweep_search": ("train_prm",),
    "revision_data": ("train_policy",),
    "train_revision": ("revision_data",),
    # It compares its verifier with the base PRM on held-out attempts.
    "train_revision_verifier": ("train_revision", "train_prm"),
    "sweep_revisions": ("train_revision_verifier",),
    "difficulty": ("train_prm",),
    "select": ("sweep_search", "sweep_revisions", "difficulty"),
    "train_large": ("data",),
    "flops_matched": ("select", "train_large"),
    "report": ("select",),
}


def _requires(config, name: str) -> tuple[str, ...]:
  """The stages `name` reads directly; the verifiers also read the larger
  policy when it is their trunk."""
  if name in ("train_prm", "train_orm") and config.verifier_train.trunk == "large":
    return (*STAGE_REQUIRES[name], "train_large")
  return STAGE_REQUIRES[name]


def _prerequisites(config, name: str) -> list[str]:
  """Every stage `name` needs, directly or not, in pipeline order."""
  needed, pending = set(), list(_requires(config, name))
  while pending:
    stage = pending.pop()
    if stage not in needed:
      needed.add(stage)
      pending.extend(_requires(config, stage))
  return [stage for stage in STAGES if stage in needed]


def _digest(path: str) -> str | None:
  return (hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()
          if epath.Path(path).exists() else None)


def invalidate_changed_outputs(ctx: Context) -> list[str]:
  """Removes the markers of finished stages whose outputs changed since
  (`STAGE_OUTPUTS`), and of the stages that read them; returns their names."""
  changed = {}
  for name in STAGE_OUTPUTS:
    marker = ctx.path("stages", f"{name}.json")
    if epath.Path(marker).exists():
      for relative, digest in io_utils.read_json(marker).get("outputs", {}).items():
        if _digest(ctx.path(relative)) != digest:
          changed[name] = relative
          break
  stale = [stage for stage in STAGES
           if stage in changed or set(_prerequisites(ctx.config, stage)) & set(changed)]
  for stage in stale:
    marker = epath.Path(ctx.path("stages", f"{stage}.json"))
    if marker.exists():
      why = (f"{changed[stage]} changed after it finished (cut or replaced)"
             if stage in changed else "it reads what changed")
      ctx.log(f"stage {stage}: to run again: {why}")
      marker.unlink()
  return stale


def check_prerequisites(ctx: Context, names: list[str]) -> None:
  """Raises ValueError when a stage needs one neither done nor requested."""
  for name in names:
    for stage in _prerequisites(ctx.config, name):
      if stage not in names and not epath.Path(ctx.path("stages", f"{stage}.json")).exists():
        raise ValueError(f"stage {name} needs stage {stage}, which is not done in "
                         f"{ctx.workdir}: run it first or add it to --stages")


def _stage_input_keys(config, name: str) -> tuple[str, ...]:
  """STAGE_INPUTS, with the larger policy's blocks for stages that depend on
  a verifier whose trunk it is."""
  keys = STAGE_INPUTS[name]
  if "verifier_train" in keys and config.verifier_train.trunk == "large":
    keys = (*keys, *(k for k in STAGE_INPUTS["train_large"] if k not in keys))
  return keys


def _stage_inputs(config, name: str) -> dict:
  values = {}
  for key in _stage_input_keys(config, name):
    value = config[key]
    value = value.to_dict() if hasattr(value, "to_dict") else value
    values[key] = without(value, BOOKKEEPING) if key.endswith("train") else value
  return json.loads(json.dumps(values))


def validate_workdir(ctx: Context, names: list[str]) -> None:
  """Checks, reading only, that the workdir was made with this config.

  Raises ValueError naming the first field that differs from a finished
  stage's record or from the policy checkpoint's spec.
  """
  for name in names:
    marker = ctx.path("stages", f"{name}.json")
    if not epath.Path(marker).exists():
      continue
    recorded = io_utils.read_json(marker).get("inputs")
    if not isinstance(recorded, dict):
      raise ValueError(f"{marker}: no 'inputs' record; the workdir is damaged")
    difference = first_difference(_stage_inputs(ctx.config, name), recorded)
    if difference:
      raise ValueError(
          f"stage {name} in {ctx.workdir} was done with other settings: "
          f"{difference}; use a new --workdir or the settings it was made with")
  if epath.Path(ctx.path("tokenizer.model")).exists():
    check_spec(ctx.path("policy"), ctx.policy_spec())
    check_spec(ctx.path("large"), ctx.policy_spec(large=True))
    for kind in ("prm", "orm"):
      for part in ("state", "best"):
        check_spec(ctx.path(kind, part), ctx.verifier_spec(kind))
    if epath.Path(ctx.path("revision")).is_dir():
      for part in ("state", "best"):
        check_spec(ctx.path("revision", part), ctx.revision_spec())
        check_spec(ctx.path("revision_verifier", part), ctx.verifier_spec("revision_verifier"))
    if "sweep_search" in names:
      outcomes.check_meta(ctx.path(*search_stages.SEARCH_TABLE),
                          search_stages.search_table_meta(ctx))
    if "sweep_revisions" in names:
      outcomes.check_meta(ctx.path(*revision_stages.REVISION_TABLE),
                          revision_stages.revision_table_meta(ctx))


def check_stage_names(names) -> list[str]:
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise ValueError(f"--stages: unknown stage {unknown[0]!r}; expected some "
                     f"of {', '.join(STAGES)}")
  return [name for name in STAGES if name in names]  # always in pipeline order


def _check_networks_and_sampling(config) -> None:
  """The network blocks and the sampling rule, as the stages will build them
  (any vocabulary size: the tokenizer's is not known before the data stage)."""
  for block in ("model", "large_model"):
    try:
      ModelConfig.from_config(config[block], vocab_size=2)
    except ValueError as error:  # name the block the value came from
      raise ValueError(str(error).replace("model.", f"{block}.")) from None
  try:
    sampling.SamplingRule(config.sampling.temperature, config.sampling.top_p)
  except ValueError as error:
    raise ValueError(f"sampling.{error}") from None


def check_config(config) -> None:
  """Raises ValueError naming the first config field with a value no stage takes."""
  _check_networks_and_sampling(config)
  if config.data.get("too_long", "skip") not in TOO_LONG:
    raise ValueError(f"data.too_long={config.data.too_long!r}: expected one of "
                     f"{', '.join(TOO_LONG)}")
  check_checkpoint_config(config.checkpoint)
  check_checkpoint_paths(config.checkpoint)
  aggregations = list(config.eval_prm.aggregations)
  for how in aggregations:
    if how not in select.STEP_AGGREGATIONS:
      raise ValueError(f"eval_prm.aggregations: unknown aggregation {how!r}; expected "
                       f"some of {', '.join(select.STEP_AGGREGATIONS)}")
  if "last" not in aggregations:
    raise ValueError("eval_prm.aggregations: must include 'last' (the PRM best-of-N "
                     "baseline reads it)")
  if config.search.step_aggregation not in SEARCH_AGGREGATIONS:
    raise ValueError(f"search.step_aggregation={config.search.step_aggregation!r}: expected "
                     f"one of {', '.join(SEARCH_AGGREGATIONS)}")
  if config.search.step_aggregation not in aggregations:
    raise ValueError(f"eval_prm.aggregations: must include search.step_aggregation="
                     f"{config.search.step_aggregation!r} (the PRM best-of-N baseline reads it)")
  if config.verifier_train.trunk not in VERIFIER_TRUNKS:
    raise ValueError(f"verifier_train.trunk={config.verifier_train.trunk!r}: expected one of "
                     f"{', '.join(VERIFIER_TRUNKS)}")
  if config.verifier_train.step_labels not in STEP_LABELS:
    raise ValueError(f"verifier_train.step_labels={config.verifier_train.step_labels!r}: "
                     f"expected one of {', '.join(STEP_LABELS)}")
  if config.verifier_train.trunk == "large" and config.checkpoint.prm:
    raise ValueError("checkpoint.prm gives the PRM its trunk: set verifier_train.trunk="
                     "'policy' with it, or leave checkpoint.prm empty")
  if not 0 < config.prm.holdout_fraction < 1:
    raise ValueError(f"prm.holdout_fraction={config.prm.holdout_fraction}: expected "
                     "a fraction in (0, 1)")
  budget_grid(config.search.max_budget)
  if config.search.best_of_n_max_budget < config.search.max_budget:
    raise ValueError(f"search.best_of_n_max_budget={config.search.best_of_n_max_budget}: "
                     f"expected >= search.max_budget={config.search.max_budget}")
  budget_grid(config.search.best_of_n_max_budget, "search.best_of_n_max_budget")
  for field in ("methods", "exact_methods"):
    for method in config.search.get(field, ()):
      if method not in METHODS:
        raise ValueError(f"search.{field}: unknown method {method!r}; expected some of "
                         f"{', '.join(METHODS)}")
  search_stages.sweep_settings(config.search)
  revision_stages.sweep_splits(config.sweep_revisions)
  swept = min(config.search.num_questions, config.sweep_revisions.num_questions)
  if config.difficulty.num_questions > swept:
    raise ValueError(f"difficulty.num_questions={config.difficulty.num_questions}: expected "
                     f"<= {swept}, the questions both sweeps evaluate "
                     "(search.num_questions, sweep_revisions.num_questions)")
  if not 0 < config.revision.holdout_fraction < 1:
    raise ValueError(f"revision.holdout_fraction={config.revision.holdout_fraction}: "
                     "expected a fraction in (0, 1)")
  if not 0 <= config.revision.policy_data_fraction < 1:
    raise ValueError(f"revision.policy_data_fraction={config.revision.policy_data_fraction}: "
                     "expected a fraction in [0, 1)")
  if not 0 <= config.revision.get("keep_fraction", 0.0) <= 1:
    raise ValueError(f"revision.keep_fraction={config.revision.keep_fraction}: "
                     "expected a fraction in [0, 1]")
  pool = config.eval_prm.pool_size
  if pool < 1 or pool & (pool - 1):
    raise ValueError(f"eval_prm.pool_size={pool}: expected a power of 2 (the budget "
                     "grid is 1, 2, 4, ...)")


def run_stage(ctx: Context, name: str) -> dict:
  """Runs one stage unless its marker says it is done; returns the marker."""
  marker = ctx.path("stages", f"{name}.json")
  if epath.Path(marker).exists():
    record = io_utils.read_json(marker)
    ctx.log(f"stage {name}: already done "
            f"({format_seconds(record['seconds'])}), skipped")
    return record
  ctx.log(f"stage {name}: running")
  started = time.time()
  summary = STAGES[name](ctx)
  record = {"stage": name, "seconds": time.time() - started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary,
            "inputs": _stage_inputs(ctx.config, name),
            "outputs": {relative: _digest(ctx.path(relative))
                        for relative in STAGE_OUTPUTS.get(name, ())}}
  io_utils.write_json_atomic(marker, record)
  ctx.log(f"stage {name}: done in {format_seconds(record['seconds'])}")
  return record


def run(config, workdir: str, stages=None, log: Callable[[str], None] = print) -> dict:
  """Runs `stages` (default: all, in order); returns {stage: marker record}."""
  names = check_stage_names(stages or list(STAGES))
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
