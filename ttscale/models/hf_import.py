"""Imports Hugging Face checkpoints (`config.json` + `*.safetensors`) into `LanguageModel`.

Families (`config.json`'s `model_type`): Llama 2 and 3.x (`llama`, with or
without "llama3" rope scaling), Qwen 2.5 (`qwen2`: q/k/v biases), Qwen 3
(`qwen3`: qk-norm), Gemma (`gemma`), Gemma 2 (`gemma2`: post-norms, soft caps,
alternating sliding-window layers, `query_pre_attn_scalar`) and Gemma 3's
text model (`gemma3_text`: qk-norm, 5 local : 1 global layers with their own
RoPE bases, linear rope scaling on global layers). `read_hf_config` derives
the `ModelConfig` from `config.json`, in the layout transformers 4.x writes
(`rope_theta`, `rope_scaling`, `rope_local_base_freq`) or 5.x
(`rope_parameters`, per layer type for Gemma 3, and `layer_types`); a
`model_type` or option it cannot run is an error naming the field.

A checkpoint directory holds `config.json` and either `model.safetensors` or shards
`model-0000X-of-0000Y.safetensors` listed by `model.safetensors.index.json`. Tensors
are read with numpy (no torch) one at a time, transposed from `nn.Linear`'s
[out, in] into our einsum layouts, and cast to float32. Gemma's norm weights
are stored zero-centred (HF applies `1 + weight`) and are kept as they are,
with `norm_scale_offset=1`.

No rotary permutation is needed: HF applies RoPE with `rotate_half` on the
two halves of head_dim, as `apply_rope` does (tests/models/test_hf_parity.py
pins every family against transformers itself). Checkpoints converted the
other way (interleaved pairs, as in Meta's original `consolidated.*.pth`) are
not handled here.

    config, graphdef, params = load_hf("/ckpt/qwen3", expected_vocab_size=tok.vocab_size)
    model = nnx.merge(graphdef, params)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flax import nnx
from safetensors import safe_open

from ttscale.models.checkpoint_import import language_model_from_arrays
from ttscale.models.config import RUN_FIELDS, ModelConfig

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some exporters save although they are recomputed from the config.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "vocab_size",
                    "rms_norm_eps")
_GEMMAS = ("gemma", "gemma2", "gemma3_text")
MODEL_TYPES = ("llama", "qwen2", "qwen3", *_GEMMAS)
# HF activation names -> ours; "gelu" in HF is the exact (erf) GELU, which we lack.
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu"}
_GLOBAL, _LOCAL = "full_attention", "sliding_attention"


class _ConfigError(ValueError):
  """A field of config.json we cannot run (the caller adds the path)."""


def _rope_settings(hf: dict, model_type: str) -> dict:
  """ModelConfig's rope fields from either layout of config.json."""
  parameters = hf.get("rope_parameters")
  if parameters and _GLOBAL in parameters:          # transformers 5, per layer type
    global_rope, local_rope = parameters[_GLOBAL], parameters.get(_LOCAL)
    field = "rope_parameters"
  elif parameters:                                  # transformers 5, one for all
    global_rope, local_rope, field = parameters, None, "rope_parameters"
  else:                                             # transformers 4 and the Hub
    if "rope_theta" not in hf and model_type not in _GEMMAS:
      raise _ConfigError("missing field 'rope_theta'")
    # Absent bases: the defaults of HF's Gemma config classes.
    gemma3 = model_type == "gemma3_text"
    global_rope = dict(hf.get("rope_scaling") or {},
                       rope_theta=hf.get("rope_theta", 1e6 if gemma3 else 1e4))
    local_rope = ({"rope_theta": hf.get("rope_local_base_freq", 1e4)} if gemma3
                  else None)
    field = "rope_scaling"
  if "rope_theta" not in global_rope:
    raise _ConfigError(f"{field} has no 'rope_theta'")
  for rope in (global_rope, local_rope or {}):
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
      raise _ConfigError(f"{field}: partial_rotary_factor="
                         f"{rope['partial_rotary_factor']} is not supported; expected 1")
  settings = dict(rope_base=float(global_rope["rope_theta"]))
  kind = global_rope.get("rope_type", global_rope.get("type", "default"))
  if kind == "linear":
    settings.update(rope_scaling="linear", rope_scaling_factor=float(global_rope["factor"]))
  elif kind == "llama3":
    settings.update(
        rope_scaling="llama3", rope_scaling_factor=float(global_rope["factor"]),
        rope_low_freq_factor=float(global_rope["low_freq_factor"]),
        rope_high_freq_factor=float(global_rope["high_freq_factor"]),
        rope_original_context=int(global_rope["original_max_position_embeddings"]))
  elif kind != "default":
    raise _ConfigError(f"{field}: rope_type={kind!r} is not supported; expected "
                       "'default', 'linear' or 'llama3'")
  if local_rope is not None:
    local_kind = local_rope.get("rope_type", local_rope.get("type", "default"))
    if local_kind != "default":
      raise _ConfigError(f"{field}: rope_type={local_kind!r} on sliding-window layers "
                         "is not supported; expected 'default'")
    settings["rope_local_base"] = float(local_rope["rope_theta"])
  return settings


