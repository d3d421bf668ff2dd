"""Models: one NNX decoder trunk, its heads, its cache and its checkpoints."""

from ttscale.models.config import ModelConfig
from ttscale.models.kv_cache import KVCache, init_cache
from ttscale.models.transformer import Decoder, LanguageModel
from ttscale.models.value import ValueModel

__all__ = ["Decoder", "KVCache", "LanguageModel", "ModelConfig", "ValueModel",
           "init_cache", "policy_extend_fn", "policy_forward_fn"]


def policy_extend_fn(graphdef):
  """A pure `(params, tokens, token_valid, cache) -> (logits, cache)`.

  `graphdef` comes from `nnx.split(model)`; passing (graphdef, params) rather
  than the module keeps jitted programs small and fast to compile.
  """
  from flax import nnx

  def extend(params, tokens, token_valid, cache):
    return nnx.merge(graphdef, params).extend(tokens, token_valid, cache)

  return extend


def policy_forward_fn(graphdef):
  """A pure `(params, tokens, positions, segment_ids, dropout_rng) -> logits`."""
  from flax import nnx

  def forward(params, tokens, positions, segment_ids=None, dropout_rng=None):
    return nnx.merge(graphdef, params)(tokens, positions, segment_ids, dropout_rng)

  return forward
