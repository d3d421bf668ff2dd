"""The hyperparameters of the decoder trunk, as a frozen dataclass."""

from __future__ import annotations

import dataclasses
import math

ACTIVATIONS = ("relu", "gelu", "silu")
ROPE_SCALINGS = ("none", "linear", "llama3")
DTYPES = ("float32", "bfloat16")
# Choices of a run, not facts of a checkpoint: a released model fixes every
# other field (`ARCHITECTURE_FIELDS`), its vocabulary size aside.
RUN_FIELDS = ("dropout_rate", "param_dtype", "compute_dtype")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape of a decoder-only transformer.

  `num_kv_heads` < `num_heads` gives grouped-query attention (1 = multi-query).

  The fields from `norm_eps` on default to our own models; imported checkpoints
  set them (e.g. Gemma: `norm_scale_offset=1`, `scale_embeddings=True`, and in
  Gemma 2 the soft caps). Their defaults leave our models' parameters and
  outputs exactly as they were; `qkv_bias`, `qk_norm` and `post_norms` add
  parameters, the others none.
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
  qkv_bias: bool = False
  qk_norm: bool = False
  post_norms: bool = False
  query_pre_attn_scalar: float = 0.0
  sliding_window: int = 0
  sliding_window_pattern: int = 0
  rope_local_base: float = 0.0
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_context: int = 8192
  param_dtype: str = "float32"
  compute_dtype: str = "float32"

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
    for name in ("qkv_bias", "qk_norm", "post_norms"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"model.{name}={getattr(self, name)!r}: expected True or False")
    for name in ("query_pre_attn_scalar", "rope_local_base"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"model.{name}={value}: expected a finite number >= 0 "
                         "(0 is the default)")
    if self.sliding_window < 0:
      raise ValueError(f"model.sliding_window={self.sliding_window}: expected >= 0 "
                       "(0 turns sliding-window layers off)")
    if self.sliding_window and self.sliding_window_pattern < 1:
      raise ValueError(
          f"model.sliding_window_pattern={self.sliding_window_pattern}: expected >= 1 "
          f"with model.sliding_window={self.sliding_window} (every pattern-th layer "
          "is global)")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f"model.rope_scaling={self.rope_scaling!r}: expected one of "
                       f"{ROPE_SCALINGS}")
    if not (math.isfinite(self.rope_scaling_factor) and self.rope_scaling_factor > 0):
      raise ValueError(f"model.rope_scaling_factor={self.rope_scaling_factor}: "
                       "expected a finite number > 0")
    if (self.rope_scaling == "llama3"
        and not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
      raise ValueError(
          f"model.rope_high_freq_factor={self.rope_high_freq_factor}: expected more "
          f"than model.rope_low_freq_factor={self.rope_low_freq_factor} > 0")
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"model.{name}={getattr(self, name)!r}: expected one of {DTYPES}")
    if self.rope_original_context <= 0:
      raise ValueError(f"model.rope_original_context={self.rope_original_context}: "
                       "expected > 0")

  def is_local_layer(self, layer: int) -> bool:
    """Whether layer `layer` (0-based) attends within the sliding window."""
    return bool(self.sliding_window) and (layer + 1) % self.sliding_window_pattern != 0

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

    Of the architecture options only `qkv_bias`, `qk_norm` and `post_norms`
    add any.
    """
    attn = self.embed_dim * self.head_dim * (
        2 * self.num_heads + 2 * self.num_kv_heads)
    if self.qkv_bias:
      attn += self.head_dim * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attn += 2 * self.head_dim
    mlp = 3 * self.embed_dim * self.mlp_dim
    norms = (4 if self.post_norms else 2) * self.embed_dim
    embed = self.vocab_size * self.embed_dim
    head = 0 if self.tie_embeddings else embed
    return self.num_layers * (attn + mlp + norms) + embed + head + self.embed_dim

  def flops_per_token(self, context_length: int) -> int:
    """Forward FLOPs for one token attending to `context_length` keys.

    2 × (parameters used in matmuls: attention and MLP projections and the
    output projection; the embedding lookup is free) plus the two attention
    contractions (scores and weighted sum: 2 × 2 × heads × head_dim × context;
    a local layer's context is at most `sliding_window`).
    Elementwise work (norms, biases, activations, soft caps) is not counted.
    """
    attn = self.embed_dim * self.head_dim * (
        2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.embed_dim * self.mlp_dim
    matmul_params = self.num_layers * (attn + mlp) + self.vocab_size * self.embed_dim
    local_layers = sum(map(self.is_local_layer, range(self.num_layers)))
    attended = ((self.num_layers - local_layers) * context_length
                + local_layers * min(context_length, self.sliding_window))
    attention = 4 * self.num_heads * self.head_dim * attended
    return 2 * matmul_params + attention


ARCHITECTURE_FIELDS = tuple(field.name for field in dataclasses.fields(ModelConfig)
                            if field.name not in ("vocab_size", *RUN_FIELDS))
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(ModelConfig)
             if field.name != "vocab_size"}


def comparable_record(record: dict, ignore: tuple[str, ...] = ()) -> dict:
  """A recorded `model` (a config block, or a `ModelConfig` as a dict) in the
  form two records compare in: a field absent from it (one `ModelConfig`
  gained after it was written, or left out of a config block) holds its
  default, which builds the same model; the fields in `ignore` are left out."""
  return {field: value for field, value in (_DEFAULTS | record).items()
          if field not in ignore}


def comparable_records(tree, ignore: tuple[str, ...] = ()):
  """A JSON-like tree (a checkpoint spec, a table's meta) with every dict
  under a "model" key as `comparable_record` makes it, so that records
  written before a field existed compare equal to today's."""
  if not isinstance(tree, dict):
    return tree
  return {key: (comparable_record(value, ignore)
                if key == "model" and isinstance(value, dict)
                else comparable_records(value, ignore))
          for key, value in tree.items()}
