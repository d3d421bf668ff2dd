"""Tests of the Gemma importer against an independent numpy forward of Gemma's code.

The checkpoints are tiny random Gemmas written with orbax in the layouts the
`gemma` library reads: the released semi-flat one ("transformer/layer_0/attn/
q_einsum": {"w": ...}) and its nested in-memory form. The reference forward
follows `gemma/modules.py`, `layers.py` and `positional_embeddings.py` (embedding
times sqrt(embed), RMSNorm with `1 + scale`, RoPE on halves, MQA/GQA grouping,
GeGLU with the tanh GELU, tied head, soft caps) in float64, so agreement pins the
transposes, the head split, the rotary convention and the zero-centred norms.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from ttscale import testing_files
from ttscale.models import (
  LanguageModel,
  ModelConfig,
  init_cache,
  policy_extend_fn,
  policy_forward_fn,
)
from ttscale.models.gemma_import import (
  GEMMA_ARCHITECTURE,
  gemma_config,
  load_gemma,
  read_gemma_params,
)
from ttscale.testing_files import gemma_on_disk

EMBED, LAYERS, HEADS, HEAD_DIM, MLP, VOCAB = 32, 2, 4, 8, 48, 40
TOKENS = np.array([[2, 17, 0, 39, 8, 8, 21], [2, 1, 30, 3, 11, 38, 6]], np.int32)
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@dataclasses.dataclass(frozen=True)
class Case:
  """One tiny Gemma: its shape, soft caps, gating layout and on-disk layout."""
  kv_heads: int
  layout: str                   # "flat" (released), "nested" or "rootless" (gm)
  attn_softcap: float = 0.0
  final_softcap: float = 0.0
  transpose_gating: bool = False

  def config(self, vocab_size: int = VOCAB) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size, num_layers=LAYERS, embed_dim=EMBED, num_heads=HEADS,
        num_kv_heads=self.kv_heads, head_dim=HEAD_DIM, mlp_dim=MLP,
        attn_logit_softcap=self.attn_softcap, final_logit_softcap=self.final_softcap,
        **GEMMA_ARCHITECTURE)


MQA = Case(kv_heads=1, layout="flat")                 # Gemma 2B-like
MHA = Case(kv_heads=HEADS, layout="nested")           # Gemma 7B-like: qkv_einsum
# Gemma 2-like: GQA, soft caps small enough to bite, [2, mlp, embed] gating.
CAPPED = Case(kv_heads=2, layout="rootless", attn_softcap=1.5, final_softcap=4.0,
              transpose_gating=True)


def _gemma_tree(case: Case, vocab: int = VOCAB, seed: int = 0) -> dict:
  """Random weights in the `gemma` library's nested in-memory layout, float32."""
  return testing_files.gemma_tree(case.config(vocab), seed,
                                  transpose_gating=case.transpose_gating)


def _save(directory: Path, tree: dict) -> Path:
  ocp.PyTreeCheckpointer().save(directory, tree)
  return directory


