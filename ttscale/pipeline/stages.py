"""The study's stages, each declared once: what it runs, reads, depends on and writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ttscale import layout
from ttscale.pipeline import (
  policy_stages,
  revision_stages,
  revision_sweep_stages,
  search_stages,
  study_stages,
  verifier_stages,
)
from ttscale.pipeline.context import Context
from ttscale.pipeline.fingerprints import (
  Fingerprint,
  early_stopped,
  policy_spec,
  revision_table_meta,
  search_table_meta,
)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of the study."""
  name: str
  run: Callable[[Context], dict]  # does the work; returns the marker's summary
  # The stages whose outputs it reads (each with its own prerequisites).
  requires: tuple[str, ...]
  # The config blocks its output depends on. A finished stage records their
  # values; re-running with others is an error, not a silent reuse.
  inputs: tuple[str, ...]
  # What it writes in the workdir (`layout` paths).
  writes: tuple[str, ...]
  # Files it vouches for: their digests go into its marker. One cut or
  # replaced afterwards (a kill mid-append, a file copied in) makes the next
  # run re-run this stage and every stage after it that reads it.
  vouches_for: tuple[str, ...] = ()
  # Artefacts that record what made them (checkpoints, tables).
  made_with: tuple[Fingerprint, ...] = ()
  # A verifier reads its trunk: the larger policy with `verifier_train.trunk="large"`.
  reads_verifier_trunk: bool = False

  def required(self, config) -> tuple[str, ...]:
    """The stages it reads directly, under `config`."""
    if self.reads_verifier_trunk and config.verifier_train.trunk == "large":
      return (*self.requires, "train_large")
    return self.requires

  def input_blocks(self, config) -> tuple[str, ...]:
    """`inputs`, with the larger policy's blocks when a verifier it depends
    on has that policy as its trunk."""
    if "verifier_train" in self.inputs and config.verifier_train.trunk == "large":
      return (*self.inputs, *(k for k in _LARGE if k not in self.inputs))
    return self.inputs


_POLICY = ("seed", "task", "data", "checkpoint", "model", "train")
_LARGE = ("seed", "task", "data", "checkpoint", "large_model", "train")
_PRM = (*_POLICY, "sampling", "prm", "verifier_train")
_REVISION = (*_POLICY, "sampling", "revision", "revision_train")
_REVISION_VERIFIER = (*_REVISION, "prm", "verifier_train", "revision_verifier_train")
_STUDY = (*_REVISION_VERIFIER, "search", "sweep_revisions", "difficulty")


def _checkpoints(kind: str) -> tuple[str, ...]:
  """The `state` and `best` directories of an early-stopped model."""
  return (layout.checkpoints(kind, "state"), layout.checkpoints(kind, "best"))


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("data", policy_stages.stage_data, (), ("task", "data", "checkpoint"),
          (layout.DATA, layout.TOKENIZER)),
    Stage("train_policy", policy_stages.stage_train_policy, ("data",), _POLICY,
          (layout.POLICY, layout.METRICS),
          made_with=(Fingerprint(layout.POLICY, policy_spec),)),
    Stage("eval_policy", policy_stages.stage_eval_policy, ("train_policy",),
          (*_POLICY, "sampling", "eval"), (layout.EVAL_POLICY,)),
    # Before the verifiers: it may be their trunk (`verifier_train.trunk`).
    Stage("train_large", policy_stages.stage_train_large, ("data",), _LARGE,
          (layout.LARGE, layout.METRICS),
          made_with=(Fingerprint(layout.LARGE, lambda ctx: policy_spec(ctx, large=True)),)),
    Stage("prm_labels", verifier_stages.stage_prm_labels, ("train_policy",),
          (*_POLICY, "sampling", "prm"),
          (layout.PRM_LABELS_SOLUTIONS, layout.PRM_LABELS_PARTS, layout.PRM_LABELS)),
    Stage("train_prm", verifier_stages.stage_train_prm, ("prm_labels",), _PRM,
          (*_checkpoints("prm"), layout.METRICS), made_with=early_stopped("prm"),
          reads_verifier_trunk=True),
    Stage("train_orm", verifier_stages.stage_train_orm, ("prm_labels",), _PRM,
          (*_checkpoints("orm"), layout.METRICS), made_with=early_stopped("orm"),
          reads_verifier_trunk=True),
    Stage("eval_prm", verifier_stages.stage_eval_prm, ("train_prm", "train_orm"),
          (*_PRM, "eval_prm"),
          (layout.EVAL_PRM_POOL, layout.EVAL_PRM, layout.EVAL_PRM_FIGURE)),
    Stage("sweep_search", search_stages.stage_sweep_search, ("train_prm",),
          (*_PRM, "search"), (layout.SEARCH_TABLE, layout.SEARCH_FIGURE),
          vouches_for=(layout.SEARCH_TABLE,),
          made_with=(Fingerprint(layout.SEARCH_TABLE, search_table_meta, "table"),)),
    Stage("revision_data", revision_stages.stage_revision_data, ("train_policy",),
          (*_POLICY, "sampling", "revision"),
          (layout.REVISION_SAMPLES, layout.REVISION_TRAJECTORIES)),
    Stage("train_revision", revision_stages.stage_train_revision, ("revision_data",),
          _REVISION, (*_checkpoints("revision"), layout.METRICS),
          made_with=early_stopped("revision")),
    # It compares its verifier with the base PRM on held-out attempts.
    Stage("train_revision_verifier", revision_stages.stage_train_revision_verifier,
          ("train_revision", "train_prm"), _REVISION_VERIFIER,
          (layout.REVISION_VERIFIER_CHAINS, *_checkpoints("revision_verifier"),
           layout.METRICS),
          made_with=early_stopped("revision_verifier")),
    Stage("sweep_revisions", revision_sweep_stages.stage_sweep_revisions,
          ("train_revision_verifier",), (*_REVISION_VERIFIER, "sweep_revisions"),
          (layout.REVISION_UNITS, layout.REVISION_TABLE, layout.REVISION_ATTEMPTS,
           layout.REVISION_FIGURE),
          vouches_for=(layout.REVISION_TABLE,),
          made_with=(Fingerprint(layout.REVISION_TABLE, revision_table_meta, "table"),)),
    Stage("difficulty", study_stages.stage_difficulty, ("train_prm",),
          (*_PRM, "difficulty"), (layout.DIFFICULTY_SAMPLES, layout.DIFFICULTY),
          vouches_for=(layout.DIFFICULTY,)),
    Stage("select", study_stages.stage_select,
          ("sweep_search", "sweep_revisions", "difficulty"), _STUDY, (layout.SELECT,),
          vouches_for=(layout.SELECT,)),
    Stage("flops_matched", study_stages.stage_flops_matched, ("select", "train_large"),
          (*_STUDY, "large_model", "flops_matched"), (layout.FLOPS_MATCHED,)),
    Stage("report", study_stages.stage_report, ("select",),
          (*_STUDY, "large_model", "flops_matched"), (layout.REPORT, layout.RESULTS)),
)}
