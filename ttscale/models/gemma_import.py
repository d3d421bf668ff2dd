"""Imports Gemma 1, 2 and 3 checkpoints (orbax, as the `gemma` library and Kaggle
ship them).

Format. A checkpoint is an orbax PyTree directory (`_METADATA`, `manifest.ocdbt`,
`d/`, ...). The released (Kaggle / `gs://gemma-data`) checkpoints hold a
semi-flat dict whose keys are "/"-joined module paths, one level above the
arrays:

    {"transformer/embedder": {"input_embedding": [vocab, embed]},
     "transformer/layer_0/pre_attention_norm": {"scale": [embed]},
     "transformer/layer_0/attn/q_einsum": {"w": [heads, embed, head_dim]},
     "transformer/layer_0/attn/kv_einsum": {"w": [2, kv_heads, embed, head_dim]},
     "transformer/layer_0/attn/attn_vec_einsum": {"w": [heads, head_dim, embed]},
     "transformer/layer_0/pre_ffw_norm": {"scale": [embed]},
     "transformer/layer_0/mlp/gating_einsum": {"w": [2, embed, mlp]},
     "transformer/layer_0/mlp/linear": {"w": [mlp, embed]},
     ..., "transformer/final_norm": {"scale": [embed]}}

Gemma 2 and 3 add, per layer, "post_attention_norm" and "post_ffw_norm"
({"scale": [embed]}); Gemma 3 also "attn/_query_norm" and "attn/_key_norm"
({"scale": [head_dim]}, RMSNorm of queries and keys before RoPE). Gemma 3 4B+
trees also hold a vision encoder ("SigLiPFromPatches_0/...", the embedder's
"mm_*"), which is not read.
When `kv_heads == heads` (Gemma 7B) attention has one `qkv_einsum` {"w": [3,
heads, embed, head_dim]} instead of `q_einsum` and `kv_einsum`. The `gemma`
library's in-memory tree (`params_lib.load_and_format_params`, and checkpoints
saved from it) nests the same names (`{"transformer": {"layer_0": {"attn": ...}}}`,
or without the "transformer" root in `gm` checkpoints) and drops the "w" of the
two MLP weights. All these forms are read; errors name a parameter by its
"/"-joined path as the checkpoint spells it.

Layout conversion (Gemma → ours, `transformer.py`); all else is a rename:
- `q_einsum` [heads, embed, head_dim] → `query` [embed, heads, head_dim];
  `kv_einsum[0]`, `kv_einsum[1]` → `key`, `value` likewise; `qkv_einsum[0..2]` →
  query, key, value.
- `gating_einsum[0]` → `gate` (the GELU'd half), `gating_einsum[1]` → `up`. Gemma 1
  (and Gemma 2 2B) store [2, embed, mlp]; Gemma 2 9B/27B and Gemma 3 store [2,
  mlp, embed] (`transpose_gating_einsum=True` in the `gemma` library and here;
  read from the shapes unless given).
- Norm scales are stored zero-centred (Gemma applies `1 + scale`): kept as they
  are, with `norm_scale_offset=1` in the config.
Arrays are restored on the host as numpy (released weights are bfloat16) and cast
to float32: ~10 GB for Gemma 2B, ~34 GB for 7B.

Semantics match the `gemma` library: input embeddings times sqrt(embed_dim),
RMSNorm with epsilon 1e-6, RoPE on the two halves of head_dim (as `apply_rope`),
query scaled by query_pre_attn_scalar**-0.5 (head_dim by default), approximate
(tanh) GELU, LM head tied to the unscaled embedding; Gemma 2/3's post-norms,
soft caps, sliding-window layers (`sliding_window`, every
`sliding_window_pattern`-th layer global), Gemma 3's qk-norm, local RoPE base
and linearly scaled global RoPE. Pinned by `tests/models/test_gemma_import.py`
(Gemma 1, against a float64 numpy forward written from the library's code) and
`test_gemma_orbax_parity.py` (Gemma 2 and 3, against logits and greedy
continuations the library itself computed, `tests/models/fixtures/`). What a
tree cannot show (soft caps, window, RoPE bases, query scaling) comes from the
config: `gemma_config`'s presets of the released models, which
`read_gemma_architecture` picks by the tree's shapes.

Vocabulary. The released embeddings have 256128 rows but the tokenizer 256000
pieces; the last 128 rows are padding. By default a vocabulary other than
`expected_vocab_size` is an error; `trim_vocab_to=256000` drops the padding rows
(the model then never puts mass on ids the tokenizer cannot decode).

    config = gemma_config("gemma-2b", vocab_size=TOKENIZER_VOCAB_SIZE)
    config, graphdef, params = load_gemma("/ckpt/gemma/2b", config,
                                          expected_vocab_size=sp.vocab_size(),
                                          trim_vocab_to=TOKENIZER_VOCAB_SIZE)
    model = nnx.merge(graphdef, params)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from ttscale.models.checkpoint_import import language_model_from_arrays
from ttscale.models.config import ARCHITECTURE_FIELDS, ModelConfig

CHECKPOINT_VOCAB_SIZE = 256_128  # rows of the released Gemma 1/2 embeddings
TOKENIZER_VOCAB_SIZE = 256_000   # pieces of their `tokenizer.model`
# Fields every Gemma config shares, whatever its size (Gemma 1 values).
GEMMA_ARCHITECTURE = dict(
    activation="gelu", rope_base=10_000.0, tie_embeddings=True, norm_eps=1e-6,
    norm_scale_offset=1.0, scale_embeddings=True)
# What Gemma 2 and 3 add to GEMMA_ARCHITECTURE, whatever the size: the tree
# shows neither (`post_norms` and `qk_norm` it does show).
_GEMMA2 = dict(post_norms=True, attn_logit_softcap=50.0, final_logit_softcap=30.0,
               sliding_window=4096, sliding_window_pattern=2)
_GEMMA3 = dict(post_norms=True, qk_norm=True, sliding_window_pattern=6,
               rope_base=1_000_000.0, rope_local_base=10_000.0)
_GEMMA3_LONG = dict(_GEMMA3, sliding_window=1024, rope_scaling="linear",
                    rope_scaling_factor=8.0)
# The released models, from the `gemma` library 4.0.1 (`gm.nn.Gemma2_2B`, ...;
# Gemma 1: `TransformerConfig.gemma_2b`, `gemma_7b`). `query_pre_attn_scalar`
# is the library's query scaling written as ours (scaled by its -1/2 power):
# head_dim, or embed_dim / num_heads for Gemma 2 27B and Gemma 3 27B.
_PRESETS = {
    "gemma-2b": dict(num_layers=18, embed_dim=2048, num_heads=8, num_kv_heads=1,
                     head_dim=256, mlp_dim=16_384),
    "gemma-7b": dict(num_layers=28, embed_dim=3072, num_heads=16, num_kv_heads=16,
                     head_dim=256, mlp_dim=24_576),
    "gemma2-2b": dict(_GEMMA2, num_layers=26, embed_dim=2304, num_heads=8,
                      num_kv_heads=4, head_dim=256, mlp_dim=9216,
                      query_pre_attn_scalar=256.0),
    "gemma2-9b": dict(_GEMMA2, num_layers=42, embed_dim=3584, num_heads=16,
                      num_kv_heads=8, head_dim=256, mlp_dim=14_336,
                      query_pre_attn_scalar=256.0),
    "gemma2-27b": dict(_GEMMA2, num_layers=46, embed_dim=4608, num_heads=32,
                       num_kv_heads=16, head_dim=128, mlp_dim=36_864,
                       query_pre_attn_scalar=144.0),
    "gemma3-270m": dict(_GEMMA3, num_layers=18, embed_dim=640, num_heads=4,
                        num_kv_heads=1, head_dim=256, mlp_dim=2048,
                        sliding_window=512, query_pre_attn_scalar=256.0),
    "gemma3-1b": dict(_GEMMA3, num_layers=26, embed_dim=1152, num_heads=4,
                      num_kv_heads=1, head_dim=256, mlp_dim=6912,
                      sliding_window=512, query_pre_attn_scalar=256.0),
    "gemma3-4b": dict(_GEMMA3_LONG, num_layers=34, embed_dim=2560, num_heads=8,
                      num_kv_heads=4, head_dim=256, mlp_dim=10_240,
                      query_pre_attn_scalar=256.0),
    "gemma3-12b": dict(_GEMMA3_LONG, num_layers=48, embed_dim=3840, num_heads=16,
                       num_kv_heads=8, head_dim=256, mlp_dim=15_360,
                       query_pre_attn_scalar=256.0),
    "gemma3-27b": dict(_GEMMA3_LONG, num_layers=62, embed_dim=5376, num_heads=32,
                       num_kv_heads=16, head_dim=128, mlp_dim=21_504,
                       query_pre_attn_scalar=168.0),
}
_SHAPE_FIELDS = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_dim", "post_norms", "qk_norm")
# Fields of a Gemma 2/3 `model` block its tree does not show (GEMMA_ARCHITECTURE's
# aside): a preset's, or the config's when the tree matches no released model.
UNSHOWN_FIELDS = ("attn_logit_softcap", "final_logit_softcap", "sliding_window",
                  "sliding_window_pattern", "rope_base", "rope_local_base",
                  "rope_scaling", "rope_scaling_factor", "query_pre_attn_scalar")
# The fields of GEMMA_ARCHITECTURE a Gemma checkpoint fixes (rope_base is free),
# and why.
_REQUIRED = {
    "activation": "its MLP is GeGLU",
    "tie_embeddings": "its LM head is the embedding",
    "norm_eps": "its RMSNorm uses 1e-6",
    "norm_scale_offset": "its norm scales are zero-centred",
    "scale_embeddings": "it scales embeddings by sqrt(embed_dim)",
}
_EMBEDDING = "transformer/embedder/input_embedding"
# Where the vision encoder sits: released (flat) trees, then nested ones.
_VISION_PREFIXES = ("SigLiPFromPatches_0/", "vision_encoder/", "transformer/vision_encoder/")


def gemma_config(name: str, vocab_size: int) -> ModelConfig:
  """The `ModelConfig` of a released Gemma model: "gemma-2b", "gemma-7b",
  "gemma2-2b", "gemma2-9b", "gemma2-27b", "gemma3-270m", "gemma3-1b",
  "gemma3-4b", "gemma3-12b" or "gemma3-27b" (Gemma 3: the text model).

  `vocab_size` is the embedding's row count after any trimming: for Gemma 1/2
  256128 (`CHECKPOINT_VOCAB_SIZE`) as released, 256000 (`TOKENIZER_VOCAB_SIZE`)
  with `trim_vocab_to=256000`; 262144 for Gemma 3.
  """
  if name not in _PRESETS:
    raise ValueError(f"unknown Gemma model {name!r}; expected one of {sorted(_PRESETS)}")
  return ModelConfig(vocab_size=vocab_size, **(GEMMA_ARCHITECTURE | _PRESETS[name]))


def _absolute(checkpoint_dir) -> epath.Path:
  """The directory as orbax needs it: absolute (a relative path reads as a
  checkpoint without metadata); a gs:// URL stays one."""
  path = epath.Path(checkpoint_dir)
  return path if "://" in str(checkpoint_dir) else path.resolve()


