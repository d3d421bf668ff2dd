r"""Writes the small files `configs/math.py:local_tiny` runs on, for a try-out.

  python -m launch.tiny_math_files --out=/tmp/math_files [--family=llama]

writes, in the formats the real ones have (see `ttscale.testing_files`):

  OUT/MATH/{train,test}/<subject>/<id>.json   problems in the public MATH layout
  OUT/tokenizer.model                          a Llama-2-style sentencepiece BPE
  OUT/llama/                                   a tiny random Llama policy (safetensors)
  OUT/llama_prm/                               another one, for `checkpoint.prm`

With `--family=qwen3` or `--family=gemma3` (needs torch and transformers,
`pip install -e '.[reference]'`), OUT/FAMILY/ and OUT/FAMILY_prm/ instead hold
random models written by transformers' own classes (`save_pretrained`), each
with a `tokenizer.json` trained by the `tokenizers` library (byte-level BPE
for Qwen 3, sentencepiece-style for Gemma 3); see `ttscale.testing_transformers`.

It prints the launcher command that runs the study on them. The models are
random: the study runs end to end, its accuracies are not meaningful.
"""

import os

from absl import app, flags

from configs import math as math_config
from ttscale import testing_files, testing_transformers
from ttscale.data.pretrained_tokenizer import load_tokenizer
from ttscale.models.config import ModelConfig
from ttscale.tasks.math import MathTask

_OUT = flags.DEFINE_string("out", None, "Directory to write (made if missing).",
                           required=True)
_FAMILY = flags.DEFINE_enum("family", "llama", ["llama", *testing_transformers.FAMILIES],
                            "The checkpoints' family (and their tokenizer's format).")
_CONFIG = "configs/math.py:local_tiny"


def local_tiny_config():
  """`configs/math.py:local_tiny`."""
  return math_config.get_config("local_tiny")


def write_files(out: str, checkpoint_vocab: int | None = None) -> dict:
  """Writes the files into `out`.

  Args:
    checkpoint_vocab: the checkpoints' vocabulary size (default: the
      tokenizer's; another size makes checkpoints the import must refuse).

  Returns:
    {"manual_dir", "tokenizer", "policy", "prm"}: paths; "vocab_size": the tokenizer's.
  """
  problems = testing_files.write_math_dir(os.path.join(out, "MATH"))
  task = MathTask()
  paths = {"manual_dir": os.path.join(out, "MATH"),
           "tokenizer": os.path.join(out, "tokenizer.model"),
           "policy": os.path.join(out, "llama"), "prm": os.path.join(out, "llama_prm")}
  vocab_size = testing_files.write_llama_style_tokenizer(
      paths["tokenizer"], [task.prompt(p["problem"]) + p["solution"] for p in problems])
  tokenizer = load_tokenizer(paths["tokenizer"])
  model = ModelConfig(vocab_size=checkpoint_vocab or vocab_size, **math_config.LOCAL_TINY_MODEL)
  # The policy's head favours the step delimiter and eos, so that its
  # solutions have steps and end.
  testing_files.write_llama_checkpoint(
      paths["policy"], model, favoured={tokenizer.step_id: 4.0, tokenizer.eos_id: 3.5})
  testing_files.write_llama_checkpoint(paths["prm"], model, seed=1)
  return {**paths, "vocab_size": vocab_size}


def write_transformers_files(out: str, family: str) -> dict:
  """Writes the MATH files, a `tokenizer.json` and two random checkpoints of
  `family` (`testing_transformers.FAMILIES`) written by transformers.

  Returns:
    {"manual_dir", "tokenizer", "policy", "prm"}: paths; "vocab_size": the tokenizer's.
  """
  from ttscale.data.hf_tokenizer import HFTokenizer

  problems = testing_files.write_math_dir(os.path.join(out, "MATH"))
  task = MathTask()
  paths = {"manual_dir": os.path.join(out, "MATH"),
           "policy": os.path.join(out, family), "prm": os.path.join(out, f"{family}_prm")}
  paths["tokenizer"] = os.path.join(paths["policy"], "tokenizer.json")
  os.makedirs(paths["policy"], exist_ok=True)
  testing_transformers.write_tokenizer_json(
      paths["tokenizer"], [task.prompt(p["problem"]) + p["solution"] for p in problems],
      testing_transformers.FAMILIES[family]["tokenizer"])
  tokenizer = HFTokenizer.load(paths["tokenizer"])
  special_ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                     pad_token_id=tokenizer.pad_id)
  # As for the Llama files, the policy favours the step delimiter and eos;
  # eos less (its solutions mostly run to `max_new_tokens`), so that a
  # tokenizer.json that packs text tightly still gives local_tiny's revision
  # model more than one packed row of trajectories per data-parallel device.
  favoured = {tokenizer.step_id: 4.0, tokenizer.eos_id: 2.0}
  for seed, name in enumerate(("policy", "prm")):
    testing_transformers.write_transformers_checkpoint(
        paths[name], family, tokenizer.vocab_size, special_ids, seed=seed,
        favoured=favoured if name == "policy" else None)
  return {**paths, "vocab_size": tokenizer.vocab_size}


def main(argv):
  del argv
  if _FAMILY.value == "llama":
    paths = write_files(_OUT.value)
  else:
    paths = write_transformers_files(_OUT.value, _FAMILY.value)
  print(f"python -m launch.main --config={_CONFIG} --workdir=/tmp/math \\\n"
        f"    --config.data.manual_dir={paths['manual_dir']} \\\n"
        f"    --config.checkpoint.policy={paths['policy']} \\\n"
        f"    --config.checkpoint.prm={paths['prm']} \\\n"
        f"    --config.checkpoint.tokenizer={paths['tokenizer']}")


if __name__ == "__main__":
  app.run(main)