def _window_settings(hf: dict, model_type: str, num_layers: int) -> dict:
  """ModelConfig's sliding-window fields: the window and every how many layers
  one is global, checked against `layer_types` when config.json lists them."""
  if model_type in ("gemma2", "gemma3_text"):
    default_pattern = 2 if model_type == "gemma2" else 6
    pattern = int(hf.get("sliding_window_pattern")
                  or hf.get("_sliding_window_pattern") or default_pattern)
    layer_types = hf.get("layer_types")
    if layer_types:
      if _GLOBAL in layer_types:
        pattern = layer_types.index(_GLOBAL) + 1
      else:
        pattern = num_layers + 1  # every layer local
      expected = [_GLOBAL if (i + 1) % pattern == 0 else _LOCAL for i in range(num_layers)]
      if list(layer_types) != expected:
        raise _ConfigError(f"layer_types={layer_types!r} is not supported; expected a "
                           f"global layer every {pattern} layers")
    if not hf.get("sliding_window"):
      raise _ConfigError("missing field 'sliding_window'")
    return dict(sliding_window=int(hf["sliding_window"]), sliding_window_pattern=pattern)
  if hf.get("use_sliding_window"):
    # Qwen 2's window applies from layer `max_window_layers` on: not our pattern.
    raise _ConfigError("use_sliding_window=true is not supported; expected false")
  if any(kind != _GLOBAL for kind in hf.get("layer_types") or ()):
    raise _ConfigError(f"layer_types={hf['layer_types']!r} is not supported; expected "
                       f"only {_GLOBAL!r} for model_type={model_type!r}")
  return {}


def _model_config(hf: dict) -> ModelConfig:
  """The `ModelConfig` of a parsed config.json; `_ConfigError` names a field."""
  model_type = hf.get("model_type", "llama")
  if model_type not in MODEL_TYPES:
    raise _ConfigError(f"model_type={model_type!r} is not supported; expected one of "
                       f"{', '.join(MODEL_TYPES)}")
  for field in _REQUIRED_FIELDS:
    if field not in hf:
      raise _ConfigError(f"missing field {field!r}")
  gemma = model_type in _GEMMAS
  if gemma:
    # HF's Gemma classes read `hidden_activation` (tanh GELU when null) and
    # ignore `hidden_act`.
    activation_field = "hidden_activation"
    activation = hf.get(activation_field) or "gelu_pytorch_tanh"
  else:
    activation_field = "hidden_act"
    activation = hf.get(activation_field)
  if activation not in _ACTIVATIONS:
    raise _ConfigError(f"{activation_field}={activation!r}; expected one of "
                       f"{', '.join(map(repr, _ACTIVATIONS))}")
  if hf.get("mlp_bias"):
    raise _ConfigError("mlp_bias=true is not supported; our MLP has no biases")
  if hf.get("attention_bias"):
    raise _ConfigError("attention_bias=true is not supported; only Qwen 2's q/k/v "
                       "biases are (model_type='qwen2')")
  if hf.get("use_bidirectional_attention"):
    raise _ConfigError("use_bidirectional_attention=true is not supported; expected "
                       "a causal decoder")
  num_layers = hf["num_hidden_layers"]
  num_heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
  fields = dict(
      vocab_size=hf["vocab_size"], num_layers=num_layers, embed_dim=hf["hidden_size"],
      num_heads=num_heads, num_kv_heads=hf["num_key_value_heads"], head_dim=head_dim,
      mlp_dim=hf["intermediate_size"], activation=_ACTIVATIONS[activation],
      norm_eps=float(hf["rms_norm_eps"]),
      tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
      qkv_bias=model_type == "qwen2",
      qk_norm=model_type in ("qwen3", "gemma3_text"),
      **_rope_settings(hf, model_type), **_window_settings(hf, model_type, num_layers))
  if gemma:
    fields.update(norm_scale_offset=1.0, scale_embeddings=True,
                  post_norms=model_type != "gemma")
  if model_type in ("gemma2", "gemma3_text"):
    # Absent fields take the defaults of HF's config classes (null is off).
    caps = (50.0, 30.0) if model_type == "gemma2" else (None, None)
    fields.update(
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
        attn_logit_softcap=float(hf.get("attn_logit_softcapping", caps[0]) or 0.0),
        final_logit_softcap=float(hf.get("final_logit_softcapping", caps[1]) or 0.0))
  if not math.isfinite(fields["rope_base"]):
    raise _ConfigError(f"rope_theta={fields['rope_base']}: expected a finite number")
  return ModelConfig(**fields)