def _restore(checkpoint_dir: Path) -> Mapping:
  """The checkpoint's tree, every array numpy on the host."""
  checkpoint_dir = _absolute(checkpoint_dir)
  if not checkpoint_dir.is_dir():
    raise ValueError(f"{checkpoint_dir}: no such directory")
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    metadata = checkpointer.metadata(checkpoint_dir).item_metadata
    if metadata is not None:
      # Numpy whatever the saved type: a saved jax.Array would otherwise be
      # placed with its saved sharding, on devices this host may not have.
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                  metadata.tree)
      return checkpointer.restore(
          checkpoint_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as error:  # orbax raises many types for a damaged directory.
    first_line = str(error).splitlines()[0] if str(error) else ""
    raise ValueError(f"{checkpoint_dir}: cannot restore the orbax checkpoint "
                     f"({type(error).__name__}: {first_line})") from error
  raise ValueError(f"{checkpoint_dir}: not an orbax checkpoint (no tree metadata)")


def read_gemma_architecture(checkpoint_dir: str | Path) -> dict:
  """The `model` block a Gemma orbax checkpoint fixes, read from the shapes in
  its tree metadata (no array is restored).

  The shapes give the sizes, and Gemma 2/3's extra norms `post_norms` and
  `qk_norm` (Gemma 1 has neither, Gemma 2 the first, Gemma 3 both). What no
  shape shows (`UNSHOWN_FIELDS`: soft caps, sliding window, RoPE bases, query
  scaling) is the released model's whose sizes the tree has (`gemma_config`'s
  presets); for a Gemma 2/3 tree of no released size those fields are None,
  for the config to set. Gemma 1 trees keep the defaults (`rope_base` 10000).

  Returns:
    {field: value or None} for every name in `config.ARCHITECTURE_FIELDS`.

  Raises:
    ValueError: not an orbax checkpoint, or a tree without Gemma's attention
      and MLP weights in layer 0; one line naming the directory.
  """
  checkpoint_dir = _absolute(checkpoint_dir)
  if not checkpoint_dir.is_dir():
    raise ValueError(f"{checkpoint_dir}: no such directory")
  try:
    metadata = ocp.PyTreeCheckpointer().metadata(checkpoint_dir).item_metadata
  except Exception as error:  # orbax raises many types for a damaged directory.
    raise ValueError(f"{checkpoint_dir}: cannot read the orbax checkpoint's metadata "
                     f"({type(error).__name__})") from error
  if metadata is None:
    raise ValueError(f"{checkpoint_dir}: not an orbax checkpoint (no tree metadata)")
  shapes, _ = _by_name(jax.tree.map(lambda leaf: tuple(leaf.shape), metadata.tree,
                                    is_leaf=lambda leaf: hasattr(leaf, "shape")),
                       checkpoint_dir)
  layer = "transformer/layer_0/"
  try:
    num_layers = len({name.split("/")[1] for name in shapes
                      if name.startswith("transformer/layer_")})
    embed_dim = shapes[_EMBEDDING][1]
    mlp_dim = shapes[layer + "mlp/linear"][0]
    if layer + "attn/qkv_einsum/w" in shapes:  # [3, heads, embed, head_dim]
      _, num_heads, _, head_dim = shapes[layer + "attn/qkv_einsum/w"]
      num_kv_heads = num_heads
    else:  # [heads, embed, head_dim], [2, kv_heads, embed, head_dim]
      num_heads, _, head_dim = shapes[layer + "attn/q_einsum/w"]
      num_kv_heads = shapes[layer + "attn/kv_einsum/w"][1]
  except (KeyError, IndexError, ValueError) as error:
    raise ValueError(f"{checkpoint_dir}: not a Gemma parameter tree (looked for "
                     f"{error} among {len(shapes)} parameters)") from None
  shown = dict(num_layers=num_layers, embed_dim=embed_dim, num_heads=num_heads,
               num_kv_heads=num_kv_heads, head_dim=head_dim, mlp_dim=mlp_dim,
               post_norms=layer + "post_attention_norm/scale" in shapes,
               qk_norm=layer + "attn/_query_norm/scale" in shapes)
  fields = GEMMA_ARCHITECTURE | shown
  if shown["post_norms"] or shown["qk_norm"]:
    released = [preset for preset in _PRESETS.values()
                if all(preset.get(field, False) == shown[field] for field in _SHAPE_FIELDS)]
    fields |= released[0] if released else dict.fromkeys(UNSHOWN_FIELDS)
  defaults = dataclasses.asdict(ModelConfig(vocab_size=1))
  return {field: fields.get(field, defaults[field]) for field in ARCHITECTURE_FIELDS}


def _by_name(tree: Mapping, checkpoint_dir: Path) -> tuple[dict, dict]:
  """({canonical name: array}, {canonical name: the name in the checkpoint}).

  Canonical names are the "/"-joined paths of the released checkpoints, with the
  "transformer/" root and without the "w" of the MLP weights (as the `gemma`
  library's in-memory tree): "transformer/layer_0/mlp/gating_einsum".
  The vision encoder of Gemma 3 4B+ (and the embedder's projection into it)
  is left out, as the library's `text_only=True` leaves it: a text policy
  never runs it.
  """
  flat = {}

  def visit(prefix: str, node: Mapping):
    for key, value in node.items():
      name = f"{prefix}/{key}" if prefix else str(key)
      if isinstance(value, Mapping):
        visit(name, value)
      else:
        flat[name] = value

  visit("", tree)
  arrays, spelled = {}, {}
  for name, value in flat.items():
    if name.startswith(_VISION_PREFIXES) or "/embedder/mm_" in f"/{name}":
      continue
    canonical = name if name.startswith("transformer/") else f"transformer/{name}"
    if canonical.endswith(("/mlp/gating_einsum/w", "/mlp/linear/w")):
      canonical = canonical.removesuffix("/w")
    if canonical in arrays:
      raise ValueError(f"{checkpoint_dir}: parameter {spelled[canonical]!r} is stored "
                       f"twice (also as {name!r})")
    arrays[canonical], spelled[canonical] = value, name
  return arrays, spelled


def _expected_params(config: ModelConfig, transpose_gating_einsum: bool,
                     ) -> dict[str, tuple[tuple, Callable[[np.ndarray], dict]]]:
  """{canonical Gemma name: (its shape, array -> {our param path: our array})}."""
  d, h, k, hd, m, vocab = (config.embed_dim, config.num_heads, config.num_kv_heads,
                           config.head_dim, config.mlp_dim, config.vocab_size)

  def to(*path):
    return lambda w: {path: w}

  def heads_last(w):
    # [heads, embed, head_dim] --> ours [embed, heads, head_dim].
    return w.transpose(1, 0, 2)

  params = {_EMBEDDING: ((vocab, d), to("decoder", "embedding")),
            "transformer/final_norm/scale": ((d,), to("decoder", "final_norm", "scale"))}
  for layer in range(config.num_layers):
    gemma, ours = f"transformer/layer_{layer}/", ("decoder", "blocks", layer)
    attention = (*ours, "attention")
    if k == h:  # Gemma's `use_qkv_einsum`.
      params[gemma + "attn/qkv_einsum/w"] = ((3, h, d, hd), lambda w, a=attention: {
          (*a, "query"): heads_last(w[0]), (*a, "key"): heads_last(w[1]),
          (*a, "value"): heads_last(w[2])})
    else:
      params[gemma + "attn/q_einsum/w"] = ((h, d, hd), lambda w, a=attention: {
          (*a, "query"): heads_last(w)})
      params[gemma + "attn/kv_einsum/w"] = ((2, k, d, hd), lambda w, a=attention: {
          (*a, "key"): heads_last(w[0]), (*a, "value"): heads_last(w[1])})
    mlp = (*ours, "mlp")
    if transpose_gating_einsum:
      gating = ((2, m, d), lambda w, p=mlp: {(*p, "gate"): w[0].T, (*p, "up"): w[1].T})
    else:
      gating = ((2, d, m), lambda w, p=mlp: {(*p, "gate"): w[0], (*p, "up"): w[1]})
    if config.post_norms:  # Gemma 2 and 3: the sublayers' outputs normed again
      params |= {
          gemma + "post_attention_norm/scale": (
              (d,), to(*ours, "post_attention_norm", "scale")),
          gemma + "post_ffw_norm/scale": ((d,), to(*ours, "post_mlp_norm", "scale"))}
    if config.qk_norm:  # Gemma 3: RMSNorm over head_dim, before RoPE
      params |= {
          gemma + "attn/_query_norm/scale": (
              (hd,), to(*attention, "query_norm", "scale")),
          gemma + "attn/_key_norm/scale": ((hd,), to(*attention, "key_norm", "scale"))}
    params |= {
        gemma + "pre_attention_norm/scale": ((d,), to(*ours, "attention_norm", "scale")),
        gemma + "attn/attn_vec_einsum/w": ((h, hd, d), to(*attention, "out")),
        gemma + "pre_ffw_norm/scale": ((d,), to(*ours, "mlp_norm", "scale")),
        gemma + "mlp/gating_einsum": gating,
        gemma + "mlp/linear": ((m, d), to(*mlp, "down")),
    }
  return params


def _check_architecture(config: ModelConfig, checkpoint_dir: Path) -> None:
  for field, why in _REQUIRED.items():
    ours, needed = getattr(config, field), GEMMA_ARCHITECTURE[field]
    if ours != needed:
      raise ValueError(f"{checkpoint_dir}: model.{field}={ours!r} but a Gemma checkpoint "
                       f"needs {needed!r} ({why}); start from gemma_config")


def read_gemma_params(checkpoint_dir: str | Path, config: ModelConfig, *,
                      expected_vocab_size: int | None = None,
                      trim_vocab_to: int | None = None,
                      transpose_gating_einsum: bool | None = None,
                      ) -> dict[tuple, np.ndarray]:
  """Our parameters, float32 numpy keyed by `nnx` state path, from the checkpoint.

  E.g. `("decoder", "blocks", 0, "attention", "query")` -> [embed, heads, head_dim].

  Args:
    checkpoint_dir: the orbax checkpoint directory (e.g. Kaggle's `2b/`).
    config: the model to fill; the Gemma fields (`GEMMA_ARCHITECTURE` but
      `rope_base`) must have Gemma's values, e.g. from `gemma_config`.
    expected_vocab_size: the tokenizer's vocabulary size, checked (after any
      trimming) if given.
    trim_vocab_to: keep only the first rows of the embedding (drop padding rows,
      e.g. 256000 of the released 256128); None keeps them all.
    transpose_gating_einsum: the MLP gating weight is stored [2, mlp, embed]
      (Gemma 2 9B/27B, Gemma 3) rather than [2, embed, mlp] (Gemma 1, Gemma 2
      2B); None reads it from layer 0's shape (as [2, embed, mlp] when
      mlp_dim == embed_dim, where the shape cannot tell).

  Raises:
    ValueError: one line naming `checkpoint_dir` and, where one is to blame, the
      parameter: a parameter missing, unexpected (e.g. Gemma 2's post-norms
      without `post_norms`) or of
      a shape other than `config` implies; a vocabulary other than
      `expected_vocab_size` ("vocab_size"); a config without Gemma's fields.
  """
  checkpoint_dir = Path(checkpoint_dir)
  _check_architecture(config, checkpoint_dir)
  arrays, spelled = _by_name(_restore(checkpoint_dir), checkpoint_dir)
  if transpose_gating_einsum is None:
    gating = arrays.get("transformer/layer_0/mlp/gating_einsum")
    transpose_gating_einsum = (gating is not None and config.mlp_dim != config.embed_dim
                               and gating.shape == (2, config.mlp_dim, config.embed_dim))
  expected = _expected_params(config, transpose_gating_einsum)
  unexpected = sorted(spelled[name] for name in arrays if name not in expected)
  if unexpected:
    raise ValueError(f"{checkpoint_dir}: unexpected parameter {unexpected[0]!r} "
                     f"({len(unexpected)} in all) for the config ({config.num_layers} "
                     f"layers, {config.num_heads} heads, {config.num_kv_heads} kv heads)")
  if _EMBEDDING in arrays:
    embedding = arrays[_EMBEDDING]
    rows = embedding.shape[0] if embedding.ndim == 2 else None
    if trim_vocab_to is not None and rows is not None:
      if not 0 < trim_vocab_to <= rows:
        raise ValueError(f"{checkpoint_dir}: trim_vocab_to={trim_vocab_to} but "
                         f"{spelled[_EMBEDDING]!r} has {rows} rows")
      arrays[_EMBEDDING] = embedding = embedding[:trim_vocab_to]
      rows = trim_vocab_to
    if expected_vocab_size is not None and rows != expected_vocab_size:
      hint = (f"if the extra rows are padding, pass trim_vocab_to={expected_vocab_size}"
              if rows is not None and rows > expected_vocab_size
              else "checkpoint from another vocabulary")
      raise ValueError(f"{checkpoint_dir}: {spelled[_EMBEDDING]!r} gives vocab_size="
                       f"{rows} but the tokenizer has {expected_vocab_size}: {hint}")
  params = {}
  for name, (shape, convert) in expected.items():
    if name not in arrays:
      raise ValueError(f"{checkpoint_dir}: missing parameter {name!r}")
    array = np.asarray(arrays[name])
    if array.shape != shape:
      hint = ""
      if name.endswith("/mlp/gating_einsum") and array.shape == (2, *shape[:0:-1]):
        hint = (f"; the other gating layout: pass transpose_gating_einsum="
                f"{not transpose_gating_einsum}")
      raise ValueError(f"{checkpoint_dir}: parameter {spelled[name]!r} has shape "
                       f"{array.shape}; expected {shape} from the config{hint}")
    for path, value in convert(array).items():
      params[path] = np.ascontiguousarray(value, np.float32)
  return params


def load_gemma(checkpoint_dir: str | Path, config: ModelConfig, *,
               expected_vocab_size: int | None = None,
               trim_vocab_to: int | None = None,
               transpose_gating_einsum: bool | None = None,
               ) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
  """A `LanguageModel` holding a Gemma checkpoint, split as `nnx.split` would.

  Args: as `read_gemma_params`.

  Returns:
    (config, graphdef, params): `nnx.merge(graphdef, params)` is the model; params
    are float32 with the shapes `LanguageModel(config)` creates.

  Raises:
    ValueError: see `read_gemma_params`.
  """
  arrays = read_gemma_params(checkpoint_dir, config,
                             expected_vocab_size=expected_vocab_size,
                             trim_vocab_to=trim_vocab_to,
                             transpose_gating_einsum=transpose_gating_einsum)
  graphdef, params = language_model_from_arrays(config, arrays, str(checkpoint_dir))
  return config, graphdef, params
