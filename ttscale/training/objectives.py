"""Training objectives."""

import jax
import jax.numpy as jnp
import optax


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


def step_value_loss(logits: jax.Array, step_ends: jax.Array, step_mask: jax.Array,
                    targets: jax.Array) -> tuple[jax.Array, dict]:
  """Binary cross-entropy of value logits at step ends against soft targets.

  Args:
    logits: float [batch, T], a verifier's logit at every position.
    step_ends: int32 [batch, max_steps], the position of each step's last token.
    step_mask: float [batch, max_steps], 1 on the steps that count.
    targets: float [batch, max_steps] in [0, 1] (soft labels allowed).

  Returns:
    (loss [], metrics: loss, accuracy of the thresholded prediction against
    the thresholded target, and the number of counted steps).
  """
  step_logits = jnp.take_along_axis(logits.astype(jnp.float32), step_ends, axis=1)
  losses = optax.sigmoid_binary_cross_entropy(step_logits, targets)
  count = jnp.maximum(step_mask.sum(), 1.0)
  loss = (losses * step_mask).sum() / count
  agree = ((step_logits > 0) == (targets > 0.5)) * step_mask
  return loss, {"loss": loss, "accuracy": agree.sum() / count, "steps": step_mask.sum()}