def read_hf_config(path: str | Path, *,
                   expected_vocab_size: int | None = None) -> ModelConfig:
  """The `ModelConfig` described by a Hugging Face `config.json`.

  Args:
    path: the checkpoint's directory, or its `config.json` itself.
    expected_vocab_size: the tokenizer's vocabulary size, checked if given.

  Returns:
    the config `LanguageModel` needs to run the checkpoint (dropout 0). Absent
    `tie_word_embeddings` means False, as in HF's Llama and Qwen configs (True
    for Gemma); `rms_norm_eps` becomes `norm_eps`.

  Raises:
    ValueError: a missing or unsupported field (`model_type`, an activation,
      biases, a rope type, a layer pattern...), or a vocabulary size other than
      `expected_vocab_size`; one line naming the file and the field.
  """
  path = Path(path)
  if path.is_dir():
    path = path / CONFIG_FILE
  try:
    hf = json.loads(path.read_text())
  except FileNotFoundError:
    raise ValueError(f"{path}: no such file") from None
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error})") from None
  try:
    config = _model_config(hf)
  except (_ConfigError, KeyError, TypeError, ValueError) as error:
    message = f"missing field {error}" if isinstance(error, KeyError) else str(error)
    if message.startswith("model."):
      message = f"gives {message}"
    raise ValueError(f"{path}: {message}") from None
  if expected_vocab_size is not None and config.vocab_size != expected_vocab_size:
    raise ValueError(
        f"{path}: vocab_size={config.vocab_size} but the tokenizer has "
        f"{expected_vocab_size}: checkpoint from another vocabulary")
  return config


def hf_model_block(path: str | Path) -> dict:
  """The `model` config block of a checkpoint: `ModelConfig`'s fields but
  `vocab_size` (the tokenizer's), read from its `config.json`, e.g.
  `c.model = config_dict.ConfigDict(hf_model_block("/ckpt/qwen3"))`.

  Raises:
    ValueError: see `read_hf_config`.
  """
  fields = dataclasses.asdict(read_hf_config(path))
  del fields["vocab_size"]
  return fields


def _tensor_files(checkpoint_dir: Path) -> tuple[dict[str, Path], Path]:
  """{tensor name: the file holding it}, and the file that lists them (for errors)."""
  index_path = checkpoint_dir / INDEX_FILE
  if index_path.exists():
    try:
      weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError):
      raise ValueError(f"{index_path}: expected JSON with a 'weight_map' field") from None
    files = {name: checkpoint_dir / shard for name, shard in weight_map.items()}
    for name, shard in files.items():
      if not shard.exists():
        raise ValueError(f"{index_path}: shard {shard.name!r} (holding {name!r}) "
                         "does not exist")
    return files, index_path
  single_path = checkpoint_dir / SINGLE_FILE
  if single_path.exists():
    with safe_open(single_path, framework="np") as handle:
      return {name: single_path for name in handle.keys()}, single_path
  raise ValueError(f"{checkpoint_dir}: neither {SINGLE_FILE} nor {INDEX_FILE}")


