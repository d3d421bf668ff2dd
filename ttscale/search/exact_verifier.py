"""The exact verifier: a perfect PRM for tasks whose steps can be checked exactly.

A solution prefix scores 1 when it has at least one step and every step of it
is exactly right (`Task.step_labels`), else 0. Search programs call it where
they would call the learned PRM, through a host callback
(`jax.pure_callback`), so best-of-N, beam, lookahead and DVTS run unchanged
around it. It is the engine's own check: with it, search shows what a perfect
verifier buys, and every gap between it and the learned PRM belongs to the
learned PRM. It costs no FLOPs (an oracle, not a model).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttscale.data.tokenizer import Tokenizer
from ttscale.tasks.base import Task


class ExactVerifier:
  """Scores prefixes of the given questions' solutions by the task's exact labels.

  Hashed by identity (it keys compiled programs): build one per sweep.
  """

  def __init__(self, tokenizer: Tokenizer, task: Task, questions: Sequence[str]):
    """Raises ValueError when the task has no exact step labels."""
    if questions and task.step_labels(questions[0], "") is None:
      raise ValueError(f"task {task.name!r} has no exact step labels: the exact verifier "
                       "needs them (search.verifiers=('prm',))")
    self.tokenizer, self.task = tokenizer, task
    # Programs see token ids: each question is found by its prompt's tokens.
    self._questions = {self.prompt_tokens(q): q for q in questions}

  def prompt_tokens(self, question: str) -> tuple[int, ...]:
    return (self.tokenizer.bos_id, *self.tokenizer.encode(self.task.prompt(question)))

  def score_texts(self, question: str, solutions: Sequence[str]) -> np.ndarray:
    """float32 [len(solutions)]: 1 where every step is exactly right."""
    labels = [self.task.step_labels(question, text) for text in solutions]
    return np.array([bool(steps) and all(steps) for steps in labels], np.float32)

  def _host_scores(self, prompts, prompt_lengths, tokens, lengths, copies: int):
    prompts, prompt_lengths = np.asarray(prompts), np.asarray(prompt_lengths)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    scores = np.zeros(tokens.shape[0], np.float32)
    width = prompts.shape[1]
    for q in range(prompts.shape[0]):
      key = tuple(int(t) for t in prompts[q, width - prompt_lengths[q]:])
      question = self._questions.get(key)
      if question is None:
        raise ValueError("exact verifier: a prompt of no question it was built with")
      rows = range(q * copies, (q + 1) * copies)
      texts = [self.tokenizer.decode([int(t) for t in tokens[r, :lengths[r]]
                                      if t != self.tokenizer.eos_id]) for r in rows]
      scores[q * copies:(q + 1) * copies] = self.score_texts(question, texts)
    return scores

  def scores(self, prompts: jax.Array, prompt_lengths: jax.Array, tokens: jax.Array,
             lengths: jax.Array) -> jax.Array:
    """Exact scores of every row, callable inside a compiled program.

    Args:
      prompts: int32 [Q, P] left-padded; prompt_lengths: int32 [Q].
      tokens: int32 [Q·copies, T] solutions so far, question-major;
        lengths: int32 [Q·copies].

    Returns:
      float32 [Q·copies].
    """
    copies = tokens.shape[0] // prompts.shape[0]

    def host(*arrays):
      return self._host_scores(*arrays, copies=copies)

    shape = jax.ShapeDtypeStruct((tokens.shape[0],), jnp.float32)
    return jax.pure_callback(host, shape, prompts, prompt_lengths, tokens, lengths,
                             vmap_method="sequential")
