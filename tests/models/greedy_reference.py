"""The greedy continuation both parity tests compare with their reference's:
our search engine's sampler, compiled as the engine runs it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ttscale.models import ModelConfig, init_cache, policy_extend_fn
from ttscale.search import sampling


def greedy_tokens(graphdef, params, config: ModelConfig, prompts: np.ndarray,
                  lengths: np.ndarray, new_tokens: int) -> np.ndarray:
  """Greedy `new_tokens` after each prompt, never stopping early.

  Args:
    prompts: int32 [batch, width], right-aligned (left padding), as the
      sampler's `prefill` takes them.
    lengths: int32 [batch] prompt lengths.

  Returns:
    int32 [batch, new_tokens].
  """
  batch, width = prompts.shape
  sampler_config = sampling.SamplerConfig(
      rule=sampling.SamplingRule(temperature=0.0), stop_at=sampling.StopAt.SOLUTION,
      max_new_tokens=new_tokens, step_id=-1, eos_id=-1)
  extend_fn = policy_extend_fn(graphdef)

  @jax.jit
  def greedy(params, prompts, lengths):
    cache = init_cache(config, batch, width + new_tokens)
    cache, pending = sampling.prefill(extend_fn, params, cache, prompts, lengths)
    out = sampling.sample(extend_fn, params, cache, pending, jnp.ones((batch,), bool),
                          jax.random.key(0), sampler_config)
    return out.tokens

  return np.asarray(greedy(params, prompts, lengths))