def _expected_tensors(config: ModelConfig) -> dict[str, tuple[tuple, tuple, Callable]]:
  """{HF name: (HF shape, our param path, HF array -> our array)}.

  The layer norms' names depend on `post_norms`: without them (Llama, Qwen,
  Gemma 1) `post_attention_layernorm` is the MLP's pre-norm; with them (Gemma
  2 and 3) it norms the attention's output and `pre_feedforward_layernorm` is
  the MLP's pre-norm.
  """
  d, h, k, hd, m, vocab = (config.embed_dim, config.num_heads, config.num_kv_heads,
                           config.head_dim, config.mlp_dim, config.vocab_size)

  def projection(heads):
    # HF [heads * head_dim, embed] (y = x W^T) --> ours [embed, heads, head_dim].
    return lambda w: w.T.reshape(d, heads, hd)

  def bias(heads):
    return lambda b: b.reshape(heads, hd)

  def same(w):
    return w

  def transpose(w):
    return w.T

  tensors = {"model.embed_tokens.weight": ((vocab, d), ("decoder", "embedding"), same),
             "model.norm.weight": ((d,), ("decoder", "final_norm", "scale"), same)}
  for layer in range(config.num_layers):
    hf, ours = f"model.layers.{layer}.", ("decoder", "blocks", layer)
    attention = (*ours, "attention")
    tensors |= {
        hf + "input_layernorm.weight": ((d,), (*ours, "attention_norm", "scale"), same),
        hf + "self_attn.q_proj.weight": ((h * hd, d), (*attention, "query"),
                                         projection(h)),
        hf + "self_attn.k_proj.weight": ((k * hd, d), (*attention, "key"),
                                         projection(k)),
        hf + "self_attn.v_proj.weight": ((k * hd, d), (*attention, "value"),
                                         projection(k)),
        # HF [embed, heads * head_dim] --> ours [heads, head_dim, embed].
        hf + "self_attn.o_proj.weight": ((d, h * hd), (*attention, "out"),
                                         lambda w: w.T.reshape(h, hd, d)),
        hf + "mlp.gate_proj.weight": ((m, d), (*ours, "mlp", "gate"), transpose),
        hf + "mlp.up_proj.weight": ((m, d), (*ours, "mlp", "up"), transpose),
        hf + "mlp.down_proj.weight": ((d, m), (*ours, "mlp", "down"), transpose),
    }
    if config.post_norms:
      tensors |= {
          hf + "post_attention_layernorm.weight": (
              (d,), (*ours, "post_attention_norm", "scale"), same),
          hf + "pre_feedforward_layernorm.weight": (
              (d,), (*ours, "mlp_norm", "scale"), same),
          hf + "post_feedforward_layernorm.weight": (
              (d,), (*ours, "post_mlp_norm", "scale"), same)}
    else:
      tensors[hf + "post_attention_layernorm.weight"] = (
          (d,), (*ours, "mlp_norm", "scale"), same)
    if config.qkv_bias:
      tensors |= {
          hf + "self_attn.q_proj.bias": ((h * hd,), (*attention, "query_bias"), bias(h)),
          hf + "self_attn.k_proj.bias": ((k * hd,), (*attention, "key_bias"), bias(k)),
          hf + "self_attn.v_proj.bias": ((k * hd,), (*attention, "value_bias"), bias(k))}
    if config.qk_norm:
      tensors |= {
          hf + "self_attn.q_norm.weight": ((hd,), (*attention, "query_norm", "scale"), same),
          hf + "self_attn.k_norm.weight": ((hd,), (*attention, "key_norm", "scale"), same)}
  if not config.tie_embeddings:
    tensors["lm_head.weight"] = ((vocab, d), ("lm_head",), transpose)
  return tensors


