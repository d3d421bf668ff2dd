"""Sampling whole solutions for lists of questions, in fixed-shape batches.

The host side of the sampler: tokenise prompts, fold `num_samples` copies of
each question into the batch, run one compiled program per (batch, prompt
width) shape, decode the results. Compiled programs are shared by every call
with the same static settings, so tests and stages don't recompile.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from ttscale import parallel
from ttscale.data.batching import left_pad
from ttscale.data.tokenizer import Tokenizer
from ttscale.models import ModelConfig, init_cache, policy_extend_fn
from ttscale.progress import Progress
from ttscale.search import sampling
from ttscale.tasks.base import Task

_PROMPT_WIDTH_MULTIPLE = 16  # few distinct prompt widths → few compilations


@dataclasses.dataclass(frozen=True)
class Policy:
  """A policy ready to sample: `nnx.split` halves and the model's config."""
  graphdef: object
  params: object
  config: ModelConfig


@dataclasses.dataclass
class Samples:
  texts: list[list[str]]            # [question][sample] decoded solutions
  num_generated_tokens: int         # tokens sampled, stop tokens included
  num_prompt_tokens: int            # prompt tokens prefilled (all samples)
  seconds: float                    # wall time of the sampling


@functools.lru_cache(maxsize=32)
def _compiled_sampler(graphdef, batch_size: int, prompt_width: int,
                      model_config: ModelConfig,
                      sampler_config: sampling.SamplerConfig):
  extend_fn = policy_extend_fn(graphdef)
  max_slots = prompt_width + sampler_config.max_new_tokens

  @jax.jit
  def run(params, prompts, lengths, rng):
    cache = init_cache(model_config, batch_size, max_slots)
    cache, pending = sampling.prefill(extend_fn, params, cache, prompts, lengths)
    active = jnp.ones((batch_size,), bool)
    out = sampling.sample(extend_fn, params, cache, pending, active, rng,
                          sampler_config)
    return out.tokens, out.lengths

  return run


def sample_solutions(policy: Policy, tokenizer: Tokenizer, task: Task,
                     questions: list[str], *, num_samples: int,
                     rule: sampling.SamplingRule, max_new_tokens: int,
                     batch_size: int, seed: int, mesh=None, rules=None,
                     progress_name: str | None = None,
                     log=print) -> Samples:
  """Samples `num_samples` whole solutions per question.

  Sample j of question i uses batch row `i * num_samples + j` of a fixed
  layout, and batch b draws with `fold_in(key(seed), b)`: the same inputs and
  seed give the same samples.

  Returns:
    `Samples`, texts as `[len(questions)][num_samples]` strings (without the
    end-of-solution token; a truncated solution is returned as far as it got).
  """
  started = time.time()
  prompts = [[tokenizer.bos_id] + tokenizer.encode(task.prompt(q))
             for q in questions]
  longest = max(len(p) for p in prompts)
  width = -(-longest // _PROMPT_WIDTH_MULTIPLE) * _PROMPT_WIDTH_MULTIPLE
  rows = [p for p in prompts for _ in range(num_samples)]
  config = sampling.SamplerConfig(
      rule=rule, stop_at=sampling.StopAt.SOLUTION,
      max_new_tokens=max_new_tokens, step_id=tokenizer.step_id,
      eos_id=tokenizer.eos_id)
  run = _compiled_sampler(policy.graphdef, batch_size, width, policy.config,
                          config)
  num_batches = -(-len(rows) // batch_size)
  progress = Progress(progress_name, num_batches, log) if progress_name else None
  texts: list[str] = []
  generated = 0
  with parallel.maybe_sharding(mesh, rules):
    params = policy.params if mesh is None else parallel.replicate(policy.params, mesh)
    for b in range(num_batches):
      chunk = rows[b * batch_size:(b + 1) * batch_size]
      real = len(chunk)
      chunk = chunk + [chunk[-1]] * (batch_size - real)  # pad the last batch
      tokens, lengths = left_pad(chunk, width, tokenizer.pad_id)
      if mesh is not None:
        tokens, lengths = parallel.shard_batch((tokens, lengths), mesh)
      out_tokens, out_lengths = run(params, tokens, lengths,
                                    jax.random.fold_in(jax.random.key(seed), b))
      out_tokens, out_lengths = np.asarray(out_tokens), np.asarray(out_lengths)
      for row in range(real):
        ids = out_tokens[row, :out_lengths[row]]
        generated += int(out_lengths[row])
        texts.append(tokenizer.decode(ids[ids != tokenizer.eos_id]))
      if progress:
        progress.update()
  grouped = [texts[i * num_samples:(i + 1) * num_samples]
             for i in range(len(questions))]
  return Samples(texts=grouped, num_generated_tokens=generated,
                 num_prompt_tokens=sum(len(p) for p in rows),
                 seconds=time.time() - started)
