"""What the config files share: the config argument and the optimiser fields.

A config argument is `VARIANT[,OPTION...]`, as in
`--config=configs/arith.py:paper,runlocal`: one variant (the file's default
when left out) and boolean options that adjust any variant.
"""

import dataclasses
from collections.abc import Sequence

from ml_collections import config_dict

from ttscale.models.config import ARCHITECTURE_FIELDS, RUN_FIELDS, ModelConfig


@dataclasses.dataclass(frozen=True)
class ConfigArg:
  """A parsed config argument."""

  variant: str
  options: tuple[str, ...]  # in the order given, each once

  @property
  def text(self) -> str:
    """The argument in full, e.g. "paper,runlocal"; the variant alone without options."""
    return ",".join((self.variant, *self.options))


def parse_arg(arg: str | None, *, variants: Sequence[str], default: str,
              options: Sequence[str] = ()) -> ConfigArg:
  """Parses `VARIANT[,OPTION...]` (big_vision's `parse_arg`, with plain flags).

  Args:
    arg: the text after the config file's colon; None or "" is `default`.
      A first item that names an option, not a variant, also means `default`
      (`runlocal` alone is `default,runlocal`).
    variants: the file's variants.
    default: the variant when none is named.
    options: the options the file defines.

  Returns:
    The variant and the options named.

  Raises:
    ValueError: one line naming an unknown variant or option and the known ones.
  """
  # A name that is both would make `runlocal`-style arguments ambiguous.
  assert not set(variants) & set(options), (variants, options)
  items = [item.strip() for item in (arg or "").split(",")]
  if items[0] in options:
    items.insert(0, "")
  variant = items[0] or default
  if variant not in variants:
    raise ValueError(f"config variant {variant!r}: expected one of {', '.join(variants)}")
  for option in items[1:]:
    if option not in options:
      known = f"expected one of {', '.join(options)}" if options else "this file has none"
      raise ValueError(f"config option {option!r} in {arg!r}: {known}")
  return ConfigArg(variant, tuple(dict.fromkeys(items[1:])))


def adamw(*, learning_rate: float, warmup_steps: int, end_learning_rate_fraction: float,
          weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.95,
          grad_clip_norm: float = 1.0) -> dict:
  """The optimiser's fields of a training block (`ttscale/training/optimizer.py`).

  AdamW with linear warm-up to `learning_rate` and cosine decay to
  `learning_rate * end_learning_rate_fraction`, gradients clipped to a global
  norm of `grad_clip_norm`. Every block of the study uses the defaults.

  Returns:
    The fields, to spread into the block (they stay top-level fields, so that
    `--config.train.learning_rate=...` and the trainer read them as before).
  """
  return dict(learning_rate=learning_rate, warmup_steps=warmup_steps,
              end_learning_rate_fraction=end_learning_rate_fraction,
              weight_decay=weight_decay, b1=b1, b2=b2, grad_clip_norm=grad_clip_norm)


def checkpoint_model_block(**run_fields) -> config_dict.ConfigDict:
  """A `model` block to be read from the checkpoint the network starts from.

  Every architecture field (`ModelConfig`'s but the vocabulary and
  `RUN_FIELDS`) is a typed placeholder: None until the pipeline fills it from
  the checkpoint (`ttscale/pipeline/model_blocks.py`); a flag may still set
  one (`--config.model.num_layers=18`), and it is then checked against the
  checkpoint. `run_fields` (dropout, dtypes) are set as given.
  """
  defaults = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
  block = {field: config_dict.placeholder(type(defaults[field]))
           for field in ARCHITECTURE_FIELDS}
  unknown = sorted(set(run_fields) - set(RUN_FIELDS))
  if unknown:
    raise ValueError(f"model.{unknown[0]}: not a run field; expected some of "
                     f"{', '.join(RUN_FIELDS)}")
  return config_dict.ConfigDict(block | {field: run_fields.get(field, defaults[field])
                                         for field in RUN_FIELDS})