def read_hf_params(checkpoint_dir: str | Path, config: ModelConfig, *,
                   checkpoint_vocab_size: int | None = None) -> dict[tuple, np.ndarray]:
  """Our parameters, float32 numpy keyed by `nnx` state path, from the safetensors.

  E.g. `("decoder", "blocks", 0, "attention", "query")` -> [embed, heads, head_dim].
  With `checkpoint_vocab_size` (the rows the checkpoint's embedding and LM head
  have), only their first `config.vocab_size` rows are kept.

  Raises:
    ValueError: a tensor missing, of the wrong shape, or not used by `config`
      (e.g. biases), or a shard named by the index that does not exist; the
      message names the tensor and the file.
  """
  checkpoint_dir = Path(checkpoint_dir)
  files, listing = _tensor_files(checkpoint_dir)
  rows = config.vocab_size if checkpoint_vocab_size is None else checkpoint_vocab_size
  expected = _expected_tensors(dataclasses.replace(config, vocab_size=rows))
  unexpected = sorted(
      name for name in files
      if name not in expected and not name.endswith(_IGNORED_SUFFIXES)
      # Tied checkpoints may still carry a copy of the embedding; HF ignores it too.
      and not (config.tie_embeddings and name == "lm_head.weight"))
  if unexpected:
    raise ValueError(f"{listing}: unexpected tensor {unexpected[0]!r} "
                     f"({len(unexpected)} in all) for the model in {CONFIG_FILE}")
  params = {}
  with contextlib.ExitStack() as stack:
    handles = {}
    for name, (shape, path, convert) in expected.items():
      if name not in files:
        raise ValueError(f"{listing}: missing tensor {name!r}")
      file = files[name]
      if file not in handles:
        handles[file] = stack.enter_context(safe_open(file, framework="np"))
      if name not in handles[file].keys():
        raise ValueError(f"{file}: missing tensor {name!r} (listed in {listing.name})")
      tensor = handles[file].get_tensor(name)
      if tensor.shape != shape:
        raise ValueError(f"{file}: tensor {name!r} has shape {tensor.shape}; expected "
                         f"{shape} from {CONFIG_FILE}")
      params[path] = np.asarray(convert(tensor), np.float32)
  if rows != config.vocab_size:
    embedding = ("decoder", "embedding")
    params[embedding] = params[embedding][:config.vocab_size]
    if ("lm_head",) in params:  # [embed, vocab]
      params[("lm_head",)] = params[("lm_head",)][:, :config.vocab_size]
  return params


def load_hf(checkpoint_dir: str | Path, config: ModelConfig | None = None, *,
            expected_vocab_size: int | None = None, trim_vocab_to: int | None = None,
            ) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
  """A `LanguageModel` holding a HF checkpoint, split as `nnx.split` would.

  Args:
    checkpoint_dir: holds `config.json` and the safetensors file(s).
    config: the config to build, e.g. to set `dropout_rate`; it must agree with
      `config.json` on every other field. None builds `config.json`'s.
    expected_vocab_size: the tokenizer's vocabulary size, checked if given.
    trim_vocab_to: keep only the first rows of the embedding (and LM head):
      Qwen's and Gemma 3's embeddings have rows past their tokenizer's ids
      (151936 for 151665 in Qwen 2.5/3), never sampled by a model trained
      with that tokenizer; `config.vocab_size` is then this.

  Returns:
    (config, graphdef, params): `nnx.merge(graphdef, params)` is the model; params
    are in `config.param_dtype` with the shapes `LanguageModel(config)` creates.

  Raises:
    ValueError: see `read_hf_config` and `read_hf_params`; `trim_vocab_to`
      more than the checkpoint's rows.
  """
  checkpoint_config = read_hf_config(
      checkpoint_dir, expected_vocab_size=None if trim_vocab_to else expected_vocab_size)
  rows = checkpoint_config.vocab_size
  if trim_vocab_to:
    if trim_vocab_to > rows:
      raise ValueError(f"{Path(checkpoint_dir) / CONFIG_FILE}: vocab_size={rows} has "
                       f"fewer rows than trim_vocab_to={trim_vocab_to}")
    checkpoint_config = dataclasses.replace(checkpoint_config, vocab_size=trim_vocab_to)
    if expected_vocab_size is not None and trim_vocab_to != expected_vocab_size:
      raise ValueError(f"trim_vocab_to={trim_vocab_to} but the tokenizer has "
                       f"{expected_vocab_size}")
  if config is None:
    config = checkpoint_config
  for field in dataclasses.fields(ModelConfig):
    ours, theirs = getattr(config, field.name), getattr(checkpoint_config, field.name)
    # Dropout and the dtypes are choices of the run, not facts of the checkpoint.
    if field.name not in RUN_FIELDS and ours != theirs:
      raise ValueError(f"{Path(checkpoint_dir) / CONFIG_FILE}: gives {field.name}="
                       f"{theirs!r} but the config passed has {ours!r}")
  arrays = read_hf_params(checkpoint_dir, config, checkpoint_vocab_size=rows)
  graphdef, params = language_model_from_arrays(config, arrays, str(checkpoint_dir))
  return config, graphdef, params
