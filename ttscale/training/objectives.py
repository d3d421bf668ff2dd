"""Training objectives."""

import jax
import jax.numpy as jnp


def next_token_loss(logits: jax.Array, targets: jax.Array,
                    loss_mask: jax.Array) -> tuple[jax.Array, dict]:
  """Mean cross-entropy over the masked targets.

  Args:
    logits: float [batch, T, vocab].
    targets: int32 [batch, T], the token that follows each input token.
    loss_mask: float [batch, T], 1 where the target counts.

  Returns:
    (loss [], metrics: loss, token accuracy and number of counted tokens).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  count = jnp.maximum(loss_mask.sum(), 1.0)
  loss = -(target_log_probs * loss_mask).sum() / count
  correct = (jnp.argmax(logits, axis=-1) == targets) * loss_mask
  return loss, {"loss": loss, "accuracy": correct.sum() / count,
                "tokens": loss_mask.sum()}
