"""Fixed-shape arrays for a verifier, from solutions with their step ends.

A step of a solution is found in token space (`find_step_ends`): a run of
tokens ending in the step delimiter or the end-of-solution token, and not
blank. Its step end, the index of that last token, is where a verifier reads
its score, in training (`training.prm_labels` labels each step) and in
scoring (`search.scoring`).

`verifier_arrays` puts one solution per row: its prompt and solution tokens from column 0, padding
after them (causal attention keeps padding out of the real tokens' view), and
per step the position of its last token with a target there:

- `target="steps"` (PRM): every step, with its Monte-Carlo label (the
  fraction of rollouts that ended correct);
- `target="hard_steps"` (PRM): every step, 1 when any rollout ended correct
  (Math-Shepherd's hard estimate), else 0;
- `target="outcome"` (ORM): the last step of each finished solution, with
  whether the solution is correct. Unfinished (truncated) solutions are left
  out: they have no outcome.
- `target=None` (scoring): every step of every row, no targets; rows stay in
  the order given, one per record.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ttscale.data.tokenizer import Tokenizer

TARGETS = ("steps", "hard_steps", "outcome")


def find_step_ends(tokens, tokenizer: Tokenizer) -> list[int]:
  """Indices of the last token of every non-blank step of `tokens`.

  A step ends with the step delimiter or the end-of-solution token. A blank
  step (nothing but whitespace before its delimiter) is not a step, as in
  `Task.split_steps`; trailing tokens without a delimiter (a truncated
  solution) are not a finished step.
  """
  ends, start = [], 0
  for index, token in enumerate(tokens):
    if token in (tokenizer.step_id, tokenizer.eos_id):
      if tokenizer.decode(list(tokens[start:index])).strip():
        ends.append(index)
      start = index + 1
  return ends


def verifier_arrays(records: Sequence[dict], target: str | None,
                    width: int | None = None,
                    max_steps: int | None = None) -> dict[str, np.ndarray]:
  """Encodes labelled solutions (records of `training.prm_labels`) as arrays.

  Args:
    records: dicts with `prompt` and `tokens` (lists of ids), `step_ends`
      (indices into `tokens`), `mc_labels` (one per step), `ended`, `correct`.
    target: "steps", "hard_steps", "outcome" or None (see the module docstring).
    width, max_steps: array sizes (default: the longest row, the most steps).

  Returns:
    inputs int32 [n, W], positions int32 [n, W], token_mask float32 [n, W],
    step_ends int32 [n, S], step_mask float32 [n, S], targets float32 [n, S].

  Raises:
    ValueError: unknown target, or a row longer than `width`.
  """
  if target is not None and target not in TARGETS:
    raise ValueError(f"verifier target {target!r}: expected one of {TARGETS}")
  if target == "outcome":
    records = [r for r in records if r["ended"] and r["step_ends"]]
  elif target in ("steps", "hard_steps"):
    records = [r for r in records if r["step_ends"]]
  lengths = [len(r["prompt"]) + len(r["tokens"]) for r in records]
  width = width or max(lengths)
  if target == "outcome":
    max_steps = 1
  else:
    max_steps = max_steps or max([1, *(len(r["step_ends"]) for r in records)])
  n = len(records)
  arrays = {
      "inputs": np.zeros((n, width), np.int32),
      "positions": np.tile(np.arange(width, dtype=np.int32), (n, 1)),
      "token_mask": np.zeros((n, width), np.float32),
      "step_ends": np.zeros((n, max_steps), np.int32),
      "step_mask": np.zeros((n, max_steps), np.float32),
      "targets": np.zeros((n, max_steps), np.float32),
  }
  for row, (record, length) in enumerate(zip(records, lengths, strict=True)):
    if length > width:
      raise ValueError(f"a labelled solution of {length} tokens does not fit width={width}")
    arrays["inputs"][row, :length] = record["prompt"] + record["tokens"]
    arrays["token_mask"][row, :length] = 1.0
    ends = np.asarray(record["step_ends"], np.int32) + len(record["prompt"])
    if target != "outcome" and len(ends) > max_steps:
      raise ValueError(f"a labelled solution of {len(ends)} steps does not fit "
                       f"max_steps={max_steps}")
    if target != "outcome":
      arrays["step_ends"][row, :len(ends)] = ends
      arrays["step_mask"][row, :len(ends)] = 1.0
      if target == "steps":
        arrays["targets"][row, :len(ends)] = record["mc_labels"]
      elif target == "hard_steps":
        arrays["targets"][row, :len(ends)] = np.asarray(record["mc_labels"]) > 0
    else:
      arrays["step_ends"][row, 0] = ends[-1]
      arrays["step_mask"][row, 0] = 1.0
      arrays["targets"][row, 0] = float(record["correct"])
  if target is None:
    del arrays["targets"]
  return arrays
