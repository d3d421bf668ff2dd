"""Monte-Carlo step labels for the PRM, from rollouts of the policy itself.

For a sampled solution, the label of step i is the fraction of `num_rollouts`
continuations, sampled by the same policy from the prefix that ends with step
i, whose final answer is correct: the policy's reward-to-go from that prefix
(Math-Shepherd style; no human labels). A step that ends the solution (its
last token is end-of-solution) needs no rollout: its label is whether the
solution is correct.

Steps are found in token space (`data.verifier_data.find_step_ends`): a step
is a run of tokens ending in the step delimiter or the end-of-solution token,
and not blank. The step end (the index of that last token) is where the PRM
reads its score.

Identical prefixes are rolled out once: two samples of a question often
share their first steps token for token, and the label is a property of the
prefix (the policy's chance of success from it), so they share one estimate
from `num_rollouts` rollouts instead of drawing two (on the embedded task a
third of all prefixes are such repeats).

The labelling is resumable (`ttscale.resumable`). Prefixes are cut into
parts of a fixed size; a part's rollouts draw from `fold_in(key(seed), part)`
and its counts are written to `parts/<part>.json` atomically with a digest of
its prefixes, so a killed run loses at most the part in flight, a re-run
produces the same labels, and a part file of other prefixes is refused.
"""

from __future__ import annotations

import dataclasses
import time
import zlib

import jax
import numpy as np

from ttscale import resumable
from ttscale.data.tokenizer import Tokenizer
from ttscale.data.verifier_data import find_step_ends
from ttscale.models import Network
from ttscale.progress import Progress
from ttscale.search import generate, sampling
from ttscale.tasks.base import Task

# Rollout contexts are padded to a multiple of this: few widths, few compiled
# programs, and not much cache wasted on padding (decoding reads every slot).
_WIDTH_MULTIPLE = 32


@dataclasses.dataclass(frozen=True)
class SolutionToLabel:
  """A sampled solution and what the labels need to know about it."""
  prompt: list[int]    # bos + prompt tokens
  tokens: list[int]    # solution tokens, the end-of-solution token included if sampled
  step_ends: list[int]  # index into `tokens` of each step's last token
  ended: bool          # the solution has its end-of-solution token
  correct: bool        # its final answer is right


def rollout_prefixes(solutions: list[SolutionToLabel]) -> list[tuple[int, int]]:
  """(solution, step) pairs that need rollouts: steps not ending the solution."""
  pairs = []
  for s, solution in enumerate(solutions):
    for i, end in enumerate(solution.step_ends):
      if not (solution.ended and end == len(solution.tokens) - 1):
        pairs.append((s, i))
  return pairs


