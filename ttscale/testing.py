"""Small models for tests: a tiny real policy and a toy model known by hand.

- `TINY_CONFIG` and `tiny_policy(seed)`: a real `LanguageModel` small enough
  to compile in well under a second, split once (`nnx.split`) and cached, so
  every test of a session shares the same parameters.
- `tree_digest(root)`: a fingerprint of a directory tree, to show that a
  failed command left a workdir untouched.
- `bigram_policy(transitions, vocab_size)`: a policy whose next token
  depends only on the current one, with probabilities given by hand, so the
  chance that a continuation reaches a given answer is known exactly.
- `successor_extend_fn(vocab_size)`: a fixed-logit stand-in for
  `ttscale.models.policy_extend_fn` whose next token is always the successor
  of the current one, `(token + 1) % vocab_size`. A row whose pending token is
  `t` samples `t + 1, t + 2, ...` at any temperature near 0 and reaches a
  token `s` after exactly `(s - t) % vocab_size` draws, so the stopping
  behaviour of the sampler can be computed by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttscale.models.config import ModelConfig
from ttscale.models.kv_cache import KVCache, append_layout
from ttscale.models.network import Network
from ttscale.models.transformer import LanguageModel

# Grouped-query attention (8 query heads in groups of 2 over 4 kv heads: both
# counts split over a 4-way "model" mesh axis); 2 layers, so that a cached
# second layer reads keys computed from cached first-layer outputs. Untied:
# with a tied head, a random model mostly repeats its input token, and greedy
# continuations would be a single token over and over.
TINY_CONFIG = ModelConfig(
    vocab_size=16, num_layers=2, embed_dim=32, num_heads=8, num_kv_heads=4,
    head_dim=8, mlp_dim=64, tie_embeddings=False)

# The logit the successor model puts on the successor token (0 elsewhere).
SUCCESSOR_LOGIT = 8.0


@functools.cache
def tiny_policy(seed: int = 0, config: ModelConfig = TINY_CONFIG, module=LanguageModel):
  """A random `module` (default `LanguageModel`), split once and cached.

  Parameters are drawn with numpy at the shapes and with the metadata
  (`logical_axes`) of the built model: compiling JAX's initialisers costs
  seconds on CPU. Matrices are normal with std `1/sqrt(shape[0])`, like the
  model's own initialiser; norm scales are `1 + 0.1 * normal`, so that a
  scale that is ignored shows in the outputs.

  Returns:
    (graphdef, params, config): `nnx.split` halves of the model and its config;
    `nnx.merge(graphdef, params)` rebuilds the module.
  """
  abstract = nnx.eval_shape(lambda: module(config, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(abstract)
  rng = np.random.default_rng(seed)

  def draw(variable: nnx.Variable) -> nnx.Variable:
    shape = variable.get_value().shape
    noise = rng.standard_normal(shape).astype(np.float32)
    if len(shape) == 0:  # a bias
      value = 0.1 * noise
    elif len(shape) == 1:
      value = 1 + 0.1 * noise
    else:
      value = noise / np.sqrt(shape[0])
    return variable.replace(jnp.asarray(value, jnp.float32))

  params = jax.tree.map(draw, params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return graphdef, params, config


def successor_logprob(vocab_size: int, logit: float = SUCCESSOR_LOGIT) -> float:
  """Log-probability the successor model gives its successor token (≈ 0)."""
  return -math.log1p((vocab_size - 1) * math.exp(-logit))


def successor_extend_fn(vocab_size: int, logit: float = SUCCESSOR_LOGIT):
  """A toy `(params, tokens, token_valid, cache) -> (logits, cache)`.

  `params` is ignored. For tokens int32 [batch, T] the logits, float
  [batch, T, vocab_size], are `logit` at `(token + 1) % vocab_size` and 0
  elsewhere. The cache advances exactly as the real model's does (slot
  validity, per-row positions, write index, via `append_layout`); its keys
  and values are left untouched, since nothing here reads them.
  """

  def extend(params, tokens: jax.Array, token_valid: jax.Array,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    del params
    successors = (tokens + 1) % vocab_size
    logits = logit * jax.nn.one_hot(successors, vocab_size, dtype=jnp.float32)
    _, slot_valid, _, next_position = append_layout(cache, token_valid)
    cache = cache.replace(
        slot_valid=slot_valid, next_position=next_position,
        write_index=cache.write_index + tokens.shape[1])
    return logits, cache

  return extend


class BigramModel(nnx.Module):
  """A toy policy: next-token log-probabilities are a row of a fixed table."""

  def __init__(self, log_probs: np.ndarray):
    self.log_probs = nnx.Param(jnp.asarray(log_probs, jnp.float32))  # [vocab, vocab]

  def extend(self, tokens: jax.Array, token_valid: jax.Array,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Logits [batch, T, vocab] = the table's rows of `tokens`; the cache
    advances like the real model's (keys and values untouched)."""
    _, slot_valid, _, next_position = append_layout(cache, token_valid)
    cache = cache.replace(slot_valid=slot_valid, next_position=next_position,
                          write_index=cache.write_index + tokens.shape[1])
    return self.log_probs[...][tokens], cache


def bigram_policy(transitions: dict[int, dict[int, float]], vocab_size: int,
                  default_next: int):
  """A `Network` sampling from hand-given transition probabilities.

  Args:
    transitions: {token: {next token: probability}}; each row sums to 1.
    default_next: the certain next token of any token not in `transitions`.
  """
  probs = np.zeros((vocab_size, vocab_size))
  probs[:, default_next] = 1.0
  for token, row in transitions.items():
    probs[token] = 0.0
    for next_token, p in row.items():
      probs[token, next_token] = p
  with np.errstate(divide="ignore"):
    log_probs = np.maximum(np.log(probs), -1e9)
  graphdef, params = nnx.split(BigramModel(log_probs))
  # The cache needs a model shape; the toy model never reads keys or values.
  config = dataclasses.replace(TINY_CONFIG, vocab_size=vocab_size, num_layers=1)
  return Network(graphdef, params, config)


class LastContentValueModel(nnx.Module):
  """A toy PRM: the logit at a token is `values[token]`, except that a step's
  end token (a delimiter or end-of-solution) takes the value of the token
  before it in the same append. So a step appended whole is scored by its
  last content token."""

  def __init__(self, values: np.ndarray, end_ids: tuple[int, ...]):
    self.values = nnx.Param(jnp.asarray(values, jnp.float32))  # [vocab]
    self.end_ids = end_ids

  def extend(self, tokens: jax.Array, token_valid: jax.Array,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    previous = jnp.concatenate([tokens[:, :1], tokens[:, :-1]], axis=1)
    is_end = jnp.isin(tokens, jnp.asarray(self.end_ids))
    _, slot_valid, _, next_position = append_layout(cache, token_valid)
    cache = cache.replace(slot_valid=slot_valid, next_position=next_position,
                          write_index=cache.write_index + tokens.shape[1])
    return self.values[...][jnp.where(is_end, previous, tokens)], cache


def tree_digest(root: str) -> dict[str, str]:
  """{relative path: sha256} of every file under `root`, plus its directories.

  Two equal digests mean nothing under `root` was created, removed or changed.
  """
  digest = {}
  for directory, subdirectories, files in os.walk(root):
    for name in subdirectories:
      digest[os.path.relpath(os.path.join(directory, name), root) + "/"] = "dir"
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return digest
