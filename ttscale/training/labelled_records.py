"""Labelled solutions, the verifiers' training data: one record per solution
or attempt, with its tokens, step ends and labels.

A record holds "question_index", "question", "answer", "prompt" (tokens),
"tokens" (the solution's, int), "step_ends", "ended", "correct" and, for the
PRM's, "level", "holdout", "mc_labels" (soft, per step, or None) and
"exact_labels" (the task's, or None).
"""

from __future__ import annotations

import numpy as np

from ttscale.data.tokenizer import Tokenizer
from ttscale.data.verifier_data import find_step_ends
from ttscale.search import revisions
from ttscale.tasks.base import Example, Task
from ttscale.training import prm_labels


def holdout_questions(num_questions: int, fraction: float, seed: int) -> set[int]:
  """The question indices held out for early stopping and calibration."""
  count = int(round(num_questions * fraction))
  return set(np.random.default_rng([seed, 1]).permutation(num_questions)[:count].tolist())


def prompt_tokens(tokenizer: Tokenizer, task: Task, question: str) -> list[int]:
  """A question's prompt as the policy reads it: bos, then the task's prompt."""
  return [tokenizer.bos_id] + tokenizer.encode(task.prompt(question))


def labelled_records(tokenizer: Tokenizer, task: Task, examples: list[Example],
                     samples: dict, holdout: set[int], counts: dict | None,
                     num_rollouts: int) -> tuple[list[dict], list[prm_labels.SolutionToLabel]]:
  """One record per sampled solution, with exact step labels and, given the
  rollout `counts`, soft ones (None without); and the solutions to label.

  Args:
    samples: {"tokens": [question][sample] solution tokens, "ended":
      [question][sample] bool} (a sample pool).
    counts: `prm_labels.count_correct_rollouts(...)["correct"]`, or None.
  """
  records, to_label = [], []
  for q, example in enumerate(examples):
    prompt = prompt_tokens(tokenizer, task, example.question)
    for tokens, ended in zip(samples["tokens"][q], samples["ended"][q], strict=True):
      to_label.append(prm_labels.solution_to_label(
          prompt, np.asarray(tokens, np.int32), ended, tokenizer, task, example.answer))
      records.append({"question_index": q, "question": example.question,
                      "answer": example.answer, "level": example.level,
                      "holdout": q in holdout})
  if counts is None:
    soft = [[None] * len(s.step_ends) for s in to_label]
  else:
    soft = prm_labels.step_labels(to_label, counts, num_rollouts)
  for record, solution, labels in zip(records, to_label, soft, strict=True):
    text = tokenizer.decode([t for t in solution.tokens if t != tokenizer.eos_id])
    exact = task.step_labels(record["question"], text)
    record.update(prompt=solution.prompt, tokens=solution.tokens,
                  step_ends=solution.step_ends, ended=solution.ended,
                  correct=solution.correct, mc_labels=labels,
                  exact_labels=None if exact is None else exact[:len(solution.step_ends)])
  return records, to_label


def chain_records(tokenizer: Tokenizer, task: Task, examples: list[Example],
                  chains: revisions.Chains) -> list[dict]:
  """One record per attempt of revision chains: its context (the previous
  attempts and the question) as the prompt, its outcome as the label."""
  records = []
  for q, example in enumerate(examples):
    for c, chain in enumerate(chains.attempts[q]):
      for j, attempt in enumerate(chain):
        tokens = [int(t) for t in attempt.tokens]
        records.append({
            "question_index": q, "chain": c, "attempt": j, "question": example.question,
            "answer": example.answer, "prompt": attempt.context, "tokens": tokens,
            "step_ends": find_step_ends(tokens, tokenizer),
            "ended": attempt.ended,
            "correct": task.grade(task.extract_answer(attempt.text), example.answer)})
  return records
