"""Config checks: every value no stage would take, refused before the first write."""

from __future__ import annotations

from ttscale.models.checkpoint_import import check_checkpoint_config, check_checkpoint_paths
from ttscale.models.config import ModelConfig
from ttscale.search import revision_sweep, sampling, search_sweep, select
from ttscale.search.best_of_n import SEARCH_AGGREGATIONS
from ttscale.search.budget import METHODS, budget_grid

# Where the PRM and ORM start from (`verifier_train.trunk`).
VERIFIER_TRUNKS = ("policy", "large")
# What training does with examples longer than `data.seq_len`.
TOO_LONG = ("skip", "truncate", "refuse")
# The PRM's targets (`verifier_train.step_labels`).
STEP_LABELS = ("soft", "hard")


def _check_networks_and_sampling(config) -> None:
  """The network blocks and the sampling rule, as the stages will build them
  (any vocabulary size: the tokenizer's is not known before the data stage).
  A block with fields left unset (None) is checked once they are read from its
  checkpoint (`model_blocks.derive_model_blocks`, which `registry.run` calls
  first): what is valid depends on them (e.g. a window needs its pattern)."""
  for block in ("model", "large_model"):
    if any(value is None for value in config[block].values()):
      continue
    try:
      ModelConfig.from_config(config[block], vocab_size=2)
    except ValueError as error:  # name the block the value came from
      raise ValueError(str(error).replace("model.", f"{block}.")) from None
  try:
    sampling.SamplingRule(config.sampling.temperature, config.sampling.top_p)
  except ValueError as error:
    raise ValueError(f"sampling.{error}") from None


def _check_one_of(field: str, value, allowed) -> None:
  """Raises ValueError naming `field` unless `value` is one of `allowed`."""
  if value not in allowed:
    raise ValueError(f"{field}={value!r}: expected one of {', '.join(allowed)}")


def check_config(config) -> None:
  """Raises ValueError naming the first config field with a value no stage takes."""
  _check_networks_and_sampling(config)
  _check_one_of("data.too_long", config.data.get("too_long", "skip"), TOO_LONG)
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
  _check_one_of("search.step_aggregation", config.search.step_aggregation,
                SEARCH_AGGREGATIONS)
  if config.search.step_aggregation not in aggregations:
    raise ValueError(f"eval_prm.aggregations: must include search.step_aggregation="
                     f"{config.search.step_aggregation!r} (the PRM best-of-N baseline reads it)")
  _check_one_of("verifier_train.trunk", config.verifier_train.trunk, VERIFIER_TRUNKS)
  _check_one_of("verifier_train.step_labels", config.verifier_train.step_labels, STEP_LABELS)
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
  search_sweep.sweep_settings(config.search)
  revision_sweep.sweep_splits(config.sweep_revisions)
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
  if config.revision.get("policy_data", "reference") not in ("samples", "reference"):
    raise ValueError(f"revision.policy_data={config.revision.policy_data!r}: expected "
                     "'samples' or 'reference'")
  if not 0 <= config.revision.get("keep_fraction", 0.0) <= 1:
    raise ValueError(f"revision.keep_fraction={config.revision.keep_fraction}: "
                     "expected a fraction in [0, 1]")
  pool = config.eval_prm.pool_size
  if pool < 1 or pool & (pool - 1):
    raise ValueError(f"eval_prm.pool_size={pool}: expected a power of 2 (the budget "
                     "grid is 1, 2, 4, ...)")
