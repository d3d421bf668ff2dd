"""AdamW with linear warm-up, cosine decay and global-norm gradient clipping."""

import optax


def make_optimizer(train_config, trainable=None) -> optax.GradientTransformation:
  """The optimiser of a `train` config block.

  Reads `learning_rate`, `warmup_steps`, `num_steps`,
  `end_learning_rate_fraction`, `weight_decay`, `b1`, `b2`, `grad_clip_norm`.

  Args:
    trainable: None (every parameter learns), or a pytree of bools shaped
      like the parameters: the others are left exactly as they are (no
      update, no weight decay).
  """
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=train_config.learning_rate,
      warmup_steps=train_config.warmup_steps,
      # The last update is number num_steps - 1: it uses the end value.
      decay_steps=max(train_config.num_steps - 1, train_config.warmup_steps + 1),
      end_value=train_config.learning_rate * train_config.end_learning_rate_fraction,
  )
  adamw = optax.adamw(schedule, b1=train_config.b1, b2=train_config.b2,
                      weight_decay=train_config.weight_decay)
  if trainable is not None:
    # Frozen parameters get no gradient either, so their update stays zero.
    adamw = optax.masked(adamw, trainable)
  return optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm), adamw)
