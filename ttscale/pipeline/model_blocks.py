"""The `model` and `large_model` blocks, completed from the checkpoints they start from.

When `checkpoint.policy` (or `checkpoint.large`) names a checkpoint, its
block's architecture is the checkpoint's: a field left unset (None, as the
placeholders of `configs/common.py:checkpoint_model_block`) or absent is read
from it (`checkpoint_import.checkpoint_architecture`: the Hugging Face
`config.json`, or a Gemma tree's shapes and the released model they match),
and a field set must agree with it; a field the checkpoint leaves open (a
Gemma 2/3 tree of no released size shows no soft cap) must be set.
The run's own fields (`config.RUN_FIELDS`: dropout, dtypes) are the config's.

This runs before any stage and reads only: the completed blocks are what the
stage markers and the checkpoints' `spec.json` record, so a workdir resumes
as it would with the blocks written out, and a checkpoint whose config.json
changed is refused by the same guards, naming the field.
"""

from __future__ import annotations

from ml_collections import config_dict

from ttscale.models.checkpoint_import import (
    check_checkpoint_config,
    check_checkpoint_paths,
    checkpoint_architecture,
)
from ttscale.models.config import ARCHITECTURE_FIELDS

# Each block and the `checkpoint` field naming the checkpoint it starts from.
SOURCES = (("model", "policy"), ("large_model", "large"))


def unset_fields(block) -> list[str]:
  """The architecture fields of a `model` block left unset (None) or absent."""
  return [field for field in ARCHITECTURE_FIELDS if block.get(field) is None]


def derive_model_blocks(config):
  """`config` with its `model` and `large_model` blocks completed from their
  checkpoints (a copy when a field was filled in; `config` itself otherwise).

  Raises:
    ValueError: one line naming the first field that is set and differs from
      the checkpoint (and the file it was read from), or that is unset (None)
      with no checkpoint to read it from; or a `checkpoint.*` field that
      cannot work (`check_checkpoint_config`, `check_checkpoint_paths`).
  """
  checkpoint = config.get("checkpoint") or {}
  completed = {}
  for block, source in SOURCES:
    if block not in config:
      continue
    path = checkpoint.get(source, "")
    if not path:
      placeholders = [field for field in (*ARCHITECTURE_FIELDS, *config[block])
                      if field in config[block] and config[block][field] is None]
      if placeholders:
        raise ValueError(f"{block}.{placeholders[0]} is unset: set it, or "
                         f"checkpoint.{source} to read it from a checkpoint")
      continue
    check_checkpoint_config(checkpoint)
    check_checkpoint_paths(checkpoint)
    architecture, where = checkpoint_architecture(checkpoint.format, path)
    for field, value in config[block].items():
      if (value is not None and architecture.get(field) is not None
          and value != architecture[field]):
        raise ValueError(f"{block}.{field}={value!r} but {where} gives "
                         f"{architecture[field]!r}: leave {block}.{field} unset to "
                         "take the checkpoint's")
    unset = unset_fields(config[block])
    # E.g. the soft caps of a Gemma 2 tree of no released size: no shape shows them.
    open_fields = [field for field in unset if architecture[field] is None]
    if open_fields:
      raise ValueError(f"{block}.{open_fields[0]} is unset and {where} does not fix "
                       f"it: set {block}.{open_fields[0]}")
    if unset:
      completed[block] = {field: architecture[field] for field in unset}
  if not completed:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for block, fields in completed.items():
      values = {**config[block].to_dict(), **fields}
      config[block] = config_dict.ConfigDict(
          {field: values[field] for field in (*ARCHITECTURE_FIELDS, *values)
           if field in values})
  return config
