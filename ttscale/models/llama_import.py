"""Imports Llama-family checkpoints (Hugging Face `*.safetensors`) into `LanguageModel`.

A checkpoint directory holds `config.json` and either `model.safetensors` or shards
`model-0000X-of-0000Y.safetensors` listed by `model.safetensors.index.json`. Tensors
are read with numpy (no torch) one at a time, transposed from `nn.Linear`'s
[out, in] into our einsum layouts, and cast to float32.

No rotary permutation is needed: HF Llama applies RoPE with `rotate_half` on the
two halves of head_dim, as `apply_rope` does (the test pins this against an
independent numpy forward). Checkpoints converted the other way (interleaved
pairs, as in Meta's original `consolidated.*.pth`) are not handled here.

    config, graphdef, params = load_llama("/ckpt/llama", expected_vocab_size=sp.vocab_size())
    model = nnx.merge(graphdef, params)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from ttscale.models.config import ModelConfig
from ttscale.models.transformer import LanguageModel

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some exporters save although they are recomputed from the config.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "vocab_size",
                    "rope_theta", "rms_norm_eps", "hidden_act")


def read_llama_config(checkpoint_dir: str | Path, *,
                      expected_vocab_size: int | None = None) -> ModelConfig:
  """The `ModelConfig` described by `checkpoint_dir/config.json`.

  `tie_word_embeddings` defaults to False when absent, as in HF's `LlamaConfig`;
  every field in `_REQUIRED_FIELDS` must be present; `rms_norm_eps` becomes
  `norm_eps`.

  Raises:
    ValueError: a missing or unsupported field, or a vocabulary size other than
      `expected_vocab_size` (the tokenizer's), naming the file and the field.
  """
  path = Path(checkpoint_dir) / CONFIG_FILE
  try:
    hf = json.loads(path.read_text())
  except FileNotFoundError:
    raise ValueError(f"{path}: no such file") from None
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error})") from None
  for field in _REQUIRED_FIELDS:
    if field not in hf:
      raise ValueError(f"{path}: missing field {field!r}")
  if hf["hidden_act"] != "silu":
    raise ValueError(f"{path}: hidden_act={hf['hidden_act']!r}; expected 'silu'")
  rope_scaling = hf.get("rope_scaling")
  if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) != "default":
    # Llama 3.1+ rescales frequencies; `apply_rope` knows only the plain schedule.
    raise ValueError(f"{path}: rope_scaling={rope_scaling!r} is not supported; "
                     "expected null")
  for field in ("attention_bias", "mlp_bias"):
    if hf.get(field):
      raise ValueError(f"{path}: {field}=true is not supported; our projections "
                       "have no biases")
  if (expected_vocab_size is not None
      and hf["vocab_size"] != expected_vocab_size):
    raise ValueError(
        f"{path}: vocab_size={hf['vocab_size']} but the tokenizer has "
        f"{expected_vocab_size}: checkpoint from another vocabulary")
  num_heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
  try:
    return ModelConfig(
        vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
        embed_dim=hf["hidden_size"], num_heads=num_heads,
        num_kv_heads=hf["num_key_value_heads"], head_dim=head_dim,
        mlp_dim=hf["intermediate_size"], activation="silu",
        rope_base=float(hf["rope_theta"]), norm_eps=float(hf["rms_norm_eps"]),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
  except ValueError as error:
    raise ValueError(f"{path}: {error}") from None


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


def _expected_tensors(config: ModelConfig) -> dict[str, tuple[tuple, Callable]]:
  """{HF name: (HF shape, our param path, HF array -> our array)}."""
  d, h, k, hd, m, vocab = (config.embed_dim, config.num_heads, config.num_kv_heads,
                           config.head_dim, config.mlp_dim, config.vocab_size)

  def projection(heads):
    # HF [heads * head_dim, embed] (y = x W^T) --> ours [embed, heads, head_dim].
    return lambda w: w.T.reshape(d, heads, hd)

  def same(w):
    return w

  def transpose(w):
    return w.T

  tensors = {"model.embed_tokens.weight": ((vocab, d), ("decoder", "embedding"), same),
             "model.norm.weight": ((d,), ("decoder", "final_norm", "scale"), same)}
  for layer in range(config.num_layers):
    hf, ours = f"model.layers.{layer}.", ("decoder", "blocks", layer)
    tensors |= {
        hf + "input_layernorm.weight": ((d,), (*ours, "attention_norm", "scale"), same),
        hf + "self_attn.q_proj.weight": ((h * hd, d), (*ours, "attention", "query"),
                                         projection(h)),
        hf + "self_attn.k_proj.weight": ((k * hd, d), (*ours, "attention", "key"),
                                         projection(k)),
        hf + "self_attn.v_proj.weight": ((k * hd, d), (*ours, "attention", "value"),
                                         projection(k)),
        # HF [embed, heads * head_dim] --> ours [heads, head_dim, embed].
        hf + "self_attn.o_proj.weight": ((d, h * hd), (*ours, "attention", "out"),
                                         lambda w: w.T.reshape(h, hd, d)),
        hf + "post_attention_layernorm.weight": ((d,), (*ours, "mlp_norm", "scale"),
                                                 same),
        hf + "mlp.gate_proj.weight": ((m, d), (*ours, "mlp", "gate"), transpose),
        hf + "mlp.up_proj.weight": ((m, d), (*ours, "mlp", "up"), transpose),
        hf + "mlp.down_proj.weight": ((d, m), (*ours, "mlp", "down"), transpose),
    }
  if not config.tie_embeddings:
    tensors["lm_head.weight"] = ((vocab, d), ("lm_head",), transpose)
  return tensors


def read_llama_params(checkpoint_dir: str | Path,
                      config: ModelConfig) -> dict[tuple, np.ndarray]:
  """Our parameters, float32 numpy keyed by `nnx` state path, from the safetensors.

  E.g. `("decoder", "blocks", 0, "attention", "query")` -> [embed, heads, head_dim].

  Raises:
    ValueError: a tensor missing, of the wrong shape, or not used by `config`
      (e.g. biases), or a shard named by the index that does not exist; the
      message names the tensor and the file.
  """
  checkpoint_dir = Path(checkpoint_dir)
  files, listing = _tensor_files(checkpoint_dir)
  expected = _expected_tensors(config)
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
  return params


def load_llama(checkpoint_dir: str | Path, config: ModelConfig | None = None, *,
               expected_vocab_size: int | None = None,
               ) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
  """A `LanguageModel` holding a Llama checkpoint, split as `nnx.split` would.

  Args:
    checkpoint_dir: holds `config.json` and the safetensors file(s).
    config: the config to build, e.g. to set `dropout_rate`; it must agree with
      `config.json` on every other field. None builds `config.json`'s.
    expected_vocab_size: the tokenizer's vocabulary size, checked if given.

  Returns:
    (config, graphdef, params): `nnx.merge(graphdef, params)` is the model; params
    are float32 with the shapes `LanguageModel(config)` creates.

  Raises:
    ValueError: see `read_llama_config` and `read_llama_params`.
  """
  checkpoint_config = read_llama_config(checkpoint_dir,
                                        expected_vocab_size=expected_vocab_size)
  if config is None:
    config = checkpoint_config
  for field in dataclasses.fields(ModelConfig):
    ours, theirs = getattr(config, field.name), getattr(checkpoint_config, field.name)
    if field.name != "dropout_rate" and ours != theirs:
      raise ValueError(f"{Path(checkpoint_dir) / CONFIG_FILE}: gives {field.name}="
                       f"{theirs!r} but the config passed has {ours!r}")
  arrays = read_llama_params(checkpoint_dir, config)
  # Abstract init: the random weights would be thrown away.
  graphdef, state = nnx.split(
      nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0))))
  flat = []
  for path, variable in nnx.to_flat_state(state):
    if path not in arrays:
      raise ValueError(f"{checkpoint_dir}: no tensor maps to our parameter {path}")
    flat.append((path, variable.replace(jnp.asarray(arrays.pop(path)))))
  return config, graphdef, nnx.from_flat_state(flat)
