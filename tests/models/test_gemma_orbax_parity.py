"""Parity of the Gemma 2 and Gemma 3 orbax imports with the `gemma` library itself.

The fixtures (`tests/models/fixtures/<family>/`) were written by the `gemma`
library 4.0.1 in a Python 3.12 venv (`fixtures/make_gemma_fixtures.py` says
how to re-run it): a tiny random `gm.nn.Transformer` saved with
`gm.ckpts.save_params` (Gemma 2: the nested tree; Gemma 3: the released
semi-flat layout), the library's logits of a batch of right-padded prompts and
their continuations, and the continuations its greedy `gm.text.Sampler` chose.
Nothing of the reference is our code. Here, with our import of each tree:
- full forward: max |logit diff| <= 1e-4 (float32) on every real token;
- cached decode: our prompt prefill, then one `extend` per token, against the
  same logits;
- greedy: our sampler (temperature 0) continues the prompts with exactly the
  library's 32 tokens.
Sequences (up to 52 tokens) are far longer than the window (4), so the local
layers' window and RoPE base and the global layers' RoPE scaling all matter.
`-s` prints one line per family with the measured differences.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest
from flax import nnx
from greedy_reference import greedy_tokens

from ttscale.models import ModelConfig, init_cache
from ttscale.models.gemma_import import (
  GEMMA_ARCHITECTURE,
  load_gemma,
  read_gemma_architecture,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FAMILIES = ("gemma2", "gemma3")
TOLERANCE = 1e-4


def _our_config(library: dict) -> ModelConfig:
  """Our `ModelConfig` of the library's `TransformerConfig` (as the fixture
  recorded its fields): every option named as ours."""
  types = library["attention_types"]
  # Every pattern-th layer is global: the first global layer gives the period.
  pattern = types.index("GLOBAL") + 1
  assert types == [("GLOBAL" if (i + 1) % pattern == 0 else "LOCAL_SLIDING")
                   for i in range(len(types))]
  scale = library["global_scale_factor"]
  gemma = {field: value for field, value in GEMMA_ARCHITECTURE.items() if field != "rope_base"}
  return ModelConfig(
      vocab_size=library["num_embed"], num_layers=len(types),
      embed_dim=library["embed_dim"], num_heads=library["num_heads"],
      num_kv_heads=library["num_kv_heads"], head_dim=library["head_dim"],
      mlp_dim=library["hidden_dim"], post_norms=library["use_post_attn_norm"],
      qk_norm=library["use_qk_norm"],
      attn_logit_softcap=library["attn_logits_soft_cap"] or 0.0,
      final_logit_softcap=library["final_logit_softcap"] or 0.0,
      sliding_window=library["sliding_window_size"], sliding_window_pattern=pattern,
      rope_base=float(library["global_base_frequency"]),
      rope_local_base=float(library["local_base_frequency"]),
      rope_scaling="linear" if scale != 1.0 else "none", rope_scaling_factor=scale,
      # The library multiplies queries by its scalar; ours is scaled by the -1/2 power.
      query_pre_attn_scalar=library["query_pre_attn_scalar"] ** -2,
      **gemma)


@dataclasses.dataclass
class _Parity:
  family: str
  reference: dict        # the fixture's arrays (see make_gemma_fixtures.py)
  config: ModelConfig
  forward_diff: float    # max |logit diff| of our full forward
  decode_diff: float     # max |logit diff| of our cached decode
  greedy: np.ndarray     # int32 [batch, NEW_TOKENS]: our sampler's greedy tokens


def _parity(family: str) -> _Parity:
  with np.load(FIXTURES / family / "reference.npz") as stored:
    reference = {name: stored[name] for name in stored.files}
  config = _our_config(json.loads(str(reference["config"])))
  _, graphdef, params = load_gemma(FIXTURES / family / "params", config)
  model = nnx.merge(graphdef, params)
  prompts, lengths = reference["prompts"], reference["prompt_lengths"]
  sequences, logits = reference["sequences"], reference["logits"]
  batch, width = prompts.shape
  new_tokens = reference["continuation"].shape[1]
  total = width + new_tokens
  ends = lengths + new_tokens
  valid = np.arange(total)[None] < ends[:, None]  # right-padded, as the library pads

  # Full forward: padding is its own segment; positions count real tokens.
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  # Op by op: for a model this small that is faster than compiling it.
  ours = np.asarray(model(sequences, positions, valid.astype(np.int32)))
  forward_diff = np.abs(ours - logits)[valid].max()

  # Cached decode: prefill the padded prompts (padding is not appended), then
  # each row's continuation one token per call.
  cache = init_cache(config, batch, total)
  prompt_valid = np.arange(width)[None] < lengths[:, None]
  prompt_logits, cache = model.extend(prompts, prompt_valid, cache)
  decoded = np.zeros_like(logits)
  decoded[:, :width] = np.asarray(prompt_logits)
  rows = np.arange(batch)
  for step in range(new_tokens - 1):
    column = lengths + step  # where each row's step-th new token sits
    step_logits, cache = model.extend(sequences[rows, column][:, None],
                                      np.ones((batch, 1), bool), cache)
    decoded[rows, column] = np.asarray(step_logits)[:, 0]
  # The last new token's logits are not needed to decode; compare the rest.
  compared = valid & (np.arange(total)[None] < ends[:, None] - 1)
  decode_diff = np.abs(decoded - logits)[compared].max()

  # Greedy continuation through the search engine's sampler, compiled as the
  # engine runs it; its `prefill` takes prompts right-aligned (left padding).
  right_aligned = np.zeros_like(prompts)
  for row, length in enumerate(lengths):
    right_aligned[row, width - length:] = prompts[row, :length]
  tokens = greedy_tokens(graphdef, params, config, right_aligned, lengths, new_tokens)
  return _Parity(family, reference, config, float(forward_diff), float(decode_diff),
                 tokens)


@pytest.fixture(scope="module", params=FAMILIES)
def parity(request) -> _Parity:
  result = _parity(request.param)
  matched = np.array_equal(result.greedy, result.reference["continuation"])
  print(f"\n{result.family} (gemma library fixture): full forward max |diff| "
        f"{result.forward_diff:.2e}, cached decode max |diff| {result.decode_diff:.2e}, "
        f"greedy {result.greedy.shape[1]} tokens {'identical' if matched else 'DIFFERENT'} "
        f"(max |logit| {np.abs(result.reference['logits']).max():.1f})")
  return result


def test_full_forward_logits_match_the_gemma_library(parity):
  assert parity.forward_diff <= TOLERANCE


def test_cached_decode_logits_match_the_gemma_library(parity):
  assert parity.decode_diff <= TOLERANCE


def test_greedy_continuation_is_the_gemma_library_samplers(parity):
  np.testing.assert_array_equal(parity.greedy, parity.reference["continuation"])


def test_tree_gives_its_shape_and_norms_and_leaves_the_rest_open(parity):
  # A tiny tree matches no released model: what no shape shows is left for
  # the config (None), the rest is the tree's.
  architecture = read_gemma_architecture(FIXTURES / parity.family / "params")
  config = dataclasses.asdict(parity.config)
  shown = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim",
           "mlp_dim", "post_norms", "qk_norm", *GEMMA_ARCHITECTURE.keys() - {"rope_base"})
  assert {field: architecture[field] for field in shown} == {
      field: config[field] for field in shown}
  assert architecture["sliding_window"] is None
  assert architecture["qk_norm"] == (parity.family == "gemma3")


def test_a_config_without_the_trees_norms_names_the_parameter(parity):
  config = dataclasses.replace(parity.config, post_norms=False)
  with pytest.raises(ValueError, match=r"unexpected parameter '.*layer_0/post_"):
    load_gemma(FIXTURES / parity.family / "params", config)
