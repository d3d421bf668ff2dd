"""What a workdir's artefacts were made with, and the one guard that checks it.

Three kinds of artefact record their making, each in the form it has always
had on disk (so that workdirs of earlier runs are still read):

- a finished stage's marker (`stages/<name>.json`, field `inputs`): the
  config blocks its output depends on (`Stage.inputs`);
- a checkpoint directory's `spec.json`: the network, its training, the
  tokenizer, and the checkpoints it started from (`policy_spec`,
  `verifier_spec`, `revision_spec`);
- an outcome table's `.meta.json`: what its rows depend on
  (`search_table_meta`, `revision_table_meta`).

The builders live here, once: the stages write with them (checkpointers,
tables) and `check_workdir` compares with them, before any write, naming the
first field that differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

from etils import epath

from ttscale import io_utils, layout, outcomes
from ttscale.diffs import first_difference
from ttscale.models.config import comparable_record, comparable_records
from ttscale.tasks import revision
from ttscale.training.checkpoints import check_spec

if TYPE_CHECKING:
  from ttscale.pipeline.context import Context
  from ttscale.pipeline.stages import Stage

# Fields that change how a stage reports or checkpoints, never its result.
BOOKKEEPING = ("log_every", "checkpoint_every", "max_checkpoints")


def without(block: dict, keys) -> dict:
  return {k: v for k, v in block.items() if k not in keys}


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  """An artefact that records what made it: a checkpoint directory (its
  `spec.json`) or an outcome table (its `.meta.json`)."""
  path: str                                      # in the workdir (`layout`)
  expected: Callable[[Context], dict]            # what it must record now
  kind: Literal["checkpoint", "table"] = "checkpoint"

  def check(self, ctx: Context) -> None:
    """Raises ValueError naming the first field that differs; reads only."""
    if self.kind == "checkpoint":
      check_spec(ctx.path(self.path), self.expected(ctx))
    else:
      outcomes.check_meta(ctx.path(self.path), self.expected(ctx), comparable_records)


# ------------------------------------------------------------------ stage markers


def stage_inputs(config, stage: Stage) -> dict:
  """{block: value} of the config blocks `stage` depends on, as its marker
  records them (training blocks without their bookkeeping fields)."""
  values = {}
  for key in stage.input_blocks(config):
    value = config[key]
    value = value.to_dict() if hasattr(value, "to_dict") else value
    values[key] = without(value, BOOKKEEPING) if key.endswith("train") else value
  return json.loads(json.dumps(values))


def _comparable_inputs(inputs: dict) -> dict:
  """Stage inputs with the network blocks as `comparable_record` makes them:
  a field a block leaves out is its default (as `ModelConfig.from_config`
  reads it), so that a field added to the config with its default value
  does not refuse workdirs made before."""
  return {key: comparable_record(value) if key in ("model", "large_model") else value
          for key, value in inputs.items()}


def _check_marker(ctx: Context, stage: Stage) -> None:
  marker = ctx.path(layout.marker(stage.name))
  if not epath.Path(marker).exists():
    return
  recorded = io_utils.read_json(marker).get("inputs")
  if not isinstance(recorded, dict):
    raise ValueError(f"{marker}: no 'inputs' record; the workdir is damaged")
  difference = first_difference(_comparable_inputs(stage_inputs(ctx.config, stage)),
                                _comparable_inputs(recorded))
  if difference:
    raise ValueError(
        f"stage {stage.name} in {ctx.workdir} was done with other settings: "
        f"{difference}; use a new --workdir or the settings it was made with")


def check_workdir(ctx: Context, stages: Iterable[Stage], names: list[str]) -> None:
  """Checks, reading only, that the workdir was made with this config.

  The markers of the stages to run (`names`) first; then every checkpoint on
  disk, whichever stage runs (any stage may load a network); then the
  outcome tables of the sweeps to run (only a sweep appends to its table; the
  stages that read it have its blocks among their inputs).

  Raises:
    ValueError: one line naming the first field that differs.
  """
  stages = list(stages)
  for stage in stages:
    if stage.name in names:
      _check_marker(ctx, stage)
  # Every record names the tokenizer: without one there is nothing to match.
  if not epath.Path(ctx.path(layout.TOKENIZER)).exists():
    return
  for kind in ("checkpoint", "table"):
    for stage in stages:
      for fingerprint in stage.made_with:
        if fingerprint.kind == kind and (kind == "checkpoint" or stage.name in names):
          fingerprint.check(ctx)


# ------------------------------------------------------------------ checkpoint specs


def policy_spec(ctx: Context, large: bool = False) -> dict:
  """What a policy checkpoint must have been trained with to be reused."""
  return {"tokenizer": ctx.tokenizer.fingerprint,
          "model": dataclasses.asdict(ctx.policy_config(large)),
          "train": without(ctx.config.train.to_dict(), BOOKKEEPING),
          "data": ctx.config.data.to_dict(),
          "task": ctx.config.task.to_dict(),
          "init": ctx.init_checkpoint("large" if large else "policy")}


def verifier_spec(ctx: Context, kind: str) -> dict:
  """What a verifier checkpoint of `kind` must have been trained with.

  The vocabulary comes first, so that a checkpoint of another tokenizer is
  reported as such. The revision verifier also depends on the revision
  model that wrote its training data.
  """
  trunk_is_large = ctx.verifier_trunk_is_large(kind)
  spec = {"vocab_size": ctx.tokenizer.vocab_size,
          "tokenizer": ctx.tokenizer.fingerprint,
          "kind": kind,
          "model": dataclasses.asdict(ctx.verifier_config(kind)),
          "verifier_train": without(ctx.verifier_train_config(kind).to_dict(), BOOKKEEPING),
          "prm": ctx.config.prm.to_dict(),
          "policy": policy_spec(ctx),
          # The trunk's own training, when it is not the policy's.
          "trunk": policy_spec(ctx, large=True) if trunk_is_large else None,
          "init": ctx.init_checkpoint("prm") if kind == "prm" else None}
  if kind == "revision_verifier":
    spec.update(revision=revision_spec(ctx), prm=None)
  return spec


def revision_spec(ctx: Context) -> dict:
  """What a revision-model checkpoint must have been trained with."""
  return {"vocab_size": ctx.tokenizer.vocab_size,
          "tokenizer": ctx.tokenizer.fingerprint,
          "kind": "revision",
          "prompt_format": revision.PROMPT_FORMAT,
          "model": dataclasses.asdict(ctx.policy_config()),
          "revision": ctx.config.revision.to_dict(),
          "revision_train": without(ctx.config.revision_train.to_dict(), BOOKKEEPING),
          "policy": policy_spec(ctx)}


def model_spec(ctx: Context, kind: str) -> dict:
  """The spec of an early-stopped model of `kind` ("prm", "orm", "revision",
  "revision_verifier")."""
  return revision_spec(ctx) if kind == "revision" else verifier_spec(ctx, kind)


def early_stopped(kind: str) -> tuple[Fingerprint, ...]:
  """The two checkpoint directories (`state`, `best`) of an early-stopped model."""
  return tuple(Fingerprint(layout.checkpoints(kind, part),
                           lambda ctx, kind=kind: model_spec(ctx, kind))
               for part in ("state", "best"))


# ------------------------------------------------------------------ table metas


def search_table_meta(ctx: Context) -> dict:
  """What the search rows depend on: a table made otherwise is not appended to."""
  # Which settings run (methods, verifiers, budget caps, distinct beams: each
  # is named in its rows' params) decides which rows exist, not what they
  # hold: a table can be extended with more of them.
  search = without(ctx.config.search.to_dict(),
                   ("methods", "max_budget", "best_of_n_max_budget", "extra_settings",
                    "verifiers", "exact_max_budget", "exact_methods", "distinct_beams"))
  return {"policy": policy_spec(ctx), "prm": verifier_spec(ctx, "prm"),
          "sampling": ctx.config.sampling.to_dict(), "search": search,
          "seed": ctx.config.seed}


def revision_table_meta(ctx: Context) -> dict:
  """What the revision rows depend on: a table made otherwise is not appended to."""
  # Which splits run decides which rows exist, not what they hold.
  sweep = without(ctx.config.sweep_revisions.to_dict(), ("max_budget", "splits"))
  return {"revision": revision_spec(ctx),
          "revision_verifier": verifier_spec(ctx, "revision_verifier"),
          "prm": verifier_spec(ctx, "prm"), "sampling": ctx.config.sampling.to_dict(),
          "sweep_revisions": sweep, "seed": ctx.config.seed}


def digest(path: str) -> str | None:
  """sha256 of a file a finished stage vouches for; None when it is missing."""
  file = epath.Path(path)
  return hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else None
