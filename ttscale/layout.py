"""The workdir's layout: every path the stages write or read, named once.

Paths are relative to the workdir (`pipeline.Context.path` joins them) and
use "/" whatever the host: they are also the keys under which a stage marker
records the digests of the files it vouches for, so they must not change
between runs or machines.
"""

from __future__ import annotations

# The run's own bookkeeping.
STAGES = "stages"  # one marker per finished stage: `stages/<name>.json`
LOCK = "lock.json"
METRICS = "metrics.jsonl"  # training metrics of every training stage

# data, train_policy, eval_policy, train_large
DATA = "data"
TOKENIZER = "tokenizer.model"
POLICY = "policy"
LARGE = "large"
EVAL_POLICY = "eval_policy.json"

# prm_labels, train_prm, train_orm, eval_prm
PRM_LABELS_SOLUTIONS = "prm_labels/solutions.json"
PRM_LABELS_PARTS = "prm_labels/parts"
PRM_LABELS = "prm_labels/labels.jsonl"
EVAL_PRM_POOL = "eval_prm/pool.json"
EVAL_PRM = "eval_prm.json"
EVAL_PRM_FIGURE = "eval_prm.png"

# sweep_search
SEARCH_TABLE = "outcomes/search.jsonl"
SEARCH_FIGURE = "sweep_search.png"

# revision_data, train_revision, train_revision_verifier, sweep_revisions
REVISION_SAMPLES = "revision/samples"
REVISION_TRAJECTORIES = "revision/trajectories.jsonl"
REVISION_VERIFIER_CHAINS = "revision_verifier/chains"
REVISION_TABLE = "outcomes/revisions.jsonl"
REVISION_UNITS = "revisions/sweep"
REVISION_ATTEMPTS = "revisions/attempts.json"
REVISION_FIGURE = "sweep_revisions.png"

# difficulty, select, flops_matched, report
DIFFICULTY_SAMPLES = "difficulty_samples.json"
DIFFICULTY = "difficulty.json"
SELECT = "select.json"
FLOPS_MATCHED = "flops_matched.json"
RESULTS = "results.json"
REPORT = "report.md"


def marker(stage: str) -> str:
  """The marker a finished stage writes: its wall time, summary and inputs."""
  return f"{STAGES}/{stage}.json"


def checkpoints(kind: str, part: str) -> str:
  """`state` (training state, to resume) or `best` (best validated
  parameters) of an early-stopped model of `kind` ("prm", "orm",
  "revision", "revision_verifier")."""
  if part not in ("state", "best"):
    raise ValueError(f"checkpoints: part {part!r}; expected 'state' or 'best'")
  return f"{kind}/{part}"
