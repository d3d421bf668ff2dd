"""What the stages share: config, workdir paths and lazily loaded artefacts
(the networks' in `networks.py`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from etils import epath

from ttscale import io_utils, layout, parallel
from ttscale.data import arith_builder, math_builder, tfds_source
from ttscale.data.pretrained_tokenizer import load_tokenizer
from ttscale.pipeline.model_blocks import derive_model_blocks
from ttscale.pipeline.networks import Networks
from ttscale.search import generate, sampling
from ttscale.tasks import get_task


class Context(Networks):
  """What the stages share: config, workdir paths, lazily loaded artefacts."""

  def __init__(self, config, workdir: str, log: Callable[[str], None] = print):
    # The `model` blocks as the stages record them: completed from the
    # checkpoints they start from.
    self.config = derive_model_blocks(config)
    self.workdir = io_utils.absolute(workdir)  # a gs:// workdir stays a URL
    self.log = log
    self.task = get_task(config.task)

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  @functools.cached_property
  def data(self) -> dict:
    """{split: random-access source}: the embedded task's, or MATH's from `manual_dir`."""
    if self.task.name == "math":
      data = self.config.data
      if not data.manual_dir:
        raise ValueError("data.manual_dir is required for task.name='math': a directory "
                         "in the public MATH layout (train/<subject>/<id>.json, test/...)")
      return math_builder.build_math_data(data.manual_dir, self.path(layout.DATA),
                                          data.test_ids_file or None)
    return arith_builder.build_arith_data(self.config.task, self.config.data,
                                          self.path(layout.DATA))

  def examples(self, split: str):
    """The `Example`s of a split; "test" is `data.test_split` where the config has one
    (MATH: "test", or "test500" with `data.test_ids_file`)."""
    if split == "test":
      split = self.config.data.get("test_split", "test")
    if split not in self.data:
      raise ValueError(f"data.test_split={split!r}: the data has only the splits "
                       f"{', '.join(self.data)}")
    return tfds_source.read_examples(self.data[split])

  @functools.cached_property
  def tokenizer(self):
    """The workdir's `Tokenizer`, or a released model's `PretrainedTokenizer`."""
    path = self.path(layout.TOKENIZER)
    if not epath.Path(path).exists():
      raise ValueError(f"{path} is missing: run the 'data' stage first")
    return load_tokenizer(path)

  @functools.cached_property
  def mesh(self):
    return parallel.make_mesh(self.config.mesh)

  @property
  def rules(self):
    return tuple(tuple(rule) for rule in self.config.mesh.rules)

  def sampling_rule(self) -> sampling.SamplingRule:
    return sampling.SamplingRule(self.config.sampling.temperature, self.config.sampling.top_p)

  def sampler_config(self) -> sampling.SamplerConfig:
    """The policy's sampler for whole solutions (`sampling` block)."""
    return sampling.SamplerConfig(
        rule=self.sampling_rule(), stop_at=sampling.StopAt.SOLUTION,
        max_new_tokens=self.config.sampling.max_new_tokens,
        step_id=self.tokenizer.step_id, eos_id=self.tokenizer.eos_id)

  def sample_pool(self, path: str, questions: list[str], num_samples: int, seed: int,
                  name: str) -> dict:
    """`generate.sample_pool` of the policy, kept at `path` in the workdir."""
    cfg = self.config
    return generate.sample_pool(
        self.path(path), self.load_policy, self.tokenizer, self.task, questions,
        num_samples=num_samples, rule=self.sampling_rule(),
        max_new_tokens=cfg.sampling.max_new_tokens, batch_size=cfg.sampling.batch_size,
        seed=seed, mesh=self.mesh, rules=self.rules, progress_name=name, log=self.log)

  def read(self, path: str, stage: str, reader: Callable[[str], Any] = io_utils.read_json):
    """`reader` of a file `stage` wrote, or a one-line error naming that stage."""
    if not epath.Path(self.path(path)).exists():
      raise ValueError(f"{self.path(path)} is missing: run the '{stage}' stage first")
    return reader(self.path(path))

  def revision_trajectories(self) -> list[dict]:
    """The records written by the `revision_data` stage."""
    return self.read(layout.REVISION_TRAJECTORIES, "revision_data", io_utils.read_jsonl)

  def labelled_solutions(self) -> list[dict]:
    """The records written by the `prm_labels` stage."""
    return self.read(layout.PRM_LABELS, "prm_labels", io_utils.read_jsonl)
