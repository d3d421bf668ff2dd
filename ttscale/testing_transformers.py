"""Tiny released-model stand-ins written by the reference libraries themselves:
a `tokenizer.json` trained by `tokenizers`, and a random Qwen 3 or Gemma 3
checkpoint written by transformers' own classes (`save_pretrained`).

transformers and torch are the optional `reference` extra (`pip install -e
'.[reference]'`); they are imported only when a checkpoint is written.
"""

from __future__ import annotations

import os

# Each family: its tokenizer's style, its transformers classes and its options.
# Gemma 3: six layers, five local (a window shorter than local_tiny's 96
# tokens) and one global, with its own RoPE bases and linear rope scaling.
# Untied heads (both families have the option), so that a policy can favour
# tokens (`write_transformers_checkpoint`).
FAMILIES = {
    "qwen3": dict(tokenizer="byte_level", config_class="Qwen3Config",
                  model_class="Qwen3ForCausalLM", options=dict(
                      num_hidden_layers=2, rope_theta=1_000_000.0,
                      tie_word_embeddings=False)),
    "gemma3": dict(tokenizer="metaspace", config_class="Gemma3TextConfig",
                   model_class="Gemma3ForCausalLM", options=dict(
                       num_hidden_layers=6, sliding_window=16, query_pre_attn_scalar=16,
                       rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                       rope_scaling=dict(rope_type="linear", factor=8.0),
                       tie_word_embeddings=False)),
}
_SHAPE = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
              num_key_value_heads=1, head_dim=16, max_position_embeddings=2048)


def write_tokenizer_json(path: str | os.PathLike, texts: list[str], style: str,
                         vocab_size: int = 320) -> None:
  """Trains a BPE `tokenizer.json` on `texts`: "byte_level" (as Qwen's and
  Llama 3's: no bos, "<|endoftext|>" ends a text) or "metaspace"
  (sentencepiece-style, as Gemma's: "<bos>" first, "<eos>", "<pad>")."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

  if style == "byte_level":
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  elif style == "metaspace":
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.token_to_id("<bos>"))])
  else:
    raise ValueError(f"tokenizer style {style!r}: expected byte_level or metaspace")
  tokenizer.save(str(path))


def write_transformers_checkpoint(directory: str | os.PathLike, family: str,
                                  vocab_size: int, special_ids: dict[str, int],
                                  seed: int = 0,
                                  favoured: dict[int, float] | None = None) -> None:
  """A random model of `family` ("qwen3", "gemma3") written by transformers.

  Args:
    vocab_size: the embedding's rows (the tokenizer's size).
    special_ids: {"bos_token_id", "eos_token_id", "pad_token_id": id}, for
      config.json.
    seed: torch's seed for the initial weights (transformers' own init).
    favoured: {token id: logit} raises those tokens' logits by about that
      much wherever the model is (the step delimiter and eos: a random policy
      then writes solutions of several steps that end, as
      `testing_files.write_llama_checkpoint`'s): every embedding gets a large
      constant first coordinate, which dominates the small residual updates
      of transformers' init and so survives the final norm as about
      sqrt(hidden_size), and only the favoured tokens' head rows read it.

  Raises:
    ValueError: an unknown family, or transformers is not installed.
  """
  if family not in FAMILIES:
    raise ValueError(f"family {family!r}: expected one of {', '.join(FAMILIES)}")
  try:
    import torch
    import transformers
  except ImportError:
    raise ValueError(f"family {family!r} needs torch and transformers "
                     "(pip install -e '.[reference]')") from None
  spec = FAMILIES[family]
  config = getattr(transformers, spec["config_class"])(
      vocab_size=vocab_size, **_SHAPE, **spec["options"], **special_ids)
  torch.manual_seed(seed)
  model = getattr(transformers, spec["model_class"])(config).eval()
  if favoured:
    constant, normed = 10.0, _SHAPE["hidden_size"] ** 0.5
    with torch.no_grad():
      model.model.embed_tokens.weight[:, 0] = constant
      model.lm_head.weight[:, 0] = 0.0
      for token, logit in favoured.items():
        model.lm_head.weight[token, 0] = logit / normed
  model.save_pretrained(directory, safe_serialization=True)
