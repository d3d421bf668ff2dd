"""Training a verifier: a value model from a language model's trunk, BCE on
labelled records, early stopping on the held-out ones."""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from ttscale.data.batching import TrainBatches, rows_by_length
from ttscale.data.verifier_data import verifier_arrays
from ttscale.models import ModelConfig, ValueModel, policy_forward_fn
from ttscale.models.value import init_from_policy
from ttscale.training import frozen_trunk
from ttscale.training.checkpoints import Checkpointer
from ttscale.training.objectives import step_value_loss
from ttscale.training.trainer import train_early_stopped
from ttscale.training.validation import validation_loss_fn

_WIDTH_MULTIPLE = 16  # verifier rows are padded to a multiple of this
_FEATURE_BATCH = 128  # rows per trunk pass when the trunk's features are computed once


def padded_width(records: list[dict]) -> int:
  """The row width that holds every record's prompt and solution."""
  longest = max(len(r["prompt"]) + len(r["tokens"]) for r in records)
  return -(-longest // _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE


def train_value_model(*, name: str, records: list[dict], target: str, init_params,
                      module: Callable[..., ValueModel], model_config: ModelConfig,
                      train_config, checkpointers: tuple[Checkpointer, Checkpointer],
                      seed: int, metrics_path: str, mesh=None, rules=(),
                      log: Callable[[str], None] = print) -> dict:
  """Trains a verifier on labelled `records` (split by their `holdout`).

  Args:
    name: the training's name in logs and metrics, e.g. "train_prm".
    target: "steps" (Monte-Carlo step labels), "hard_steps" (any rollout
      correct) or "outcome".
    init_params: the language model whose trunk the verifier starts from.
    module: `(config, rngs=...) -> ValueModel`.
    checkpointers: (training state, best parameters); closed on return.

  Returns:
    The stage summary: best step and validation loss, whether it stopped
    early, how many solutions and labels it trained on.
  """
  width = padded_width(records)
  train_arrays = verifier_arrays([r for r in records if not r["holdout"]], target, width)
  holdout_arrays = verifier_arrays([r for r in records if r["holdout"]], target, width)
  model = module(model_config, rngs=nnx.Rngs(seed))
  frozen_trunk_features = bool(model.step_end_ids)
  graphdef, params = nnx.split(model)
  params = init_from_policy(params, init_params)
  trainable = None
  if frozen_trunk_features:
    # The trunk is not trained: its features are computed once (`frozen_trunk`).
    log(f"{name}: the trunk's features of every solution (trunk frozen)")
    train_arrays, holdout_arrays = (
        frozen_trunk.step_end_features(graphdef, params, arrays, _FEATURE_BATCH, mesh, rules)
        for arrays in (train_arrays, holdout_arrays))
    loss_fn = frozen_trunk.head_loss_fn(graphdef)

    def validation_loss(params, batch):
      return loss_fn(params, batch, None)

    trainable = frozen_trunk.trainable_head(params)
  else:
    forward = policy_forward_fn(graphdef)

    def loss_fn(params, batch, dropout_rng):
      logits = forward(params, batch["inputs"], batch["positions"], None, dropout_rng)
      loss, metrics = step_value_loss(logits, batch["step_ends"], batch["step_mask"],
                                      batch["targets"])
      return loss, {**metrics, "tokens": batch["token_mask"].sum()}

    def validation_loss(params, batch):
      logits = forward(params, batch["inputs"], batch["positions"])
      return step_value_loss(logits, batch["step_ends"], batch["step_mask"], batch["targets"])

  if frozen_trunk_features:
    batches = TrainBatches(train_arrays, train_config.batch_size, seed=seed + 5)
  else:
    # Rows cut to three widths: with previous attempts in context (revision
    # verifiers) most rows are far shorter than the longest.
    lengths = train_arrays["token_mask"].sum(axis=1).astype(int).tolist()
    batches = rows_by_length(train_arrays, lengths, train_config.batch_size, seed=seed + 5)
  log(f"{name}: {train_arrays['step_mask'].shape[0]} solutions, "
      f"{int(train_arrays['step_mask'].sum())} labelled steps; "
      f"{holdout_arrays['step_mask'].shape[0]} held out; "
      f"{batches.steps_per_epoch} steps per epoch")
  summary = train_early_stopped(
      name=name, loss_fn=loss_fn, params=params, batches=batches,
      validate=validation_loss_fn(validation_loss, holdout_arrays, weight="steps",
                                  mask="step_mask", batch_size=train_config.batch_size,
                                  mesh=mesh),
      train_config=train_config, checkpointers=checkpointers, metrics_path=metrics_path,
      seed=seed + 6, mesh=mesh, rules=rules, log=log, trainable=trainable)
  return {**summary,
          "num_train_solutions": int(train_arrays["step_mask"].shape[0]),
          "num_train_labels": int(train_arrays["step_mask"].sum())}
