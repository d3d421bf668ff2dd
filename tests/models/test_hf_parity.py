"""Parity of the HF import with transformers itself, for every supported family.

Each family's checkpoint is a tiny random model built by transformers' own
classes (`LlamaForCausalLM(LlamaConfig(...))`, ...) and written with
`save_pretrained` (safetensors; the Llama one sharded with an index), so the
reference is the implementation the models were released with, never our own
code. On a left-padded batch of prompts, each continued by transformers'
greedy `generate` for 32 tokens:
- full forward: our `LanguageModel` on the whole sequences against the
  transformers model's logits (f32, max |diff| <= 1e-4);
- cached decode: our prompt prefill, then one `extend` per token, against the
  same logits;
- greedy: our sampler (temperature 0) continues the prompts with exactly
  transformers' 32 tokens.
The sequences (up to 39 tokens) are longer than the sliding window (8), so the
local layers' window, their RoPE base and the global layers' rope scaling all
matter. `-s` prints one line per family with the largest differences.

Needs the `reference` extra (torch, transformers); skipped without it.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest
from flax import nnx
from greedy_reference import greedy_tokens

from ttscale.models import init_cache
from ttscale.models.hf_import import INDEX_FILE, load_hf, read_hf_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, PAD = 256, 0
PROMPT_LENGTHS = (7, 4, 6)
NEW_TOKENS = 32
WINDOW = 8
TOLERANCE = 1e-4
_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)


def _families():
  """{family: (config class, model class, config kwargs)}; names of transformers
  classes are resolved here so that collection without it only skips."""
  return {
      # rope_theta 1e4, original context 32: frequency 0 is kept (wavelength
      # 6.3 < 32/4), 1 interpolated (19.9), the rest divided by 8.
      "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
          rope_theta=10_000.0, tie_word_embeddings=False,
          rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                            high_freq_factor=4.0, original_max_position_embeddings=32))),
      "qwen2.5": ("Qwen2Config", "Qwen2ForCausalLM", dict(
          rope_theta=1_000.0, tie_word_embeddings=True)),
      "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
          rope_theta=1_000.0, tie_word_embeddings=True)),
      "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
          rope_theta=1_000.0, sliding_window=WINDOW, query_pre_attn_scalar=24,
          attn_logit_softcapping=5.0, final_logit_softcapping=10.0)),
      # Six layers: five local, one global.
      "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
          num_hidden_layers=6, sliding_window=WINDOW, query_pre_attn_scalar=24,
          rope_theta=1_000.0, rope_local_base_freq=100.0,
          rope_scaling=dict(rope_type="linear", factor=4.0))),
  }


FAMILIES = ("llama3", "qwen2.5", "qwen3", "gemma2", "gemma3")


def _randomize(model, zero_centred_norms: bool, seed: int) -> None:
  """Weights of unit-scale activations (HF's init, std 0.02, makes every logit
  near 0 and hides mistakes); norm scales away from their neutral value so
  that a norm read into the wrong place shows."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if "norm" in name:
        param.copy_((0.0 if zero_centred_norms else 1.0) + 0.3 * noise)
      elif name.endswith("bias"):
        param.copy_(0.3 * noise)
      elif "embed_tokens" in name:
        param.copy_(noise)
      else:
        param.copy_(noise * param.shape[-1] ** -0.5)


@dataclasses.dataclass
class _Reference:
  family: str
  checkpoint: str
  prompts: np.ndarray          # int32 [batch, P] left-padded with PAD
  prompt_lengths: np.ndarray   # int32 [batch]
  sequences: np.ndarray        # int32 [batch, P + NEW_TOKENS]: prompts + greedy tokens
  logits: np.ndarray           # float32 [batch, P + NEW_TOKENS, vocab] of `sequences`


def _write_reference(family: str, directory) -> _Reference:
  config_name, model_name, kwargs = _families()[family]
  config = getattr(transformers, config_name)(**(_SHAPE | kwargs))
  torch.manual_seed(0)
  model = getattr(transformers, model_name)(config).eval()
  _randomize(model, zero_centred_norms=family.startswith("gemma"),
             seed=FAMILIES.index(family))
  # The Llama checkpoint is sharded (an index and several files).
  model.save_pretrained(directory, safe_serialization=True,
                        max_shard_size="100KB" if family == "llama3" else "1GB")
  rng = np.random.default_rng(FAMILIES.index(family))
  width = max(PROMPT_LENGTHS)
  prompts = np.full((len(PROMPT_LENGTHS), width), PAD, np.int32)
  for row, length in enumerate(PROMPT_LENGTHS):
    prompts[row, width - length:] = rng.integers(3, VOCAB, length)
  prompt_mask = (np.arange(width)[None] >= width - np.array(PROMPT_LENGTHS)[:, None])
  with torch.no_grad():
    generated = model.generate(
        input_ids=torch.tensor(prompts, dtype=torch.long),
        attention_mask=torch.tensor(prompt_mask, dtype=torch.long),
        do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
        eos_token_id=None, pad_token_id=PAD)
    sequences = generated.numpy().astype(np.int32)
    mask = np.concatenate([prompt_mask, np.ones((len(prompts), NEW_TOKENS), bool)], 1)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits = model(input_ids=torch.tensor(sequences, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long),
                   position_ids=torch.tensor(positions, dtype=torch.long)).logits
  return _Reference(family, str(directory), prompts, np.array(PROMPT_LENGTHS, np.int32),
                    sequences, logits.float().numpy())


@dataclasses.dataclass
class _Parity:
  forward_diff: float      # max |logit diff| of our full forward
  bfloat16_diff: float     # the same with bfloat16 compute (float32 parameters)
  decode_diff: float       # max |logit diff| of our cached decode
  greedy: np.ndarray       # int32 [batch, NEW_TOKENS]: our sampler's greedy tokens
  reference: _Reference


