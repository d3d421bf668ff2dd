"""Sequential revision chains: s attempts in each of p parallel chains.

A budget of N = s·p generations per question is spent as p independent
chains of s attempts. Attempt 1 of a chain sees the question only (so a chain
with s = 1 is an ordinary sample of the revision model); attempt j > 1 sees
the question and the last (up to) 4 attempts of its own chain
(`tasks.revision.revision_context`), so contexts are bounded and chains may
run longer than 4.

Chains advance one attempt at a time, all chains of all questions in the
batch. Each attempt is one call of the shared compiled sampler
(`generate.sample_continuations`): its contexts are re-prefilled, because the
window of previous attempts slides. Each batch of contexts is padded to a
multiple of `CONTEXT_WIDTH_MULTIPLE` (its own width: short contexts attend
over a short cache), so programs are shared by every (s, p) with contexts of
that width. FLOPs count every re-prefill.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from ttscale.data.tokenizer import Tokenizer
from ttscale.data.verifier_data import find_step_ends
from ttscale.models import Network
from ttscale.search import generate, sampling, scoring
from ttscale.search.budget import FlopsRate
from ttscale.tasks.base import Task
from ttscale.tasks.revision import MAX_PREVIOUS_ATTEMPTS, revision_context

CONTEXT_WIDTH_MULTIPLE = 64  # few distinct context widths → few compilations


def splits(budget: int) -> list[tuple[int, int]]:
  """The (sequential, parallel) splits of a power-of-two budget, s = 1, 2, ..., N.

  For N = 16 these are the paper's ratios 1:16, 1:4, 1:1, 4:1, 16:1 (s/p).
  """
  if budget < 1 or budget & (budget - 1):
    raise ValueError(f"revision budget {budget}: expected a power of two")
  return [(2 ** i, budget // 2 ** i) for i in range(budget.bit_length())]


def parse_splits(texts, grid: list[int], field: str = "sweep_revisions.splits"
                 ) -> list[tuple[int, int]]:
  """Splits written "SxP" (e.g. "4x4"), each multiplying to a budget on `grid`.

  Raises:
    ValueError: naming `field`, for a malformed split or one whose s·p is not
      a budget on the grid.
  """
  result = []
  for text in texts:
    parts = str(text).split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
      raise ValueError(f"{field}: {text!r} is not a split; expected 'SxP' with positive "
                       "integers, e.g. '4x4'")
    sequential, parallel = int(parts[0]), int(parts[1])
    if sequential * parallel not in grid:
      raise ValueError(f"{field}: {text!r} multiplies to {sequential * parallel}, not a "
                       f"budget on the grid {', '.join(map(str, grid))}")
    result.append((sequential, parallel))
  return result


@dataclasses.dataclass
class Attempt:
  context: list[int]   # bos + the revision context's tokens
  tokens: np.ndarray   # int32: the sampled tokens, end-of-solution included if sampled
  ended: bool          # the attempt sampled end-of-solution
  text: str            # the attempt's text (no end token)


@dataclasses.dataclass
class Chains:
  attempts: list[list[list[Attempt]]]  # [question][chain][attempt]
  flops: np.ndarray                    # float64 [questions]: policy FLOPs, prefills included
  generated_tokens: int
  seconds: float


def context_tokens(tokenizer: Tokenizer, task: Task, question: str,
                   previous: list[str]) -> list[int]:
  return [tokenizer.bos_id] + tokenizer.encode(
      revision_context(task, question, previous, MAX_PREVIOUS_ATTEMPTS))


def run_chains(model: Network, tokenizer: Tokenizer, task: Task,
               questions: list[str], *, sequential: int, parallel: int,
               sampler_config: sampling.SamplerConfig, batch_size: int, key: jax.Array,
               mesh=None, rules=None) -> Chains:
  """`parallel` chains of `sequential` attempts for every question.

  Attempt j of every chain draws with `fold_in(key, j)`; the same inputs and
  key give the same chains.

  Args:
    model: the revision model (a policy).
    sampler_config: must stop at the end of the solution.
  """
  started = time.time()
  rate = FlopsRate.of(model.config)
  chains = [[[] for _ in range(parallel)] for _ in questions]
  flops = np.zeros(len(questions))
  generated = 0
  for j in range(sequential):
    if j == 0:  # every chain of a question starts from the same context
      contexts = [context_tokens(tokenizer, task, q, []) for q in questions]
      copies = parallel
    else:
      contexts = [context_tokens(tokenizer, task, q, [a.text for a in chain])
                  for q, question_chains in zip(questions, chains, strict=True)
                  for chain in question_chains]
      copies = 1
    out = generate.sample_continuations(
        model, contexts, sampler_config=sampler_config, batch_size=batch_size,
        key=jax.random.fold_in(key, j),
        width_multiple=CONTEXT_WIDTH_MULTIPLE, copies=copies, mesh=mesh, rules=rules)
    generated += out.num_generated_tokens
    for row, (tokens, ended) in enumerate(zip(out.tokens, out.ended, strict=True)):
      q, c = divmod(row, parallel)
      context = contexts[row // copies]
      chains[q][c].append(Attempt(
          context=context, tokens=np.asarray(tokens, np.int32), ended=bool(ended),
          text=tokenizer.decode([int(t) for t in tokens if t != tokenizer.eos_id])))
      # The last context token is decoded, not prefilled (see `sampling.prefill`).
      flops[q] += float(rate.decode(len(context) - 1, len(tokens)))
      # The sampler prefills a context once for its copies only when they
      # fill whole batches (see `generate.sample_continuations`).
      if c == 0 or copies == 1 or batch_size % copies:
        flops[q] += float(rate.decode(0, len(context) - 1))
  return Chains(attempts=chains, flops=flops, generated_tokens=generated,
                seconds=time.time() - started)


def score_attempts(verifier: Network, tokenizer: Tokenizer, task: Task,
                   questions: list[str], chains: Chains, *, with_context: bool,
                   batch_size: int, mesh=None, rules=None) -> tuple[np.ndarray, np.ndarray]:
  """A verifier's score of every attempt: its last step's score.

  Args:
    with_context: score each attempt after its revision context (the revision
      verifier), or after the question's plain prompt (the base PRM).

  Returns:
    (scores float32 [questions, chains, attempts], FLOPs float64 [questions]).
  """
  rate = FlopsRate.of(verifier.config)
  shape = (len(questions), len(chains.attempts[0]), len(chains.attempts[0][0]))
  records = []
  flops = np.zeros(len(questions))
  for q, question in enumerate(questions):
    plain = context_tokens(tokenizer, task, question, [])
    for chain in chains.attempts[q]:
      for attempt in chain:
        prompt = attempt.context if with_context else plain
        tokens = [int(t) for t in attempt.tokens]
        records.append({"prompt": prompt, "tokens": tokens,
                        "step_ends": find_step_ends(tokens, tokenizer)})
        flops[q] += float(rate.decode(0, len(prompt) + len(tokens)))
  scores = scoring.last_step_scores(verifier, records, batch_size, mesh, rules)
  return scores.reshape(shape), flops
