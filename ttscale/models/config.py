"""The hyperparameters of the decoder trunk, as a frozen dataclass."""

from __future__ import annotations

import dataclasses

ACTIVATIONS = ("relu", "gelu", "silu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape of a decoder-only transformer.

  `num_kv_heads` < `num_heads` gives grouped-query attention (1 = multi-query).
  """
  vocab_size: int
  num_layers: int = 2
  embed_dim: int = 128
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 32
  mlp_dim: int = 256
  activation: str = "relu"
  rope_base: float = 10_000.0
  dropout_rate: float = 0.0
  tie_embeddings: bool = True

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(
          f"model.activation={self.activation!r}: expected one of {ACTIVATIONS}")
    for name in ("vocab_size", "num_layers", "embed_dim", "num_heads",
                 "num_kv_heads", "head_dim", "mlp_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name}={getattr(self, name)}: expected > 0")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"model.num_heads={self.num_heads} must be a multiple of "
          f"model.num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim}: expected an even "
                       "number (rotary embeddings rotate pairs)")

  @classmethod
  def from_config(cls, model_config, vocab_size: int) -> ModelConfig:
    """Builds from an `ml_collections` block; unknown keys are an error."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size"}
    values = dict(model_config)
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f"model.{unknown[0]}: unknown field; expected one of "
                       f"{sorted(fields)}")
    return cls(vocab_size=vocab_size, **values)

  def num_params(self) -> int:
    """Parameter count (embeddings included once when tied)."""
    attn = self.embed_dim * self.head_dim * (
        2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.embed_dim * self.mlp_dim
    norms = 2 * self.embed_dim
    embed = self.vocab_size * self.embed_dim
    head = 0 if self.tie_embeddings else embed
    return self.num_layers * (attn + mlp + norms) + embed + head + self.embed_dim

  def flops_per_token(self, context_length: int) -> int:
    """Forward FLOPs for one token attending to `context_length` keys.

    2 × (parameters used in matmuls: attention and MLP projections and the
    output projection; the embedding lookup is free) plus the two attention
    contractions (scores and weighted sum: 2 × 2 × heads × head_dim × context).
    """
    attn = self.embed_dim * self.head_dim * (
        2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.embed_dim * self.mlp_dim
    matmul_params = self.num_layers * (attn + mlp) + self.vocab_size * self.embed_dim
    attention = 4 * self.num_layers * self.num_heads * self.head_dim * context_length
    return 2 * matmul_params + attention
