"""Tests of the Llama importer against an independent numpy forward of the HF model.

The checkpoints are tiny random Llamas (GQA, untied and tied) written in the HF
layout by hand; the reference forward follows HF's `modeling_llama` (RMSNorm,
RoPE with `rotate_half`, `repeat_kv`, SiLU-gated MLP) in float64, so agreement
pins the transposes, the head split and the rotary convention.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from ttscale.models import ModelConfig, init_cache
from ttscale.models.llama_import import load_llama, read_llama_params

EMBED, LAYERS, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 32, 2, 4, 2, 8, 48, 40
ROPE_THETA = 500.0   # small, so that the rotation varies fast over 7 positions
TOKENS = np.array([[3, 17, 0, 39, 8, 8, 21], [5, 1, 30, 2, 11, 38, 6]], np.int32)
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def _hf_config(tied: bool) -> dict:
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
          "hidden_size": EMBED, "intermediate_size": MLP, "num_hidden_layers": LAYERS,
          "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
          "vocab_size": VOCAB, "rope_theta": ROPE_THETA, "rms_norm_eps": 1e-6,
          "tie_word_embeddings": tied, "hidden_act": "silu", "rope_scaling": None,
          "torch_dtype": "float32"}


def _hf_tensors(tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
  """Random HF-layout weights ([out, in] for every Linear), float32."""
  rng = np.random.default_rng(seed)

  def linear(out_dim, in_dim):
    return (rng.normal(size=(out_dim, in_dim)) * in_dim ** -0.5).astype(np.float32)

  def norm():
    # Not all ones, so a norm loaded into the wrong place shows.
    return (1.0 + 0.3 * rng.normal(size=(EMBED,))).astype(np.float32)

  tensors = {"model.embed_tokens.weight": rng.normal(size=(VOCAB, EMBED)).astype(
      np.float32), "model.norm.weight": norm()}
  for i in range(LAYERS):
    p = f"model.layers.{i}."
    tensors |= {p + "input_layernorm.weight": norm(),
                p + "self_attn.q_proj.weight": linear(HEADS * HEAD_DIM, EMBED),
                p + "self_attn.k_proj.weight": linear(KV_HEADS * HEAD_DIM, EMBED),
                p + "self_attn.v_proj.weight": linear(KV_HEADS * HEAD_DIM, EMBED),
                p + "self_attn.o_proj.weight": linear(EMBED, HEADS * HEAD_DIM),
                p + "post_attention_layernorm.weight": norm(),
                p + "mlp.gate_proj.weight": linear(MLP, EMBED),
                p + "mlp.up_proj.weight": linear(MLP, EMBED),
                p + "mlp.down_proj.weight": linear(EMBED, MLP)}
  if not tied:
    tensors["lm_head.weight"] = linear(VOCAB, EMBED)
  return tensors


def _write(directory: Path, tensors: dict[str, np.ndarray], hf_config: dict,
           shards: int = 1) -> Path:
  """Writes `config.json` and one file, or `shards` shards with an index."""
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(hf_config))
  if shards == 1:
    save_file(tensors, str(directory / "model.safetensors"))
    return directory
  names = sorted(tensors)
  weight_map = {}
  for shard in range(shards):
    file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
    part = names[shard::shards]
    save_file({name: tensors[name] for name in part}, str(directory / file))
    weight_map |= {name: file for name in part}
  (directory / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
  return directory


def _reference_logits(tensors: dict[str, np.ndarray], hf_config: dict,
                      tokens: np.ndarray) -> np.ndarray:
  """HF Llama's forward in float64 numpy: logits [batch, T, vocab]."""
  w = {name: value.astype(np.float64) for name, value in tensors.items()}
  eps, hd = hf_config["rms_norm_eps"], HEAD_DIM
  length = tokens.shape[1]

  def rms_norm(x, weight):
    return weight * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)

  def rotate_half(x):
    return np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)

  inv_freq = 1.0 / hf_config["rope_theta"] ** (np.arange(0, hd, 2) / hd)
  angles = np.arange(length)[:, None] * inv_freq[None]
  emb = np.concatenate([angles, angles], axis=-1)[None, :, None, :]  # [1, T, 1, hd]
  cos, sin = np.cos(emb), np.sin(emb)
  causal = np.tril(np.ones((length, length), bool))

  x = w["model.embed_tokens.weight"][tokens]
  for i in range(LAYERS):
    p = f"model.layers.{i}."
    h = rms_norm(x, w[p + "input_layernorm.weight"])
    batch = x.shape[0]
    q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(batch, length, HEADS, hd)
    k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(batch, length, KV_HEADS, hd)
    v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(batch, length, KV_HEADS, hd)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    # HF's repeat_kv: kv head j serves query heads j * groups ... (j + 1) * groups - 1.
    k = np.repeat(k, HEADS // KV_HEADS, axis=2)
    v = np.repeat(v, HEADS // KV_HEADS, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(hd)
    scores = np.where(causal, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    mixed = np.einsum("bhts,bshd->bthd", probs, v).reshape(batch, length, HEADS * hd)
    x = x + mixed @ w[p + "self_attn.o_proj.weight"].T
    h = rms_norm(x, w[p + "post_attention_layernorm.weight"])
    gate = h @ w[p + "mlp.gate_proj.weight"].T
    hidden = gate / (1.0 + np.exp(-gate)) * (h @ w[p + "mlp.up_proj.weight"].T)
    x = x + hidden @ w[p + "mlp.down_proj.weight"].T
  x = rms_norm(x, w["model.norm.weight"])
  head = w["model.embed_tokens.weight"] if hf_config["tie_word_embeddings"] else w[
      "lm_head.weight"]
  return x @ head.T


def _our_logits(checkpoint_dir: Path) -> np.ndarray:
  _, graphdef, params = load_llama(checkpoint_dir, expected_vocab_size=VOCAB)
  positions = np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape)
  forward = jax.jit(lambda p, t, pos: nnx.merge(graphdef, p)(t, pos))
  return np.asarray(forward(params, jnp.asarray(TOKENS), jnp.asarray(positions)))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_imported_logits_match_reference_hf_forward(tmp_path, tied):
  tensors, hf_config = _hf_tensors(tied), _hf_config(tied)
  checkpoint = _write(tmp_path / "ckpt", tensors, hf_config)
  np.testing.assert_allclose(_our_logits(checkpoint),
                             _reference_logits(tensors, hf_config, TOKENS), **TOLERANCE)


def test_sharded_checkpoint_imports_same_params_as_single_file(tmp_path):
  tensors, hf_config = _hf_tensors(tied=False), _hf_config(tied=False)
  config, _, single = load_llama(_write(tmp_path / "single", tensors, hf_config))
  _, _, sharded = load_llama(_write(tmp_path / "sharded", tensors, hf_config, shards=2))
  assert sorted(Path(tmp_path / "sharded").glob("*.safetensors"))[1].name == (
      "model-00002-of-00002.safetensors")
  jax.tree.map(np.testing.assert_array_equal, single, sharded)
  assert config == ModelConfig(
      vocab_size=VOCAB, num_layers=LAYERS, embed_dim=EMBED, num_heads=HEADS,
      num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, mlp_dim=MLP, activation="silu",
      rope_base=ROPE_THETA, tie_embeddings=False)


def test_extend_on_empty_cache_matches_reference(tmp_path):
  tensors, hf_config = _hf_tensors(tied=False), _hf_config(tied=False)
  config, graphdef, params = load_llama(_write(tmp_path / "ckpt", tensors, hf_config))
  extend = jax.jit(lambda p, t, valid, cache: nnx.merge(graphdef, p).extend(t, valid, cache))
  cache = init_cache(config, TOKENS.shape[0], max_slots=TOKENS.shape[1] + 1)
  logits, cache = extend(params, jnp.asarray(TOKENS), jnp.ones(TOKENS.shape, bool), cache)
  reference = _reference_logits(tensors, hf_config, TOKENS)
  np.testing.assert_allclose(np.asarray(logits)[:, -1], reference[:, -1], **TOLERANCE)
  np.testing.assert_allclose(np.asarray(logits), reference, **TOLERANCE)
  assert int(cache.write_index) == TOKENS.shape[1]


def test_bfloat16_checkpoint_is_cast_to_float32(tmp_path):
  tensors = {name: value.astype(ml_dtypes.bfloat16)
             for name, value in _hf_tensors(tied=True).items()}
  checkpoint = _write(tmp_path / "ckpt", tensors, _hf_config(tied=True))
  config, _, params = load_llama(checkpoint)
  query = params["decoder"]["blocks"][1]["attention"]["query"][...]
  assert query.dtype == jnp.float32
  hf_query = tensors["model.layers.1.self_attn.q_proj.weight"].astype(np.float32)
  np.testing.assert_array_equal(np.asarray(query),
                                hf_query.T.reshape(EMBED, HEADS, HEAD_DIM))
  assert "lm_head" not in params and config.tie_embeddings


def test_rotary_buffers_are_ignored_and_tied_lm_head_copy_is_skipped(tmp_path):
  tensors = _hf_tensors(tied=True)
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(HEAD_DIM // 2,
                                                                    np.float32)
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
  checkpoint = _write(tmp_path / "ckpt", tensors, _hf_config(tied=True))
  assert ("lm_head",) not in read_llama_params(checkpoint, load_llama(checkpoint)[0])


# --- Errors: one line, naming the file and the field or tensor. ---


def _load_error(checkpoint: Path, **kwargs) -> str:
  with pytest.raises(ValueError) as error:
    load_llama(checkpoint, **kwargs)
  message = str(error.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("field", ["hidden_size", "num_key_value_heads", "rope_theta"])
def test_missing_config_field_is_named(tmp_path, field):
  hf_config = _hf_config(tied=False)
  del hf_config[field]
  checkpoint = _write(tmp_path / "ckpt", _hf_tensors(tied=False), hf_config)
  message = _load_error(checkpoint)
  assert "config.json" in message and repr(field) in message


def test_non_silu_activation_is_rejected(tmp_path):
  hf_config = _hf_config(tied=False) | {"hidden_act": "gelu"}
  message = _load_error(_write(tmp_path / "ckpt", _hf_tensors(tied=False), hf_config))
  assert "config.json" in message and "hidden_act='gelu'" in message


def test_vocabulary_other_than_tokenizers_is_rejected(tmp_path):
  checkpoint = _write(tmp_path / "ckpt", _hf_tensors(tied=False), _hf_config(tied=False))
  message = _load_error(checkpoint, expected_vocab_size=VOCAB + 1)
  assert "config.json" in message and "vocab_size=40" in message
  assert "checkpoint from another vocabulary" in message


@pytest.mark.parametrize("shards", [1, 2], ids=["single", "sharded"])
def test_missing_tensor_is_named(tmp_path, shards):
  tensors = _hf_tensors(tied=False)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  checkpoint = _write(tmp_path / "ckpt", tensors, _hf_config(tied=False), shards)
  message = _load_error(checkpoint)
  listing = "model.safetensors" if shards == 1 else "model.safetensors.index.json"
  assert listing in message and "'model.layers.1.mlp.up_proj.weight'" in message


def test_tensor_absent_from_the_shard_its_index_names_is_named(tmp_path):
  tensors = _hf_tensors(tied=False)
  checkpoint = _write(tmp_path / "ckpt", tensors, _hf_config(tied=False), shards=2)
  index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
  name = "model.norm.weight"
  index["weight_map"][name] = next(
      f for f in set(index["weight_map"].values()) if f != index["weight_map"][name])
  (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
  message = _load_error(checkpoint)
  assert index["weight_map"][name] in message and repr(name) in message


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
  tensors = _hf_tensors(tied=False)
  tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros(
      (HEADS * HEAD_DIM, EMBED), np.float32)   # as if not grouped-query
  message = _load_error(_write(tmp_path / "ckpt", tensors, _hf_config(tied=False)))
  assert "model.safetensors" in message
  assert "'model.layers.0.self_attn.k_proj.weight'" in message
  assert "(32, 32)" in message and "(16, 32)" in message


def test_index_naming_missing_shard_is_rejected(tmp_path):
  checkpoint = _write(tmp_path / "ckpt", _hf_tensors(tied=False), _hf_config(tied=False),
                      shards=2)
  (checkpoint / "model-00002-of-00002.safetensors").unlink()
  message = _load_error(checkpoint)
  assert "model.safetensors.index.json" in message
  assert "'model-00002-of-00002.safetensors'" in message


def test_unexpected_tensor_such_as_a_bias_is_rejected(tmp_path):
  tensors = _hf_tensors(tied=False)
  tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(HEADS * HEAD_DIM, np.float32)
  message = _load_error(_write(tmp_path / "ckpt", tensors, _hf_config(tied=False)))
  assert "'model.layers.0.self_attn.q_proj.bias'" in message


def test_config_passed_must_agree_with_checkpoint(tmp_path):
  checkpoint = _write(tmp_path / "ckpt", _hf_tensors(tied=False), _hf_config(tied=False))
  config, _, _ = load_llama(checkpoint)
  message = _load_error(checkpoint, config=ModelConfig(**{
      **config.__dict__, "rope_base": 10_000.0}))
  assert "config.json" in message and "rope_base=500.0" in message
  with_dropout = ModelConfig(**{**config.__dict__, "dropout_rate": 0.1})
  assert load_llama(checkpoint, config=with_dropout)[0].dropout_rate == 0.1


@pytest.mark.parametrize("eps", [1e-5, 0.25], ids=["llama2_eps", "large_eps"])
def test_rms_norm_eps_becomes_norm_eps_and_logits_match_reference(tmp_path, eps):
  # 1e-5 is Llama 2's; 0.25 is large enough that an ignored epsilon would fail.
  tensors, hf_config = _hf_tensors(tied=False), _hf_config(tied=False) | {
      "rms_norm_eps": eps}
  checkpoint = _write(tmp_path / "ckpt", tensors, hf_config)
  assert load_llama(checkpoint)[0].norm_eps == eps
  np.testing.assert_allclose(_our_logits(checkpoint),
                             _reference_logits(tensors, hf_config, TOKENS), **TOLERANCE)