def _our_parity(reference: _Reference) -> _Parity:
  config, graphdef, params = load_hf(reference.checkpoint)
  model = nnx.merge(graphdef, params)
  batch, width = reference.prompts.shape
  total = width + NEW_TOKENS
  valid = np.arange(total)[None] >= width - reference.prompt_lengths[:, None]
  # Full forward: padding is its own segment; positions count real tokens.
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  # Forward and decode run op by op: for a model this small that is faster
  # than compiling them (the sampler below is compiled, as the engine runs it).
  logits = np.asarray(model(reference.sequences, positions, valid.astype(np.int32)))
  forward_diff = np.abs(logits - reference.logits)[valid].max()
  bfloat16 = dataclasses.replace(config, compute_dtype="bfloat16")
  _, bfloat16_graphdef, _ = load_hf(reference.checkpoint, bfloat16)
  bfloat16_logits = np.asarray(nnx.merge(bfloat16_graphdef, params)(
      reference.sequences, positions, valid.astype(np.int32)))
  bfloat16_diff = np.abs(bfloat16_logits - reference.logits)[valid].max()

  # Cached decode: prefill the prompts, then one token per call.
  cache = init_cache(config, batch, total)
  prompt_logits, cache = model.extend(reference.prompts, valid[:, :width], cache)
  decoded = [np.asarray(prompt_logits)]
  for column in range(width, total):
    step_logits, cache = model.extend(reference.sequences[:, column:column + 1],
                                      np.ones((batch, 1), bool), cache)
    decoded.append(np.asarray(step_logits))
  decode_diff = np.abs(np.concatenate(decoded, 1) - reference.logits)[valid].max()

  # Greedy continuation through the search engine's sampler.
  tokens = greedy_tokens(graphdef, params, config, reference.prompts,
                         reference.prompt_lengths, NEW_TOKENS)
  return _Parity(float(forward_diff), float(bfloat16_diff), float(decode_diff), tokens,
                 reference)


@pytest.fixture(scope="module", params=FAMILIES)
def parity(request, tmp_path_factory) -> _Parity:
  family = request.param
  reference = _write_reference(family, tmp_path_factory.mktemp(family))
  result = _our_parity(reference)
  matched = np.array_equal(result.greedy, reference.sequences[:, -NEW_TOKENS:])
  scale = np.abs(reference.logits).max()
  print(f"\n{family}: full forward max |diff| {result.forward_diff:.2e}, cached decode "
        f"max |diff| {result.decode_diff:.2e}, greedy {NEW_TOKENS} tokens "
        f"{'identical' if matched else 'DIFFERENT'}; bfloat16 compute: forward max "
        f"|diff| {result.bfloat16_diff:.3f} (max |logit| {scale:.1f})")
  return result


def test_full_forward_logits_match_transformers(parity):
  assert parity.forward_diff <= TOLERANCE


def test_bfloat16_compute_stays_near_transformers_float32(parity):
  # 8 bits of mantissa through a few layers: a few percent of the logit scale.
  assert parity.bfloat16_diff <= 0.05 * np.abs(parity.reference.logits).max()


def test_cached_decode_logits_match_transformers(parity):
  assert parity.decode_diff <= TOLERANCE


def test_greedy_continuation_is_transformers_generate(parity):
  np.testing.assert_array_equal(parity.greedy,
                                parity.reference.sequences[:, -NEW_TOKENS:])


def test_config_json_gives_the_family_options(parity):
  config = read_hf_config(parity.reference.checkpoint)
  family = parity.reference.family
  expected = {
      "llama3": dict(rope_scaling="llama3", rope_scaling_factor=8.0,
                     rope_original_context=32, tie_embeddings=False),
      "qwen2.5": dict(qkv_bias=True, qk_norm=False, tie_embeddings=True),
      "qwen3": dict(qkv_bias=False, qk_norm=True),
      "gemma2": dict(post_norms=True, sliding_window=WINDOW, sliding_window_pattern=2,
                     attn_logit_softcap=5.0, final_logit_softcap=10.0,
                     query_pre_attn_scalar=24.0, norm_scale_offset=1.0),
      "gemma3": dict(post_norms=True, qk_norm=True, sliding_window=WINDOW,
                     sliding_window_pattern=6, rope_base=1_000.0,
                     rope_local_base=100.0, rope_scaling="linear",
                     rope_scaling_factor=4.0),
  }[family]
  assert {name: getattr(config, name) for name in expected} == expected
  if family == "llama3":  # written sharded, read through its index
    assert (pathlib.Path(parity.reference.checkpoint) / INDEX_FILE).exists()


def test_trimmed_vocabulary_keeps_the_first_rows_logits(parity):
  # As for Qwen's 151936 embedding rows and 151665 tokenizer ids. A trimmed
  # model cannot read the ids it dropped, so the tokens are kept below them and
  # the untrimmed import (checked against transformers above) is the reference.
  if parity.reference.family != "qwen3":
    pytest.skip("the same code for every family: checked on qwen3")
  kept = VOCAB - 56
  tokens = np.where(parity.reference.sequences < kept, parity.reference.sequences, 3)
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  config, graphdef, params = load_hf(parity.reference.checkpoint, trim_vocab_to=kept,
                                     expected_vocab_size=kept)
  assert config.vocab_size == kept
  trimmed = np.asarray(nnx.merge(graphdef, params)(tokens, positions))
  _, graphdef, params = load_hf(parity.reference.checkpoint)
  full = np.asarray(nnx.merge(graphdef, params)(tokens, positions))
  np.testing.assert_allclose(trimmed, full[..., :kept], atol=TOLERANCE, rtol=0)
