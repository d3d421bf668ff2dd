"""Models: one NNX decoder trunk, its heads, its cache and its checkpoints."""

from ttscale.models.config import ModelConfig
from ttscale.models.kv_cache import KVCache, init_cache
from ttscale.models.network import ExtendFn, Network, policy_extend_fn, policy_forward_fn
from ttscale.models.transformer import Decoder, LanguageModel
from ttscale.models.value import ValueModel

__all__ = ["Decoder", "ExtendFn", "KVCache", "LanguageModel", "ModelConfig", "Network",
           "ValueModel", "init_cache", "policy_extend_fn", "policy_forward_fn"]
