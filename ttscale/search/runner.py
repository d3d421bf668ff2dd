"""The host side of search: batches of questions through one compiled program per
setting, answers chosen by weighted best-of-N, one outcome per question.

Questions are folded into fixed-shape batches of `rows` rows (Q = rows / N
questions of N rows each; one question when N > rows). Every batch of a
setting has the same shape, so each setting compiles once; the persistent
compilation cache (set by the launcher) keeps second runs from compiling.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np

from ttscale import parallel
from ttscale.data.batching import left_pad
from ttscale.data.tokenizer import Tokenizer
from ttscale.search import beam, best_of_n, common, sampling, select
from ttscale.search.budget import SearchSetting
from ttscale.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class SearchOptions:
  """Settings shared by every search program of a sweep."""
  rule: sampling.SamplingRule
  max_new_tokens: int
  max_step_tokens: int
  max_rounds: int
  rows: int                  # batch rows per program (Q·N)


@dataclasses.dataclass
class QuestionResult:
  answer: str | None         # the chosen final answer
  candidates: list[str]      # the N candidate solutions (text)
  scores: np.ndarray         # float32 [N] their PRM scores
  flops: float               # FLOPs used
  policy_tokens: int         # tokens the policy decoded (rollouts included)
  seconds: float             # the question's share of its batch's wall time


def questions_per_batch(budget: int, rows: int) -> int:
  return max(rows // budget, 1)


@functools.lru_cache(maxsize=64)
def compiled_search(models: common.SearchModels, setting: SearchSetting,
                    options: SearchOptions, step_id: int, eos_id: int):
  """The jitted program of one setting: `(policy_params, prm_params, prompts,
  lengths, rng) -> Candidates`."""
  if setting.method == "best_of_n":
    sampler_config = sampling.SamplerConfig(
        rule=options.rule, stop_at=sampling.StopAt.SOLUTION,
        max_new_tokens=options.max_new_tokens, step_id=step_id, eos_id=eos_id)
    program = functools.partial(best_of_n.best_of_n, models,
                                num_samples=setting.budget, sampler_config=sampler_config)
  else:
    config = beam.BeamConfig(
        budget=setting.budget, beam_width=setting.beam_width, lookahead=setting.lookahead,
        max_rounds=options.max_rounds, max_new_tokens=options.max_new_tokens,
        max_step_tokens=options.max_step_tokens, rule=options.rule, step_id=step_id,
        eos_id=eos_id)
    program = functools.partial(beam.beam_search, models, config=config)
  return jax.jit(program)


def prompt_width(tokenizer: Tokenizer, task: Task, questions: list[str],
                 multiple: int = 16) -> int:
  """One prompt width for a whole sweep: one compiled shape per setting."""
  longest = max(len(tokenizer.encode(task.prompt(q))) + 1 for q in questions)
  return -(-longest // multiple) * multiple


def search_batch(setting: SearchSetting, models: common.SearchModels, policy_params,
                 prm_params, tokenizer: Tokenizer, task: Task, questions: list[str],
                 *, options: SearchOptions, width: int, rng: jax.Array,
                 mesh=None, rules=None) -> list[QuestionResult]:
  """Searches one batch of questions (at most `questions_per_batch`) with `setting`."""
  started = time.time()
  capacity = questions_per_batch(setting.budget, options.rows)
  if len(questions) > capacity:
    raise ValueError(f"{len(questions)} questions for a batch of {capacity}")
  prompts = [[tokenizer.bos_id] + tokenizer.encode(task.prompt(q)) for q in questions]
  prompts += [prompts[-1]] * (capacity - len(prompts))  # pad the last batch
  tokens, lengths = left_pad(prompts, width, tokenizer.pad_id)
  run = compiled_search(models, setting, options, tokenizer.step_id, tokenizer.eos_id)
  with parallel.maybe_sharding(mesh, rules):
    if mesh is not None:
      # Prompts are split over "data" when they divide; the N copies of each
      # (the rows the work is done on) are laid out by the program itself.
      place = (parallel.shard_batch if capacity % mesh.shape["data"] == 0
               else parallel.replicate)
      tokens, lengths = place((tokens, lengths), mesh)
    out = run(policy_params, prm_params, tokens, lengths, rng)
    out = jax.tree.map(np.asarray, out)
  n = setting.budget
  seconds = (time.time() - started) / len(questions)
  results = []
  for q in range(len(questions)):
    rows = range(q * n, (q + 1) * n)
    texts = [_decode(tokenizer, out.tokens[r, :out.lengths[r]]) for r in rows]
    answers = [task.extract_answer(t) for t in texts]
    scores = out.scores[q * n:(q + 1) * n]
    ids, valid = select.answer_ids([answers])
    chosen = int(select.weighted_best_of_n(ids, scores[None], valid)[0])
    results.append(QuestionResult(
        answer=answers[chosen] if chosen >= 0 else None, candidates=texts,
        scores=scores, flops=float(out.flops[q]),
        policy_tokens=int(out.policy_tokens[q]), seconds=seconds))
  return results


def _decode(tokenizer: Tokenizer, tokens: np.ndarray) -> str:
  return tokenizer.decode([int(t) for t in tokens if t != tokenizer.eos_id])
