"""A network as pure functions: its `nnx.split` halves, its config, its callbacks.

Jitted programs take a network's graphdef (static, hashable) and its params
(a pytree) rather than the module: smaller programs, faster compiles. A
`Network` carries the two with the model's config, for every network the
study runs: the policy, the PRM and ORM (`ValueModel`), the revision model
and its verifier. Search calls a network through an `ExtendFn`, the shape of
`LanguageModel.extend` and `ValueModel.extend` with the params passed in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
from flax import nnx

from ttscale.models.config import ModelConfig
from ttscale.models.kv_cache import KVCache


@dataclasses.dataclass(frozen=True)
class Network:
  """A network ready to run: the `nnx.split` halves and the model's config."""
  graphdef: Any         # nnx.GraphDef: the module's structure (static)
  params: Any           # nnx.State: its parameters
  config: ModelConfig   # its shape (a `ValueModel` has its trunk's)


class ExtendFn(Protocol):
  """Appends tokens to a network's cache and returns its outputs at them.

  Args:
    params: the network's parameters.
    tokens: int32 [B, T].
    token_valid: bool [B, T]; False marks padding, which is not appended.
    cache: the cache to extend; it must have T free slots.

  Returns:
    (outputs, cache): next-token logits float [B, T, vocab] for a
    `LanguageModel`, value logits float [B, T] for a `ValueModel`; the cache
    with the valid tokens appended.
  """

  def __call__(self, params: Any, tokens: jax.Array, token_valid: jax.Array,
               cache: KVCache) -> tuple[jax.Array, KVCache]: ...


def policy_extend_fn(graphdef) -> ExtendFn:
  """The `ExtendFn` of a network's graphdef (`LanguageModel` or `ValueModel`).

  `graphdef` comes from `nnx.split(model)`; passing (graphdef, params) rather
  than the module keeps jitted programs small and fast to compile.
  """

  def extend(params, tokens, token_valid, cache):
    return nnx.merge(graphdef, params).extend(tokens, token_valid, cache)

  return extend


def policy_forward_fn(graphdef):
  """A pure `(params, tokens, positions, segment_ids, dropout_rng) -> logits`."""

  def forward(params, tokens, positions, segment_ids=None, dropout_rng=None):
    return nnx.merge(graphdef, params)(tokens, positions, segment_ids, dropout_rng)

  return forward
