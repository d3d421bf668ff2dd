"""How a question is shown to the revision model, with its previous attempts.

Format
------
The revision context is up to `MAX_PREVIOUS_ATTEMPTS` earlier attempts,
oldest first, each written as its steps joined by the step delimiter and
closed by an empty line, followed by the task's prompt::

    37+48=85            <- attempt 1
    85*3=250
    250-19=231
    Answer: 231
                        <- an empty line closes an attempt
    37+48=85            <- attempt 2
    ...
    Answer: 236
                        <- (empty line)
    37+48*3-19          <- task.prompt(question): the question and "\n"
    <the model writes its next attempt here, ended by end-of-solution>

The question comes last so that the new attempt starts right after it, as
in the policy's own format: a small model reads the next operand from the
question at the same short distance with or without previous attempts
(with the question first, a 0.33M-parameter revision model lost its place
in the question and fell from 0.55 to 0.21 accuracy on first attempts).

The empty line is unambiguous: an attempt is rebuilt from
`task.split_steps`, which drops empty lines, so no attempt contains one. With
no previous attempt the context is exactly the task's prompt, so the revision
model's first attempt is an ordinary sample. Only characters the task already
uses appear, so the policy's tokenizer encodes every context.

The revision model sees at most the last `MAX_PREVIOUS_ATTEMPTS` attempts of
its chain (the paper's window), so a chain can run longer than that with a
bounded context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ttscale.tasks.base import Task

MAX_PREVIOUS_ATTEMPTS = 4
# Recorded with every revision checkpoint: a model trained on another layout
# of the context is refused, not silently misused.
PROMPT_FORMAT = "attempts, then the question"


def normalized_attempt(task: Task, solution: str) -> str:
  """An attempt as it is shown in context: its steps, one per line."""
  return task.step_delimiter.join(task.split_steps(solution))


def revision_context(task: Task, question: str, previous: Sequence[str],
                     window: int = MAX_PREVIOUS_ATTEMPTS) -> str:
  """The text the revision model continues (see the module docstring).

  Args:
    previous: earlier attempts of the chain, oldest first; only the last
      `window` are shown.
  """
  shown = list(previous)[-window:] if window else []
  delimiter = task.step_delimiter
  return "".join(normalized_attempt(task, attempt) + delimiter + delimiter
                 for attempt in shown) + task.prompt(question)


def edit_distances(target: str, candidates: Sequence[str]) -> np.ndarray:
  """Character Levenshtein distance from each candidate to `target`.

  One dynamic-programming row per character of `target`, vectorised over the
  candidates (padded; a padded column is never read for its own candidate).

  Returns:
    int64 [len(candidates)].
  """
  if not candidates:
    return np.zeros((0,), np.int64)
  lengths = np.array([len(c) for c in candidates])
  width = int(lengths.max())
  codes = np.full((len(candidates), width), -1, np.int64)
  for i, candidate in enumerate(candidates):
    codes[i, :len(candidate)] = [ord(ch) for ch in candidate]
  columns = np.arange(width + 1)
  # row[c, j]: distance between target[:i] and candidate c's first j characters.
  row = np.broadcast_to(columns, (len(candidates), width + 1)).copy()
  for i, ch in enumerate(target, start=1):
    substitute = row[:, :-1] + (codes != ord(ch))
    delete = row[:, 1:] + 1
    best = np.concatenate([np.full((len(candidates), 1), i), np.minimum(substitute, delete)],
                          axis=1)
    # Insertions chain along the row: best[j] = min_k (best[k] + j - k).
    row = np.minimum.accumulate(best - columns, axis=1) + columns
  return row[np.arange(len(candidates)), lengths]


def build_trajectory(correct: Sequence[str], incorrect: Sequence[str],
                     rng: np.random.Generator,
                     max_previous: int = MAX_PREVIOUS_ATTEMPTS) -> dict | None:
  """One training trajectory: k incorrect attempts, then a correct one.

  k ~ Uniform{0..max_previous}, capped by how many incorrect attempts exist.
  The last incorrect attempt in context is the one closest to the chosen
  correct attempt by character edit distance; the others are drawn at random
  (without replacement) from the rest, in random order.

  Args:
    correct, incorrect: the question's sampled solutions, split by outcome.

  Returns:
    {"previous": [k texts, oldest first], "target": the correct text}, or
    None when there is no correct attempt.
  """
  if not correct:
    return None
  target = correct[int(rng.integers(len(correct)))]
  k = min(int(rng.integers(max_previous + 1)), len(incorrect))
  if k == 0:
    return {"previous": [], "target": target}
  closest = int(np.argmin(edit_distances(target, incorrect)))
  rest = [i for i in range(len(incorrect)) if i != closest]
  others = [incorrect[i] for i in rng.permutation(rest)[:k - 1]]
  return {"previous": others + [incorrect[closest]], "target": target}


def build_keep_trajectory(correct: Sequence[str], incorrect: Sequence[str],
                          rng: np.random.Generator,
                          max_previous: int = MAX_PREVIOUS_ATTEMPTS) -> dict | None:
  """A trajectory whose last attempt in context is already correct, kept as is.

  Beside the paper's trajectories (every attempt in context incorrect), these
  teach the revision model that a correct attempt stays: at test time a chain
  does show it its own correct attempts, which the paper's data never does.
  k ~ Uniform{1..max_previous} attempts in context: k − 1 incorrect ones at
  random (as many as exist), then a correct one, which is also the target.

  Returns:
    {"previous": [texts, oldest first], "target": the last of them}, or None
    when there is no correct attempt.
  """
  if not correct:
    return None
  kept = correct[int(rng.integers(len(correct)))]
  k = min(int(rng.integers(1, max_previous + 1)) - 1, len(incorrect))
  others = [incorrect[i] for i in rng.permutation(len(incorrect))[:k]]
  return {"previous": others + [kept], "target": kept}
