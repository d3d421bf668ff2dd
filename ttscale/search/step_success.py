"""How often the policy writes each reference step right, given the reference
prefix before it: the per-step success rates that bound what step-level
search with a perfect verifier can do (`scaling.search_checks.perfect_search`).

Only for tasks with exact step labels (`Task.step_labels` not None).
"""

from __future__ import annotations

import jax
import numpy as np

from ttscale.data.tokenizer import Tokenizer
from ttscale.models import Network
from ttscale.search import generate, sampling
from ttscale.tasks.base import Example, Task


def step_success_rates(policy: Network, tokenizer: Tokenizer, task: Task,
                       examples: list[Example], *, num_samples: int,
                       rule: sampling.SamplingRule, max_step_tokens: int,
                       batch_size: int, seed: int, mesh=None, rules=None
                       ) -> list[list[float]]:
  """For each example and each step s of its reference solution: the fraction of
  `num_samples` one-step continuations of (prompt + reference steps before s)
  that the task's exact labels call right.

  Returns:
    [len(examples)][steps of that reference solution] rates in [0, 1].

  Raises:
    ValueError: the task has no exact step labels.
  """
  contexts, owners = [], []
  for i, example in enumerate(examples):
    steps = task.split_steps(example.solution)
    if task.step_labels(example.question, example.solution) is None:
      raise ValueError("step success rates need a task with exact step labels "
                       f"(Task.step_labels); {type(task).__name__} has none")
    for s in range(len(steps)):
      prefix = task.prompt(example.question) + "".join(step + "\n" for step in steps[:s])
      contexts.append([tokenizer.bos_id] + tokenizer.encode(prefix))
      owners.append((i, steps[:s]))
  config = sampling.SamplerConfig(rule=rule, stop_at=sampling.StopAt.STEP,
                                  max_new_tokens=max_step_tokens,
                                  step_id=tokenizer.step_id, eos_id=tokenizer.eos_id)
  out = generate.sample_continuations(policy, contexts, sampler_config=config,
                                      batch_size=batch_size, key=jax.random.key(seed),
                                      copies=num_samples, mesh=mesh, rules=rules)
  rates: list[list[float]] = [[] for _ in examples]
  for c, (i, before) in enumerate(owners):
    right = []
    for tokens in out.tokens[c * num_samples:(c + 1) * num_samples]:
      step = tokenizer.decode([t for t in tokens.tolist()
                               if t not in (tokenizer.step_id, tokenizer.eos_id)])
      # Judge the step in place: labels are a prefix property, so the
      # candidate is right iff its own label (index len(before)) is True.
      labels = task.step_labels(examples[i].question, "\n".join([*before, step]))
      right.append(len(labels) > len(before) and labels[len(before)])
    rates[i].append(float(np.mean(right)))
  return rates
