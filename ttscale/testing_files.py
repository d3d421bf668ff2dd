"""Small files in released formats, written by hand, for tests and demos.

Nothing can be downloaded here, so the MATH loader and the checkpoint import
are exercised on files made in the same formats:

- `write_math_dir(root, ...)`: problems in the public MATH layout
  (`train/<subject>/<id>.json`, `test/<subject>/<id>.json`).
- `write_llama_style_tokenizer(path, texts)`: a BPE sentencepiece model like
  Llama 2's (unk 0, bos 1, eos 2, no pad, byte fallback, so "\\n" is the byte
  piece "<0x0A>").
- `write_llama_checkpoint(directory, config)`: random weights of a
  `ModelConfig` in the Hugging Face Llama layout (`config.json` and
  `model.safetensors`).
- `gemma_tree(config)`, `gemma_on_disk(tree, layout)`,
  `write_gemma_checkpoint(directory, config)`: random weights in the `gemma`
  library's parameter tree, and an orbax checkpoint of them in the released
  layout or the nested ones.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import orbax.checkpoint as ocp
import sentencepiece
from safetensors.numpy import save_file

from ttscale.models.config import ModelConfig

_SUBJECTS = ("algebra", "prealgebra")


def math_problem(index: int) -> dict:
  """A MATH-format problem about a small sum, with a boxed answer."""
  a, b = 3 + index % 7, 2 + (5 * index) % 11
  return {"problem": f"What is ${a}+{b}$?",
          "level": f"Level {1 + index % 5}",
          "type": _SUBJECTS[index % 2].capitalize(),
          "solution": f"We add ${a}$ and ${b}$.\nSo ${a}+{b}={a + b}$.\n"
                      f"The answer is $\\boxed{{{a + b}}}$."}


def write_math_dir(root: str | os.PathLike, num_train: int = 16,
                   num_test: int = 8) -> list[dict]:
  """Writes `num_train` + `num_test` problems; returns them, train first."""
  problems = []
  for split, count, offset in (("train", num_train, 0), ("test", num_test, 1000)):
    for i in range(count):
      problem = math_problem(offset + i)
      directory = os.path.join(root, split, _SUBJECTS[i % 2])
      os.makedirs(directory, exist_ok=True)
      with open(os.path.join(directory, f"{i}.json"), "w") as f:
        json.dump(problem, f)
      problems.append(problem)
  return problems


def write_llama_style_tokenizer(path: str | os.PathLike, texts: list[str],
                                vocab_size: int = 320) -> int:
  """Trains and writes a Llama-2-style sentencepiece model; returns its size."""
  writer = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=writer, model_type="bpe",
      vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      minloglevel=2)
  with open(path, "wb") as f:
    f.write(writer.getvalue())
  return sentencepiece.SentencePieceProcessor(model_proto=writer.getvalue()).get_piece_size()


def write_llama_checkpoint(directory: str | os.PathLike, config: ModelConfig,
                           seed: int = 0, favoured: dict[int, float] | None = None,
                           ) -> dict[str, np.ndarray]:
  """Random float32 weights of `config` in the HF Llama layout; returns them.

  `favoured` {token id: logit} raises those tokens' logits by about that much
  wherever the model is (e.g. the step delimiter and eos, so that a random
  model writes solutions of several steps that end). It needs an untied head:
  every embedding gets a large constant first coordinate, which survives the
  final norm, and only the favoured tokens' head rows read it.
  """
  rng = np.random.default_rng(seed)
  d, h, k, hd, m = (config.embed_dim, config.num_heads, config.num_kv_heads,
                    config.head_dim, config.mlp_dim)

  def linear(out_dim: int, in_dim: int) -> np.ndarray:  # nn.Linear: [out, in]
    return (rng.normal(size=(out_dim, in_dim)) * in_dim ** -0.5).astype(np.float32)

  def norm() -> np.ndarray:
    return (1.0 + 0.1 * rng.normal(size=(d,))).astype(np.float32)

  tensors = {"model.embed_tokens.weight": rng.normal(size=(config.vocab_size, d)).astype(
      np.float32), "model.norm.weight": norm()}
  for i in range(config.num_layers):
    p = f"model.layers.{i}."
    tensors |= {p + "input_layernorm.weight": norm(),
                p + "self_attn.q_proj.weight": linear(h * hd, d),
                p + "self_attn.k_proj.weight": linear(k * hd, d),
                p + "self_attn.v_proj.weight": linear(k * hd, d),
                p + "self_attn.o_proj.weight": linear(d, h * hd),
                p + "post_attention_layernorm.weight": norm(),
                p + "mlp.gate_proj.weight": linear(m, d),
                p + "mlp.up_proj.weight": linear(m, d),
                p + "mlp.down_proj.weight": linear(d, m)}
  if not config.tie_embeddings:
    tensors["lm_head.weight"] = linear(config.vocab_size, d)
  if favoured:
    if config.tie_embeddings:
      raise ValueError("favoured tokens need an untied head (tie_embeddings=False)")
    constant = 10.0
    tensors["model.embed_tokens.weight"][:, 0] = constant
    # After the final RMSNorm the first coordinate is about constant / rms.
    normed = constant / np.sqrt((constant ** 2 + d) / d)
    tensors["lm_head.weight"][:, 0] = 0.0
    for token, logit in favoured.items():
      tensors["lm_head.weight"][token, 0] = logit / normed
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"))
  hf_config = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
      "intermediate_size": m, "num_hidden_layers": config.num_layers,
      "num_attention_heads": h, "num_key_value_heads": k, "head_dim": hd,
      "vocab_size": config.vocab_size, "rope_theta": config.rope_base,
      "rms_norm_eps": 1e-6, "tie_word_embeddings": config.tie_embeddings,
      "hidden_act": "silu", "rope_scaling": None, "torch_dtype": "float32"}
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  return tensors


def gemma_tree(config: ModelConfig, seed: int = 0, vocab_size: int | None = None,
               transpose_gating: bool = False) -> dict:
  """Random float32 weights of `config` in the `gemma` library's nested
  in-memory layout ({"transformer": {"embedder", "final_norm", "layer_<i>"}}).

  Args:
    vocab_size: the embedding's rows (default `config.vocab_size`; more is a
      padded vocabulary, as the released checkpoints have).
    transpose_gating: the MLP gating stored as [2, mlp, embed] (Gemma 2's
      layout) instead of [2, embed, mlp].
  """
  rng = np.random.default_rng(seed)
  d, h, k, hd, m = (config.embed_dim, config.num_heads, config.num_kv_heads,
                    config.head_dim, config.mlp_dim)

  def weight(*shape, fan_in):
    return (rng.normal(size=shape) * fan_in ** -0.5).astype(np.float32)

  def norm():
    # Zero-centred (Gemma applies 1 + scale) but not zero, so a misplaced or
    # un-offset norm shows.
    return {"scale": (0.3 * rng.normal(size=(d,))).astype(np.float32)}

  tree = {"embedder": {"input_embedding": weight(vocab_size or config.vocab_size, d,
                                                 fan_in=d)},
          "final_norm": norm()}
  for i in range(config.num_layers):
    if k == h:
      attn = {"qkv_einsum": {"w": weight(3, h, d, hd, fan_in=d)}}
    else:
      attn = {"q_einsum": {"w": weight(h, d, hd, fan_in=d)},
              "kv_einsum": {"w": weight(2, k, d, hd, fan_in=d)}}
    attn["attn_vec_einsum"] = {"w": weight(h, hd, d, fan_in=h * hd)}
    gating_shape = (2, m, d) if transpose_gating else (2, d, m)
    tree[f"layer_{i}"] = {
        "pre_attention_norm": norm(), "attn": attn, "pre_ffw_norm": norm(),
        "mlp": {"gating_einsum": weight(*gating_shape, fan_in=d),
                "linear": weight(m, d, fan_in=m)}}
  return {"transformer": tree}


def gemma_on_disk(tree: dict, layout: str = "flat") -> dict:
  """`gemma_tree`'s tree as a checkpoint stores it.

  "flat" is what `gemma.params.flatten_and_remap_params` writes (the released
  checkpoints): "/"-joined module paths over one last level, MLP weights as
  {"w": ...}. "nested" is the tree as it is; "rootless" is a `gm` checkpoint:
  nested, without "transformer".
  """
  if layout == "nested":
    return tree
  if layout == "rootless":
    return tree["transformer"]
  flat = {}

  def visit(prefix, node):
    for key, value in node.items():
      if isinstance(value, dict):
        visit(f"{prefix}/{key}", value)
      elif key in ("gating_einsum", "linear"):
        flat[f"{prefix}/{key}"] = {"w": value}
      else:
        flat.setdefault(prefix, {})[key] = value

  visit("transformer", tree["transformer"])
  return flat


def write_gemma_checkpoint(directory: str | os.PathLike, config: ModelConfig,
                           seed: int = 0, vocab_size: int | None = None) -> dict:
  """An orbax checkpoint of `gemma_tree(config, seed, vocab_size)` in the
  released (flat) layout at `directory`; returns the nested tree."""
  tree = gemma_tree(config, seed, vocab_size)
  ocp.PyTreeCheckpointer().save(os.path.abspath(directory), gemma_on_disk(tree))
  return tree
