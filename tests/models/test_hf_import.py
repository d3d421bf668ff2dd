"""`read_hf_config`: config.json of every family, in transformers 4 and 5 layouts,
and one-line errors naming the field it cannot run. No torch needed: the
configs are written here as the Hub and `save_pretrained` spell them (parity
with transformers itself is tests/models/test_hf_parity.py)."""

from __future__ import annotations

import json

import pytest
from ml_collections import config_dict

from ttscale.models import ModelConfig
from ttscale.models.hf_import import hf_model_block, read_hf_config

_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
              rms_norm_eps=1e-6)
# Gemma 3 as the Hub's config.json spells it (transformers 4.x).
GEMMA3_V4 = dict(_SHAPE, model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh",
                 rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                 rope_scaling={"rope_type": "linear", "factor": 8.0},
                 sliding_window=512, sliding_window_pattern=6, query_pre_attn_scalar=256,
                 final_logit_softcapping=None, attn_logit_softcapping=None)
# The same model as transformers 5's `save_pretrained` writes it.
GEMMA3_V5 = dict(_SHAPE, model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh",
                 rope_parameters={
                     "full_attention": {"rope_type": "linear", "factor": 8.0,
                                        "rope_theta": 1_000_000.0},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
                 layer_types=["sliding_attention"] * 5 + ["full_attention"],
                 sliding_window=512, query_pre_attn_scalar=256,
                 final_logit_softcapping=None, attn_logit_softcapping=None)
LLAMA31 = dict(_SHAPE, model_type="llama", hidden_act="silu", rope_theta=500_000.0,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192},
               tie_word_embeddings=False)
QWEN25 = dict(_SHAPE, model_type="qwen2", hidden_act="silu", rope_theta=1_000_000.0,
              use_sliding_window=False, sliding_window=32768, max_window_layers=21,
              tie_word_embeddings=True)


def _write(tmp_path, hf: dict):
  (tmp_path / "config.json").write_text(json.dumps(hf))
  return tmp_path


def _error(tmp_path, hf: dict) -> str:
  with pytest.raises(ValueError) as error:
    read_hf_config(_write(tmp_path, hf))
  message = str(error.value)
  assert "\n" not in message and "config.json" in message
  return message


def test_gemma3_reads_the_same_from_transformers_4_and_5_layouts(tmp_path):
  v4 = read_hf_config(_write(tmp_path, GEMMA3_V4))
  v5 = read_hf_config(_write(tmp_path, GEMMA3_V5) / "config.json")  # the file itself
  assert v4 == v5
  assert (v4.sliding_window, v4.sliding_window_pattern) == (512, 6)
  assert (v4.rope_base, v4.rope_local_base) == (1e6, 1e4)
  assert (v4.rope_scaling, v4.rope_scaling_factor) == ("linear", 8.0)
  assert v4.qk_norm and v4.post_norms and v4.tie_embeddings
  assert (v4.norm_scale_offset, v4.scale_embeddings, v4.activation) == (1.0, True, "gelu")
  assert (v4.attn_logit_softcap, v4.final_logit_softcap) == (0.0, 0.0)


def test_llama31_rope_scaling_and_qwen25_biases(tmp_path):
  llama = read_hf_config(_write(tmp_path, LLAMA31))
  assert (llama.rope_scaling, llama.rope_scaling_factor, llama.rope_low_freq_factor,
          llama.rope_high_freq_factor, llama.rope_original_context) == (
              "llama3", 8.0, 1.0, 4.0, 8192)
  assert not (llama.qkv_bias or llama.qk_norm or llama.post_norms or llama.sliding_window)
  qwen = read_hf_config(_write(tmp_path, QWEN25))
  assert qwen.qkv_bias and qwen.tie_embeddings and not qwen.sliding_window


def test_model_block_round_trips_through_the_config_block(tmp_path):
  block = hf_model_block(_write(tmp_path, GEMMA3_V4))
  assert "vocab_size" not in block
  rebuilt = ModelConfig.from_config(config_dict.ConfigDict(block), vocab_size=256)
  assert rebuilt == read_hf_config(tmp_path)


@pytest.mark.parametrize("change, field", [
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"model_type": "gemma3"}, "model_type='gemma3'"),   # the multimodal wrapper
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
])
def test_llama_options_we_cannot_run_are_named(tmp_path, change, field):
  assert field in _error(tmp_path, LLAMA31 | change)


@pytest.mark.parametrize("hf, field", [
    (QWEN25 | {"use_sliding_window": True}, "use_sliding_window"),
    (GEMMA3_V5 | {"layer_types": ["full_attention"] + ["sliding_attention"] * 5},
     "layer_types"),
    (GEMMA3_V5 | {"rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}},
     "sliding-window layers"),
    (GEMMA3_V4 | {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({k: v for k, v in LLAMA31.items() if k != "rope_theta"}, "'rope_theta'"),
])
def test_family_options_we_cannot_run_are_named(tmp_path, hf, field):
  assert field in _error(tmp_path, hf)
