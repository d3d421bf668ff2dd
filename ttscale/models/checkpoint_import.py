"""Starting a policy from a released checkpoint: one entry point for every format.

The `checkpoint` config block names the format and the directories:

    checkpoint.format     "hf" (Hugging Face config.json + *.safetensors: Llama,
                          Qwen 2.5/3, Gemma 1/2/3; "llama" is the same) or
                          "gemma" (the gemma library's orbax trees,
                          Gemma 1, 2 and 3)
    checkpoint.policy     the policy's checkpoint directory ("" = train from scratch)
    checkpoint.large      the larger policy's, for the FLOPs-matched comparison
    checkpoint.tokenizer  the models' tokenizer: sentencepiece `tokenizer.model`
                          or Hugging Face `tokenizer.json`
    checkpoint.trim_vocab drop embedding rows past the tokenizer's pieces
                          (padding: Gemma's 256128 rows for 256000 pieces,
                          Qwen's 151936 for 151665 ids)

The `model` (and `large_model`) block describes the checkpoint: its
architecture fields left unset (None) are read from the checkpoint
(`checkpoint_architecture`: config.json, or a Gemma tree's shapes), and every
field set is checked against it, so a config that does not match is an error
that names the field, never a silently reshaped model.
"""

from __future__ import annotations

import jax.numpy as jnp
from etils import epath
from flax import nnx

from ttscale.models.config import ModelConfig

FORMATS = ("hf", "llama", "gemma")


def check_checkpoint_config(checkpoint_config) -> None:
  """Raises ValueError naming the first `checkpoint.*` field that cannot work."""
  fmt = checkpoint_config.format
  if fmt and fmt not in FORMATS:
    raise ValueError(f"checkpoint.format={fmt!r}: expected one of {', '.join(FORMATS)}")
  named = [name for name in ("policy", "large", "prm") if checkpoint_config.get(name)]
  if named and not fmt:
    raise ValueError(f"checkpoint.{named[0]} is set: checkpoint.format must say how "
                     f"to read it ({', '.join(FORMATS)})")
  if checkpoint_config.trim_vocab and not fmt:
    raise ValueError("checkpoint.trim_vocab=True: checkpoint.format must say which "
                     f"checkpoints to trim ({', '.join(FORMATS)})")
  if "policy" in named and not checkpoint_config.tokenizer:
    raise ValueError("checkpoint.policy is set: checkpoint.tokenizer must name its "
                     "tokenizer.model or tokenizer.json")
  if "prm" in named and not checkpoint_config.tokenizer:
    raise ValueError("checkpoint.prm is set: checkpoint.tokenizer must name the "
                     "tokenizer.model or tokenizer.json it was trained with")


def check_checkpoint_paths(checkpoint_config) -> None:
  """Raises ValueError naming the first `checkpoint.*` path that does not exist
  (a directory for the models, a file for the tokenizer), so that a typo in
  `checkpoint.prm` fails at the start, not after the stages before it."""
  for name in ("policy", "large", "prm", "tokenizer"):
    path = checkpoint_config.get(name)
    if not path:
      continue
    found = epath.Path(path)
    if not (found.is_file() if name == "tokenizer" else found.is_dir()):
      kind = "file" if name == "tokenizer" else "directory"
      raise ValueError(f"checkpoint.{name}={path!r}: no such {kind}")


def checkpoint_architecture(fmt: str, checkpoint_dir: str) -> tuple[dict, str]:
  """What a checkpoint fixes of its `model` block, without reading its weights.

  Args:
    fmt: one of `FORMATS`.
    checkpoint_dir: the checkpoint's directory.

  Returns:
    ({field: value} for every `config.ARCHITECTURE_FIELDS` name, where it was
    read: `DIR/config.json` for "hf" and "llama", `DIR` for "gemma").

  Raises:
    ValueError: see `hf_import.read_hf_config`, `gemma_import.read_gemma_architecture`.
  """
  from ttscale.models.config import ARCHITECTURE_FIELDS
  if fmt in ("hf", "llama"):
    from ttscale.models.hf_import import CONFIG_FILE, hf_model_block
    block = hf_model_block(checkpoint_dir)
    return ({field: block[field] for field in ARCHITECTURE_FIELDS},
            str(epath.Path(checkpoint_dir) / CONFIG_FILE))
  if fmt == "gemma":
    from ttscale.models.gemma_import import read_gemma_architecture
    return read_gemma_architecture(checkpoint_dir), str(checkpoint_dir)
  raise ValueError(f"checkpoint.format={fmt!r}: expected one of {', '.join(FORMATS)}")


def import_language_model(fmt: str, checkpoint_dir: str, config: ModelConfig, *,
                          trim_vocab: bool = False) -> nnx.State:
  """The parameters of a `LanguageModel(config)` read from a checkpoint.

  Args:
    fmt: one of `FORMATS`.
    checkpoint_dir: the checkpoint's directory.
    config: the model to build; `config.vocab_size` is the tokenizer's.
    trim_vocab: drop the embedding's rows past `config.vocab_size`.

  Returns:
    parameters (in `config.param_dtype`) with exactly the tree
    `nnx.split(LanguageModel(config))` has.

  Raises:
    ValueError: the checkpoint does not match `config` or the vocabulary, or
      is malformed; the message names the file and the field or tensor.
  """
  if fmt in ("hf", "llama"):
    from ttscale.models.hf_import import load_hf
    _, _, params = load_hf(checkpoint_dir, config, expected_vocab_size=config.vocab_size,
                           trim_vocab_to=config.vocab_size if trim_vocab else None)
  elif fmt == "gemma":
    from ttscale.models.gemma_import import load_gemma
    _, _, params = load_gemma(checkpoint_dir, config, expected_vocab_size=config.vocab_size,
                              trim_vocab_to=config.vocab_size if trim_vocab else None)
  else:
    raise ValueError(f"checkpoint.format={fmt!r}: expected one of {', '.join(FORMATS)}")
  return params


def language_model_from_arrays(config: ModelConfig, arrays: dict, source: str):
  """A `LanguageModel` of `config` filled from a checkpoint's arrays.

  Args:
    arrays: {our parameter path (tuple): array}; the arrays used are popped.
    source: the checkpoint, named in the error.

  Returns:
    (graphdef, params), each array cast to `config.param_dtype`.

  Raises:
    ValueError: one of our parameters has no array in `arrays`.
  """
  from ttscale.models.transformer import LanguageModel

  # Abstract init: the random weights would be thrown away.
  graphdef, state = nnx.split(
      nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0))))
  flat = []
  for path, variable in nnx.to_flat_state(state):
    if path not in arrays:
      raise ValueError(f"{source}: no tensor maps to our parameter {path}")
    flat.append((path, variable.replace(jnp.asarray(arrays.pop(path), config.param_dtype))))
  return graphdef, nnx.from_flat_state(flat)