def _reference_logits(tree: dict, case: Case, tokens: np.ndarray) -> np.ndarray:
  """Gemma's forward (`gemma/transformer.py`) in float64 numpy: [batch, T, vocab]."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), tree["transformer"])
  batch, length = tokens.shape
  positions = np.broadcast_to(np.arange(length), tokens.shape)
  causal = np.tril(np.ones((length, length), bool))

  def rms_norm(x, params):
    normed = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)
    return normed * (1 + params["scale"])

  def apply_rope(x):  # x [B, T, N, H], as `positional_embeddings.apply_rope`.
    fraction = 2 * np.arange(HEAD_DIM // 2) / HEAD_DIM
    timescale = 10_000.0 ** fraction
    sinusoid = (positions[..., None] / timescale)[..., None, :]
    sin, cos = np.sin(sinusoid), np.cos(sinusoid)
    first, second = np.split(x, 2, axis=-1)
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], -1)

  def gelu(x):  # flax's `nn.gelu`, approximate=True.
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

  def cap(x, softcap):
    return np.tanh(x / softcap) * softcap if softcap else x

  embedding = p["embedder"]["input_embedding"]
  x = embedding[tokens] * np.sqrt(EMBED)
  groups = HEADS // case.kv_heads
  for i in range(LAYERS):
    layer = p[f"layer_{i}"]
    h = rms_norm(x, layer["pre_attention_norm"])
    if "qkv_einsum" in layer["attn"]:
      q, k, v = np.einsum("BTD,SNDH->SBTNH", h, layer["attn"]["qkv_einsum"]["w"])
    else:
      q = np.einsum("BTD,NDH->BTNH", h, layer["attn"]["q_einsum"]["w"])
      k, v = np.einsum("BSD,CKDH->CBSKH", h, layer["attn"]["kv_einsum"]["w"])
    q = apply_rope(q) * HEAD_DIM ** -0.5
    k = apply_rope(k)
    q = q.reshape(batch, length, case.kv_heads, groups, HEAD_DIM)
    logits = np.einsum("BTKGH,BSKH->BTKGS", q, k).reshape(batch, length, HEADS, length)
    logits = cap(logits, case.attn_softcap)
    logits = np.where(causal[None, :, None, :], logits, -2.3819763e38)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    probs = probs.reshape(batch, length, case.kv_heads, groups, length)
    encoded = np.einsum("BTKGS,BSKH->BTKGH", probs, v).reshape(
        batch, length, HEADS, HEAD_DIM)
    x = x + np.einsum("BTNH,NHD->BTD", encoded, layer["attn"]["attn_vec_einsum"]["w"])
    h = rms_norm(x, layer["pre_ffw_norm"])
    equation = "...F,NHF->...NH" if case.transpose_gating else "...F,NFH->...NH"
    gate = np.einsum(equation, h, layer["mlp"]["gating_einsum"])
    x = x + (gelu(gate[..., 0, :]) * gate[..., 1, :]) @ layer["mlp"]["linear"]
  x = rms_norm(x, p["final_norm"])
  return cap(x @ embedding.T, case.final_softcap)


@functools.cache
def _model_fns(config: ModelConfig):
  """Jitted (forward, extend) of `config`'s model, shared by the tests."""
  graphdef = nnx.split(nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0))))[0]
  return jax.jit(policy_forward_fn(graphdef)), jax.jit(policy_extend_fn(graphdef))


def _import(tmp_path: Path, case: Case, **kwargs):
  tree = _gemma_tree(case)
  checkpoint = _save(tmp_path / "ckpt", gemma_on_disk(tree, case.layout))
  config, _, params = load_gemma(checkpoint, case.config(), transpose_gating_einsum=(
      case.transpose_gating), **kwargs)
  return tree, config, params


@pytest.mark.parametrize("case", [MQA, MHA, CAPPED], ids=["mqa_flat", "mha_qkv_nested",
                                                          "gqa_softcap_rootless"])
def test_imported_logits_match_gemma_reference_forward_and_extend(tmp_path, case):
  tree, config, params = _import(tmp_path, case, expected_vocab_size=VOCAB)
  forward, extend = _model_fns(config)
  positions = np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape)
  reference = _reference_logits(tree, case, TOKENS)
  logits = np.asarray(forward(params, jnp.asarray(TOKENS), jnp.asarray(positions)))
  np.testing.assert_allclose(logits, reference, **TOLERANCE)
  cache = init_cache(config, TOKENS.shape[0], max_slots=TOKENS.shape[1] + 1)
  cached, cache = extend(params, jnp.asarray(TOKENS), jnp.ones(TOKENS.shape, bool), cache)
  np.testing.assert_allclose(np.asarray(cached), reference, **TOLERANCE)
  assert int(cache.write_index) == TOKENS.shape[1]
  if case.final_softcap:
    assert np.abs(logits).max() < case.final_softcap
    # The caps bite: without them Gemma's forward gives other logits.
    uncapped = dataclasses.replace(case, attn_softcap=0.0, final_softcap=0.0)
    assert not np.allclose(_reference_logits(tree, uncapped, TOKENS), reference,
                           **TOLERANCE)


def test_bfloat16_jax_arrays_are_restored_as_float32(tmp_path):
  tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), _gemma_tree(MQA))
  checkpoint = _save(tmp_path / "ckpt", gemma_on_disk(tree, "flat"))
  arrays = read_gemma_params(checkpoint, MQA.config())
  query = arrays[("decoder", "blocks", 1, "attention", "query")]
  assert query.dtype == np.float32
  stored = np.asarray(tree["transformer"]["layer_1"]["attn"]["q_einsum"]["w"], np.float32)
  np.testing.assert_array_equal(query, stored.transpose(1, 0, 2))
  up = arrays[("decoder", "blocks", 0, "mlp", "up")]
  np.testing.assert_array_equal(
      up, np.asarray(tree["transformer"]["layer_0"]["mlp"]["gating_einsum"][1], np.float32))
  assert ("lm_head",) not in arrays


