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
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ttscale import parallel, resumable
from ttscale.data.batching import left_pad
from ttscale.data.tokenizer import Tokenizer
from ttscale.models import ModelConfig, Network, init_cache, policy_extend_fn
from ttscale.models.kv_cache import continue_shared
from ttscale.progress import Progress
from ttscale.search import sampling
from ttscale.tasks.base import Task

_PROMPT_WIDTH_MULTIPLE = 16  # few distinct prompt widths → few compilations


@dataclasses.dataclass
class Samples:
  texts: list[list[str]]            # [question][sample] decoded solutions
  tokens: list[list[np.ndarray]]    # [question][sample] int32 solution tokens, no end token
  ended: list[list[bool]]           # [question][sample] the sample ended its solution
  num_generated_tokens: int         # tokens sampled, stop tokens included
  num_prompt_tokens: int            # prompt tokens prefilled (all samples)
  seconds: float                    # wall time of the sampling


@dataclasses.dataclass
class Continuations:
  tokens: list[np.ndarray]          # [row] int32 sampled tokens, the stop token included
  ended: np.ndarray                 # bool [rows]: the row sampled the end-of-solution token
  num_generated_tokens: int         # tokens sampled, stop tokens included
  seconds: float                    # wall time of the sampling


@functools.lru_cache(maxsize=128)
def _compiled_sampler(graphdef, batch_size: int, prompt_width: int,
                      model_config: ModelConfig,
                      sampler_config: sampling.SamplerConfig, copies: int = 1):
  """`(params, prompts [batch_size / copies, W], lengths, rng)`: each prompt is
  prefilled once, then continued in `copies` consecutive rows, which read it
  as their shared prefix (`kv_cache.continue_shared`): a decode trip reads a
  context once per group, not once per row."""
  extend_fn = policy_extend_fn(graphdef)
  # Whole solutions start in a cache of half their token budget (a decode
  # trip reads every slot); the rows still running then go on in a full one.
  first_tokens = sampling.first_cache_tokens(sampler_config)
  first_slots = first_tokens or sampler_config.max_new_tokens

  @jax.jit
  def run(params, prompts, lengths, rng):
    if copies > 1:
      context = init_cache(model_config, batch_size // copies, prompt_width)
      context, pending = sampling.prefill(extend_fn, params, context, prompts, lengths)
      cache = continue_shared(context, copies, first_slots)
      pending = jnp.repeat(pending, copies)
      max_slots = sampler_config.max_new_tokens
    else:
      cache = init_cache(model_config, batch_size, prompt_width + first_slots)
      cache, pending = sampling.prefill(extend_fn, params, cache, prompts, lengths)
      max_slots = prompt_width + sampler_config.max_new_tokens
    active = jnp.ones((batch_size,), bool)
    out = sampling.sample_in_two_caches(extend_fn, params, cache, pending, active, rng,
                                        sampler_config, first_tokens, max_slots)
    return out.tokens, out.lengths, out.ended_solution

  return run


def context_width(contexts: list[list[int]], multiple: int = _PROMPT_WIDTH_MULTIPLE) -> int:
  """The padded width for `contexts`: the longest, rounded up to `multiple`.

  Few distinct widths mean few compiled programs.
  """
  longest = max(len(c) for c in contexts)
  return -(-longest // multiple) * multiple


def sample_continuations(policy: Network, contexts: list[list[int]], *,
                         sampler_config: sampling.SamplerConfig,
                         batch_size: int, key: jax.Array, width: int | None = None,
                         width_multiple: int = _PROMPT_WIDTH_MULTIPLE,
                         copies: int = 1, shortest_first: bool = True, mesh=None,
                         rules=None, progress: Progress | None = None) -> Continuations:
  """Continues every context (a token list ending in its last context token)
  `copies` times.

  Rows are decoded in fixed-shape batches of `batch_size` (the last one
  padded), contexts taken shortest first (or as given): a batch decodes until
  its longest row stops, and context length predicts continuation length (on
  the embedded task, the number of operations), so batches of like lengths
  stop sooner. Batch b draws with `fold_in(key, b)`, so the same contexts and key
  give the same continuations. A context is prefilled once for its copies
  when `copies` divides `batch_size` (otherwise once per copy), and its copies
  read it from one shared prefix (`kv_cache.continue_shared`).

  Args:
    contexts: token ids, each at least one token long.
    width: one padded context width for every batch; by default each batch
      takes its own, `context_width(batch, width_multiple)`, so that short
      batches attend over a short cache (a program per distinct width).
    copies: continuations per context, in consecutive rows.
    shortest_first: False keeps the contexts' order in the batches, for a
      caller that knows better what predicts continuation length (MC
      rollouts: the steps left in the solution a prefix was cut from).
    mesh, rules: rows are split over the mesh's "data" axis (None: one device).
    progress: updated once per batch.

  Returns:
    `Continuations`, `copies` token arrays per context, context-major.
  """
  started = time.time()
  if batch_size % copies:
    contexts, copies = [c for c in contexts for _ in range(copies)], 1
  per_batch = batch_size // copies
  num_batches = -(-len(contexts) // per_batch)
  # Shortest first (stable) or as given; rows go back to the input order at the end.
  order = (sorted(range(len(contexts)), key=lambda i: len(contexts[i])) if shortest_first
           else list(range(len(contexts))))
  ordered = [contexts[i] for i in order]
  tokens: list[np.ndarray] = []
  ended: list[bool] = []
  generated = 0
  # Rows split over the mesh's "data" axis: measured 15% faster here than
  # whole batches on one device each (as search runs them).
  with parallel.maybe_sharding(mesh, rules):
    params = policy.params if mesh is None else parallel.replicate(policy.params, mesh)
    for b in range(num_batches):
      chunk = ordered[b * per_batch:(b + 1) * per_batch]
      real = len(chunk) * copies
      chunk = chunk + [chunk[-1]] * (per_batch - len(chunk))  # pad the last batch
      batch_width = width or context_width(chunk, width_multiple)
      run = _compiled_sampler(policy.graphdef, batch_size, batch_width, policy.config,
                              sampler_config, copies)
      # Padding is masked out by `prefill`; its token value never matters.
      inputs, lengths = left_pad(chunk, batch_width, pad_id=0)
      if mesh is not None:
        place = (parallel.shard_batch if per_batch % mesh.shape["data"] == 0
                 else parallel.replicate)
        inputs, lengths = place((inputs, lengths), mesh)
      # Rows may span several processes' devices: every host gathers them all.
      out_tokens, out_lengths, out_ended = parallel.to_host(
          run(params, inputs, lengths, jax.random.fold_in(key, b)))
      for row in range(real):
        tokens.append(out_tokens[row, :out_lengths[row]])
        ended.append(bool(out_ended[row]))
      generated += int(out_lengths[:real].sum())
      if progress:
        progress.update()
  # Copy c of context i was sampled in row rank(i) * copies + c.
  rank = np.argsort(np.asarray(order, np.int64))
  position = (rank[:, None] * copies + np.arange(copies)[None, :]).reshape(-1)
  return Continuations(tokens=[tokens[p] for p in position],
                       ended=np.array(ended, bool)[position],
                       num_generated_tokens=generated,
                       seconds=time.time() - started)


def sample_solutions(policy: Network, tokenizer: Tokenizer, task: Task,
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
  config = sampling.SamplerConfig(
      rule=rule, stop_at=sampling.StopAt.SOLUTION,
      max_new_tokens=max_new_tokens, step_id=tokenizer.step_id,
      eos_id=tokenizer.eos_id)
  num_batches = -(-len(prompts) * num_samples // batch_size)
  progress = Progress(progress_name, num_batches, log) if progress_name else None
  out = sample_continuations(policy, prompts, sampler_config=config,
                             batch_size=batch_size, key=jax.random.key(seed),
                             copies=num_samples, mesh=mesh, rules=rules, progress=progress)
  solutions = [t[t != tokenizer.eos_id] for t in out.tokens]
  texts = [tokenizer.decode(t.tolist()) for t in solutions]

  def grouped(items):
    return [list(items[i * num_samples:(i + 1) * num_samples])
            for i in range(len(questions))]

  return Samples(texts=grouped(texts), tokens=grouped(solutions),
                 ended=grouped(out.ended.tolist()),
                 num_generated_tokens=out.num_generated_tokens,
                 num_prompt_tokens=num_samples * sum(len(p) for p in prompts),
                 seconds=time.time() - started)


def sample_pool(path: str, load_policy: Callable[[], Network], tokenizer: Tokenizer,
                task: Task, questions: list[str], *, num_samples: int,
                rule: sampling.SamplingRule, max_new_tokens: int, batch_size: int, seed: int,
                mesh=None, rules=None, progress_name: str | None = None, log=print) -> dict:
  """`sample_solutions` once, kept in `path`: a re-run reads them (and never
  loads the policy); a file sampled for other questions, another count or
  seed is refused (`resumable.map_parts`).

  Returns:
    {"tokens": [question][sample] solution tokens, "ended": [question][sample]
     bool, "generated_tokens", "seconds", "part": what was sampled}.
  """
  def sample(part: resumable.Part) -> dict:
    del part
    samples = sample_solutions(
        load_policy(), tokenizer, task, questions, num_samples=num_samples, rule=rule,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, mesh=mesh,
        rules=rules, progress_name=progress_name, log=log)
    return {"tokens": [[t.tolist() for t in row] for row in samples.tokens],
            "ended": samples.ended, "generated_tokens": samples.num_generated_tokens,
            "seconds": samples.seconds}

  # One part: the whole pool (`sample_solutions` batches across questions).
  description = {"questions": resumable.digest(questions), "num_questions": len(questions),
                 "num_samples": num_samples, "seed": seed}
  return resumable.map_parts([resumable.Part(path, description, None)], sample).results[0]
