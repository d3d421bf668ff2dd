"""The hyperparameters of the decoder trunk, as a frozen dataclass."""

from __future__ import annotations

import dataclasses
import math

ACTIVATIONS = ("relu", "gelu", "silu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape of a decoder-only transformer.

  `num_kv_heads` < `num_heads` gives grouped-query attention (1 = multi-query).

  The last five fields default to our own models; imported checkpoints set them
  (e.g. Gemma: `norm_scale_offset=1`, `scale_embeddings=True`, and in Gemma 2 the
  soft caps). None of them adds or reshapes a parameter.
  - `norm_eps`: the RMSNorm epsilon.
  - `norm_scale_offset`: RMSNorm multiplies by `norm_scale_offset + scale`, and
    `scale` starts at `1 - norm_scale_offset` (Gemma stores zero-centred scales).
  - `scale_embeddings`: multiply the embedded tokens by sqrt(embed_dim) before the
    first block; a tied LM head still reads the unscaled table.
  - `attn_logit_softcap`, `final_logit_softcap`: 0 is off, else `cap * tanh(x /
    cap)` on the attention scores (before masking) and on the LM-head logits.
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
  norm_eps: float = 1e-6
  norm_scale_offset: float = 0.0
  scale_embeddings: bool = False
  attn_logit_softcap: float = 0.0
  final_logit_softcap: float = 0.0

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
    if not (math.isfinite(self.norm_eps) and self.norm_eps > 0):
      raise ValueError(f"model.norm_eps={self.norm_eps}: expected a finite number > 0")
    if not math.isfinite(self.norm_scale_offset):
      raise ValueError(
          f"model.norm_scale_offset={self.norm_scale_offset}: expected a finite number")
    if not isinstance(self.scale_embeddings, bool):
      raise ValueError(
          f"model.scale_embeddings={self.scale_embeddings!r}: expected True or False")
    for name in ("attn_logit_softcap", "final_logit_softcap"):
      cap = getattr(self, name)
      if not (math.isfinite(cap) and cap >= 0):
        raise ValueError(f"model.{name}={cap}: expected a finite number >= 0 "
                         "(0 turns soft-capping off)")

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
    """Parameter count (embeddings included once when tied).

    The architecture options (norm offset, embedding scale, soft caps) add none.
    """
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
    Elementwise work (norms, activations, soft caps) is not counted.
    """
    attn = self.embed_dim * self.head_dim * (
        2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.embed_dim * self.mlp_dim
    matmul_params = self.num_layers * (attn + mlp) + self.vocab_size * self.embed_dim
    attention = 4 * self.num_layers * self.num_heads * self.head_dim * context_length
    return 2 * matmul_params + attention