def test_trim_vocab_to_drops_the_padding_rows_only(tmp_path):
  padded = _gemma_tree(MQA, vocab=VOCAB + 8)
  checkpoint = _save(tmp_path / "ckpt", gemma_on_disk(padded, "flat"))
  arrays = read_gemma_params(checkpoint, MQA.config(), expected_vocab_size=VOCAB,
                             trim_vocab_to=VOCAB)
  np.testing.assert_array_equal(
      arrays[("decoder", "embedding")],
      padded["transformer"]["embedder"]["input_embedding"][:VOCAB])
  assert arrays[("decoder", "embedding")].shape == (VOCAB, EMBED)


def test_presets_have_the_gemma_reports_parameter_counts():
  # Gemma report, Table 2: embedding + non-embedding parameters.
  assert gemma_config("gemma-2b", 256_128).num_params() == 524_550_144 + 1_981_884_416
  assert gemma_config("gemma-7b", 256_128).num_params() == 786_825_216 + 7_751_248_896
  with pytest.raises(ValueError, match="'gemma-3b'.*gemma-2b"):
    gemma_config("gemma-3b", 256_128)


# --- Errors: one line, naming the checkpoint and the parameter. ---


def _load_error(checkpoint: Path, config: ModelConfig | None = None, **kwargs) -> str:
  with pytest.raises(ValueError) as error:
    load_gemma(checkpoint, config or MQA.config(), **kwargs)
  message = str(error.value)
  assert "\n" not in message
  assert str(checkpoint) in message
  return message


def test_shape_other_than_configs_names_parameter_and_both_shapes(tmp_path):
  checkpoint = _save(tmp_path / "ckpt", gemma_on_disk(_gemma_tree(MQA), "flat"))
  message = _load_error(checkpoint, dataclasses.replace(MQA.config(), mlp_dim=64))
  assert "'transformer/layer_0/mlp/gating_einsum/w'" in message
  assert "(2, 32, 48)" in message and "(2, 32, 64)" in message


def test_gating_stored_in_the_other_layout_is_named_with_the_fix(tmp_path):
  checkpoint = _save(tmp_path / "ckpt", gemma_on_disk(_gemma_tree(CAPPED), "rootless"))
  # Read from the shape by default; a layout given is checked.
  message = _load_error(checkpoint, CAPPED.config(), transpose_gating_einsum=False)
  assert "'layer_0/mlp/gating_einsum'" in message
  assert "transpose_gating_einsum=True" in message


def test_missing_parameter_is_named(tmp_path):
  stored = gemma_on_disk(_gemma_tree(MQA), "flat")
  del stored["transformer/layer_1/pre_ffw_norm"]
  message = _load_error(_save(tmp_path / "ckpt", stored))
  assert "missing parameter 'transformer/layer_1/pre_ffw_norm/scale'" in message


def test_unexpected_parameter_such_as_a_gemma2_post_norm_is_named(tmp_path):
  stored = gemma_on_disk(_gemma_tree(MQA), "flat")
  stored["transformer/layer_0/post_attention_norm"] = {"scale": np.zeros(EMBED, np.float32)}
  message = _load_error(_save(tmp_path / "ckpt", stored))
  assert "unexpected parameter 'transformer/layer_0/post_attention_norm/scale'" in message


def test_vocabulary_other_than_tokenizers_is_rejected(tmp_path):
  checkpoint = _save(tmp_path / "ckpt", gemma_on_disk(_gemma_tree(MQA, vocab=VOCAB + 8), "flat"))
  message = _load_error(checkpoint, MQA.config(VOCAB + 8), expected_vocab_size=VOCAB)
  assert "'transformer/embedder/input_embedding'" in message
  assert f"vocab_size={VOCAB + 8}" in message and f"trim_vocab_to={VOCAB}" in message


def test_config_without_gemmas_norm_offset_is_rejected(tmp_path):
  checkpoint = _save(tmp_path / "ckpt", gemma_on_disk(_gemma_tree(MQA), "flat"))
  message = _load_error(checkpoint, dataclasses.replace(MQA.config(), norm_scale_offset=0.0))
  assert "model.norm_scale_offset=0.0" in message


def test_directory_that_is_not_a_checkpoint_is_rejected(tmp_path):
  (tmp_path / "empty").mkdir()
  assert "not an orbax checkpoint" in _load_error(tmp_path / "empty")
  assert "no such directory" in _load_error(tmp_path / "absent")
