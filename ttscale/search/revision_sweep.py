"""The revision sweep: every (s, p) split of every budget, cut in units of
questions, each unit's attempts graded and scored, rows chosen by each selector.

A unit (one split, some questions) runs p chains of s revisions per
question (`revisions.run_chains`), grades every attempt and scores it by the
revision verifier, the base PRM and, when swept, the exact verifier; the
saved unit gives one outcome row per (question, selection).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ttscale import outcomes
from ttscale.data.tokenizer import Tokenizer
from ttscale.models import Network
from ttscale.search import revisions, sampling, select
from ttscale.search.budget import budget_grid
from ttscale.search.exact_verifier import ExactVerifier
from ttscale.tasks.base import Example, Task

SELECTORS = ("hierarchical", "hierarchical_prm", "majority")
# How each selection's rows score attempts (None: majority vote, no verifier)
# and what their params say after the split. The exact verifier (an engine
# check, kept out of selection) is swept when `search.verifiers` has it.
_SELECTIONS = {"hierarchical": ("revision_verifier", "select=hierarchical"),
               "hierarchical_prm": ("prm", "select=hierarchical_prm"),
               "majority": (None, "select=majority"),
               "hierarchical_exact": ("exact", "select=hierarchical,verifier=exact")}


def selections(verifiers) -> list[str]:
  """The revision rows' selections: `SELECTORS`, and the exact verifier's
  hierarchical selection when `verifiers` (`search.verifiers`) has "exact"."""
  return [*SELECTORS, *(["hierarchical_exact"] if "exact" in verifiers else [])]


def row_params(sequential: int, chains: int, selection: str) -> str:
  """A revision row's params, e.g. "s=4,p=4,select=hierarchical"."""
  return f"s={sequential},p={chains},{_SELECTIONS[selection][1]}"


def scored_by(selection: str) -> str | None:
  """The verifier whose scores a selection reads (None: majority vote)."""
  return _SELECTIONS[selection][0]


def sweep_splits(sweep_config) -> list[tuple[int, int]]:
  """The (s, p) splits to run: `splits` if given, else every split of every budget."""
  grid = budget_grid(sweep_config.max_budget, "sweep_revisions.max_budget")
  if sweep_config.splits:
    return revisions.parse_splits(sweep_config.splits, grid)
  return [split for budget in grid for split in revisions.splits(budget)]


@dataclasses.dataclass(frozen=True)
class Unit:
  """One unit of the sweep: a split and a range of questions."""
  sequential: int  # s: attempts per chain
  chains: int      # p: chains per question
  first: int       # its questions: first..last-1
  last: int

  @property
  def budget(self) -> int:
    return self.sequential * self.chains

  @property
  def file_name(self) -> str:
    """Its file: budget, split and first question (sorts by them)."""
    return f"N{self.budget:04d}_s{self.sequential:04d}_q{self.first:05d}.json"

  @property
  def description(self) -> dict:
    """What the unit computes, as its file records it (`resumable`)."""
    return {"sequential": self.sequential, "chains": self.chains, "first": self.first,
            "last": self.last}


