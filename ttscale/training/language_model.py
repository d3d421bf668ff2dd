"""Training language models with next-token loss: the policies, and the
revision model (the policy fine-tuned on trajectories, with early stopping)."""

from __future__ import annotations

from collections.abc import Callable

from ttscale.data import batching
from ttscale.models import Network, policy_forward_fn
from ttscale.training.checkpoints import Checkpointer
from ttscale.training.objectives import next_token_loss
from ttscale.training.trainer import train_early_stopped
from ttscale.training.validation import validation_loss_fn


def next_token_loss_fn(graphdef) -> Callable:
  """`(params, batch, dropout_rng) -> (loss, metrics)`: next-token loss of a
  packed batch ({"inputs", "positions", "segment_ids", "targets", "loss_mask"})."""
  forward = policy_forward_fn(graphdef)

  def loss_fn(params, batch, dropout_rng):
    logits = forward(params, batch["inputs"], batch["positions"], batch["segment_ids"],
                     dropout_rng)
    return next_token_loss(logits, batch["targets"], batch["loss_mask"])

  return loss_fn


def train_revision_model(policy: Network, train_sequences: tuple[list, list],
                         holdout_sequences: tuple[list, list], *, seq_len: int, train_config,
                         checkpointers: tuple[Checkpointer, Checkpointer], seed: int,
                         dropout_seed: int, metrics_path: str, mesh=None, rules=(),
                         log: Callable[[str], None] = print, num_records: int = 0) -> dict:
  """Fine-tunes `policy` on revision sequences; keeps the lowest validation loss.

  Args:
    train_sequences, holdout_sequences: (token sequences, loss masks), as
      `training.revision_data.revision_sequences` makes them.
    seq_len: the packed rows' length (`revision.seq_len`); a longer sequence
      is an error.
    checkpointers: (training state, best parameters); closed on return.
    num_records: how many trajectories the sequences are (for the log line).

  Returns:
    The stage summary: best step and validation loss, whether it stopped
    early, the packed training rows.
  """
  def packed(sequences, masks):
    too_long = [len(s) for s in sequences if len(s) > seq_len]
    if too_long:
      raise ValueError(f"revision.seq_len={seq_len}: a trajectory has {max(too_long)} "
                       "tokens; raise it")
    return batching.pack_sequences(sequences, masks, seq_len)

  train_rows, holdout_rows = packed(*train_sequences), packed(*holdout_sequences)
  forward = policy_forward_fn(policy.graphdef)

  def validation_loss(params, batch):
    logits = forward(params, batch["inputs"], batch["positions"], batch["segment_ids"])
    return next_token_loss(logits, batch["targets"], batch["loss_mask"])

  batches = batching.TrainBatches(train_rows, train_config.batch_size, seed=seed)
  log(f"train_revision: {num_records} trajectories in {train_rows['inputs'].shape[0]} "
      f"packed rows; {holdout_rows['inputs'].shape[0]} held out; "
      f"{batches.steps_per_epoch} steps per epoch")
  summary = train_early_stopped(
      name="train_revision", loss_fn=next_token_loss_fn(policy.graphdef),
      params=policy.params, batches=batches,
      validate=validation_loss_fn(validation_loss, holdout_rows, weight="tokens",
                                  mask="loss_mask", batch_size=train_config.batch_size,
                                  mesh=mesh),
      train_config=train_config, checkpointers=checkpointers, metrics_path=metrics_path,
      seed=dropout_seed, mesh=mesh, rules=rules, log=log)
  return {**summary,
          "num_train_rows": int(train_rows["inputs"].shape[0])}