def _width_bucket(solution: SolutionToLabel, step: int) -> int:
  """The padded-width bucket of the context that ends with `step`."""
  return -(-(len(solution.prompt) + solution.step_ends[step] + 1) // _WIDTH_MULTIPLE)


def _rollout_order(solutions, pairs) -> list[int]:
  """An order of `pairs` that batches prefixes of similar shape together.

  By context width bucket (one compiled program each), then by the number of
  steps the sampled solution still had after the prefix (longest first), so
  rows of one batch tend to finish together and the decode loop wastes few
  trips waiting for one long rollout.
  """
  def key(k):
    s, i = pairs[k]
    return (_width_bucket(solutions[s], i), -(len(solutions[s].step_ends) - i), k)
  return sorted(range(len(pairs)), key=key)


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  num_rollouts: int
  prefixes_per_part: int
  batch_size: int
  sampler_config: sampling.SamplerConfig
  seed: int


def count_correct_rollouts(policy: Network, tokenizer: Tokenizer, task: Task,
                           solutions: list[SolutionToLabel], answers: list[str],
                           settings: RolloutSettings, parts_dir: str, *,
                           mesh=None, rules=None, log=print) -> dict:
  """Runs the rollouts of every prefix, part by part, resuming finished parts.

  Args:
    solutions: the sampled solutions; `answers[s]` is solution s's reference.
    parts_dir: where `<part>.json` files go (and are found on a re-run).

  Returns:
    {"correct": {(solution, step): number of correct rollouts} for every
     prefix (repeats share their first occurrence's count), "num_prefixes",
     "num_distinct_prefixes": of them rolled out, "generated_tokens",
     "seconds": of the rollouts run now, "total_generated_tokens",
     "total_seconds": of every part, also those an interrupted run wrote,
     "parts_resumed": parts found on disk, "num_parts"}.
  """
  every_pair = rollout_prefixes(solutions)
  first_of: dict[tuple, tuple[int, int]] = {}
  for s, i in every_pair:
    first_of.setdefault(_prefix_key(solutions[s], i, answers[s]), (s, i))
  pairs = list(first_of.values())
  order = _rollout_order(solutions, pairs)

  # Parts never mix width buckets, so each is one fixed-shape program.
  def bucket(k):
    s, i = pairs[k]
    return _width_bucket(solutions[s], i)

  parts: list[list[int]] = []
  for k in order:
    if not parts or len(parts[-1]) == settings.prefixes_per_part or \
        bucket(parts[-1][0]) != bucket(k):
      parts.append([])
    parts[-1].append(k)

  rows_per_part = [len(p) * settings.num_rollouts for p in parts]
  batches = [-(-rows // settings.batch_size) for rows in rows_per_part]
  progress = Progress("prm_labels (rollouts)", sum(batches), log)

  def run(part: resumable.Part) -> dict:
    number, ks = part.item
    started = time.time()
    out, remaining = _roll_out_part(policy, solutions, [pairs[k] for k in ks],
                                    settings, number, mesh, rules, progress)
    counts = []
    for j, k in enumerate(ks):
      s, i = pairs[k]
      prefix = solutions[s].tokens[:solutions[s].step_ends[i] + 1]
      rollouts = out.tokens[j * settings.num_rollouts:(j + 1) * settings.num_rollouts]
      # A rollout keeps only what is left of the solution's token budget.
      counts.append(sum(
          _is_correct(prefix + r[:remaining[j]].tolist(), tokenizer, task, answers[s])
          for r in rollouts))
    return {"num_correct": counts, "generated_tokens": out.num_generated_tokens,
            "seconds": time.time() - started}

  correct: dict[tuple[int, int], int] = {}

  def take_counts(number: int, saved: dict, resumed: bool) -> None:
    counts = saved["num_correct"]
    if len(counts) != len(parts[number]):
      raise ValueError(f"{resumable.part_path(parts_dir, number)}: {len(counts)} counts for "
                       f"a part of {len(parts[number])} prefixes; the workdir is damaged: "
                       f"delete {parts_dir}")
    for k, count in zip(parts[number], counts, strict=True):
      correct[pairs[k]] = count
    if resumed:  # a part run now counted its batches as it sampled them
      progress.update(batches[number])

  # A part is described by its prefixes (`_prefixes_digest`): parts cut
  # otherwise (another setup, or a version that cut them otherwise) are refused.
  mapped = resumable.map_parts(
      [resumable.Part(resumable.part_path(parts_dir, number),
                      _prefixes_digest([_prefix_key(solutions[s], i, answers[s])
                                        for s, i in (pairs[k] for k in part)]),
                      (number, part))
       for number, part in enumerate(parts)],
      run, key="prefixes", delete=parts_dir, on_part=take_counts)
  ran = [saved for saved, resumed in zip(mapped.results, mapped.resumed, strict=True)
         if not resumed]
  generated = sum(saved["generated_tokens"] for saved in ran)
  seconds = sum(saved["seconds"] for saved in ran)
  for s, i in every_pair:
    correct[(s, i)] = correct[first_of[_prefix_key(solutions[s], i, answers[s])]]
  return {"correct": correct, "num_prefixes": len(every_pair),
          "num_distinct_prefixes": len(pairs), "generated_tokens": generated,
          "seconds": seconds,
          "total_generated_tokens": sum(saved["generated_tokens"] for saved in mapped.results),
          "total_seconds": sum(saved["seconds"] for saved in mapped.results),
          "parts_resumed": mapped.num_resumed, "num_parts": len(parts)}


def _prefix_key(solution: SolutionToLabel, step: int, answer: str) -> tuple:
  """What a rollout from the prefix ending with `step` depends on."""
  return (tuple(solution.prompt), tuple(solution.tokens[:solution.step_ends[step] + 1]), answer)


def _prefixes_digest(keys: list[tuple]) -> str:
  """Names a part's prefixes (`_prefix_key`s), so that a part file written for
  other prefixes (another setup or version) is refused, not misread."""
  return f"{zlib.crc32(repr(keys).encode()):08x}"


def _roll_out_part(policy, solutions, pairs, settings: RolloutSettings, number: int,
                   mesh, rules, progress):
  """Samples `num_rollouts` continuations of every prefix of one part.

  A rollout continues a solution, so it has only the rest of the solution's
  token budget (`max_new_tokens` minus the prefix's solution tokens). The part
  samples up to the largest remainder among its prefixes, rounded up to a
  multiple of `_WIDTH_MULTIPLE` (few distinct programs); the caller cuts each
  rollout to its own remainder.

  Returns:
    (`Continuations` with rows in prefix order, rollouts of a prefix
    consecutive; the token budget left for each prefix [len(pairs)]).
  """
  budget = settings.sampler_config.max_new_tokens
  contexts, remaining = [], []
  for s, i in pairs:
    solution = solutions[s]
    used = solution.step_ends[i] + 1
    contexts.append(solution.prompt + solution.tokens[:used])
    remaining.append(max(budget - used, 0))
  part_budget = min(budget, -(-max(max(remaining), 1) // _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE)
  width = -(-max(len(c) for c in contexts) // _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE
  out = generate.sample_continuations(
      policy, contexts,
      sampler_config=dataclasses.replace(settings.sampler_config, max_new_tokens=part_budget),
      batch_size=settings.batch_size,
      key=jax.random.fold_in(jax.random.key(settings.seed), number),
      width=width, copies=settings.num_rollouts,
      # In `_rollout_order`'s order: by steps left, so a batch's rows end together.
      shortest_first=False, mesh=mesh, rules=rules, progress=progress)
  return out, remaining


def _is_correct(tokens: list[int], tokenizer: Tokenizer, task: Task, reference: str) -> bool:
  text = tokenizer.decode([t for t in tokens if t != tokenizer.eos_id])
  return task.grade(task.extract_answer(text), reference)


def solution_to_label(prompt: list[int], tokens: np.ndarray, ended: bool,
                      tokenizer: Tokenizer, task: Task, reference: str) -> SolutionToLabel:
  """Wraps one sampled solution (tokens without the end token) for labelling."""
  tokens = [int(t) for t in tokens] + ([tokenizer.eos_id] if ended else [])
  return SolutionToLabel(prompt=prompt, tokens=tokens,
                         step_ends=find_step_ends(tokens, tokenizer), ended=ended,
                         correct=_is_correct(tokens, tokenizer, task, reference))


def step_labels(solutions: list[SolutionToLabel], correct: dict, num_rollouts: int
                ) -> list[list[float]]:
  """Soft labels per step: correct rollouts / num_rollouts, or the outcome
  for a step that ends its solution."""
  labels = []
  for s, solution in enumerate(solutions):
    row = []
    for i, _ in enumerate(solution.step_ends):
      if (s, i) in correct:
        row.append(correct[(s, i)] / num_rollouts)
      else:
        row.append(float(solution.correct))
    labels.append(row)
  return labels