def sweep_units(splits: list[tuple[int, int]], num_questions: int, rows: int) -> list[Unit]:
  """The units of the sweep, in order: per split, questions in groups that
  fill about `rows` chains."""
  units = []
  for sequential, chains in splits:
    per_unit = max(1, rows // chains)
    units += [Unit(sequential, chains, first, min(first + per_unit, num_questions))
              for first in range(0, num_questions, per_unit)]
  return units


def unit_first_question(file_name: str) -> int:
  """The first question of a unit, from its file name."""
  return int(file_name.rsplit("_q", 1)[1].removesuffix(".json"))


def run_unit(models: dict[str, Network], tokenizer: Tokenizer, task: Task,
             examples: list[Example], unit: Unit, *, sampler_config: sampling.SamplerConfig,
             batch_size: int, key: jax.Array, exact: bool, mesh=None, rules=()) -> dict:
  """Chains for the unit's questions, every attempt graded and scored.

  Args:
    models: {"revision", "revision_verifier", "prm"}: the networks.
    exact: also score by the exact verifier (an oracle: no FLOPs).

  Returns:
    {"answers": [Q][p][s] answer or None, "correct": [Q][p][s] bool,
     "scores": {verifier: [Q][p][s]}, "flops": {"policy" or verifier: [Q]},
     "seconds", "generated_tokens"}.
  """
  questions = [e.question for e in examples]
  run = revisions.run_chains(
      models["revision"], tokenizer, task, questions, sequential=unit.sequential,
      parallel=unit.chains, sampler_config=sampler_config, batch_size=batch_size, key=key,
      mesh=mesh, rules=rules)
  scored = {name: revisions.score_attempts(
      models[name], tokenizer, task, questions, run,
      with_context=name == "revision_verifier", batch_size=batch_size, mesh=mesh,
      rules=rules) for name in ("revision_verifier", "prm")}
  if exact:
    verifier = ExactVerifier(tokenizer, task, questions)
    scored["exact"] = (np.array([[verifier.score_texts(question, [a.text for a in chain])
                                  for chain in attempts]
                                 for question, attempts in zip(questions, run.attempts,
                                                               strict=True)]),
                       np.zeros(len(questions)))
  answers = [[[task.extract_answer(a.text) for a in chain] for chain in question]
             for question in run.attempts]
  return {
      "answers": answers,
      "correct": [[[task.grade(a, e.answer) for a in chain] for chain in question]
                  for question, e in zip(answers, examples, strict=True)],
      "scores": {name: s.tolist() for name, (s, _) in scored.items()},
      "flops": {"policy": run.flops.tolist(),
                **{name: f.tolist() for name, (_, f) in scored.items()}},
      "seconds": run.seconds, "generated_tokens": run.generated_tokens,
  }


def choose(unit: dict, selection: str) -> list[tuple[int, int] | None]:
  """Per question of a saved unit, (chain, attempt) of the chosen answer, or None."""
  answers = unit["answers"]
  q, p, s = len(answers), len(answers[0]), len(answers[0][0])
  ids, valid = select.answer_ids([[a for chain in question for a in chain]
                                  for question in answers])
  verifier = scored_by(selection)
  if verifier is None:
    flat = np.asarray(select.majority(ids, valid))
  else:
    scores = np.asarray(unit["scores"][verifier])
    flat = np.asarray(select.hierarchical_weighted_best_of_n(
        ids.reshape(q, p, s), scores, valid.reshape(q, p, s)))
  return [None if f < 0 else divmod(int(f), s) for f in flat]


def unit_flops(unit: dict, selection: str, q: int) -> float:
  """FLOPs of question `q`'s row: the chains and the verifier its selection read."""
  verifier = scored_by(selection)
  return unit["flops"]["policy"][q] + (unit["flops"][verifier][q] if verifier else 0.0)


def unit_rows(saved: dict, unit: Unit, wanted: list[tuple[int, str]], test: list[Example],
              task: Task, seed: int) -> list[outcomes.Outcome]:
  """The outcome rows `wanted` ((question, selection) pairs) of a saved unit."""
  chosen = {sel: choose(saved, sel) for sel in {sel for _, sel in wanted}}
  rows = []
  for i, sel in wanted:
    q = i - unit.first
    pick = chosen[sel][q]
    answer = None if pick is None else saved["answers"][q][pick[0]][pick[1]]
    rows.append(outcomes.Outcome(
        question_index=i, level=test[i].level, method="revisions",
        params=row_params(unit.sequential, unit.chains, sel), budget=unit.budget, seed=seed,
        answer=answer, correct=task.grade(answer, test[i].answer), generations=unit.budget,
        flops=unit_flops(saved, sel, q), seconds=saved["seconds"] / (unit.last - unit.first)))
  return rows
