"""What the config files share: the optimiser fields of every training block."""


def adamw(*, learning_rate: float, warmup_steps: int, end_learning_rate_fraction: float,
          weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.95,
          grad_clip_norm: float = 1.0) -> dict:
  """The optimiser's fields of a training block (`ttscale/training/optimizer.py`).

  AdamW with linear warm-up to `learning_rate` and cosine decay to
  `learning_rate * end_learning_rate_fraction`, gradients clipped to a global
  norm of `grad_clip_norm`. Every block of the study uses the defaults.

  Returns:
    The fields, to spread into the block (they stay top-level fields, so that
    `--config.train.learning_rate=...` and the trainer read them as before).
  """
  return dict(learning_rate=learning_rate, warmup_steps=warmup_steps,
              end_learning_rate_fraction=end_learning_rate_fraction,
              weight_decay=weight_decay, b1=b1, b2=b2, grad_clip_norm=grad_clip_norm)
