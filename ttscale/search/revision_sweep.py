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

from ttscale import outcomes, resumable
from ttscale.data.tokenizer import Tokenizer
from ttscale.models import Network
from ttscale.search import revision_pool, revisions, sampling, select
from ttscale.search.budget import FlopsRate, budget_grid
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
  """One unit of the sweep: the pool of chains (`revision_pool`) of a range of
  questions, from which every split's rows are read."""
  lengths: tuple[int, ...]  # attempts of each chain of the pool (`pool_chain_lengths`)
  first: int                # its questions: first..last-1
  last: int

  @property
  def groups(self) -> list[revision_pool.Group]:
    return revision_pool.length_groups(self.lengths)

  @property
  def file_name(self) -> str:
    """Its file: the pool's shape and the first question (sorts by it)."""
    return f"pool_{resumable.digest(list(self.lengths))}_q{self.first:05d}.json"

  @property
  def description(self) -> dict:
    """What the unit computes, as its file records it (`resumable`)."""
    return {"chain_lengths": list(self.lengths), "first": self.first, "last": self.last}


def sweep_units(splits: list[tuple[int, int]], num_questions: int, rows: int) -> list[Unit]:
  """The units of the sweep: questions in groups of equal size whose pools'
  last rounds (their longest chains only) advance about `rows` chains
  together. Earlier rounds hold more chains, batched by the sampler; a
  round of few chains would leave most of a sampler batch empty."""
  lengths = tuple(revision_pool.pool_chain_lengths(splits))
  per_unit = max(1, rows // lengths.count(max(lengths)))
  num_units = -(-num_questions // per_unit)
  per_unit = -(-num_questions // num_units)
  return [Unit(lengths, first, min(first + per_unit, num_questions))
          for first in range(0, num_questions, per_unit)]


def run_unit(models: dict[str, Network], tokenizer: Tokenizer, task: Task,
             examples: list[Example], unit: Unit, *, sampler_config: sampling.SamplerConfig,
             batch_size: int, key: jax.Array, exact: bool, mesh=None, rules=()) -> dict:
  """The unit's pool of chains, every attempt graded and scored.

  Each group of chains of one length is one `run_chains` call, with its own
  key (`fold_in(key, group)`).

  Args:
    models: {"revision", "revision_verifier", "prm"}: the networks.
    exact: also score by the exact verifier (an oracle: no FLOPs).

  Returns:
    Per group of the pool, [Q][chains][attempts] lists: "answers" (answer or
    None), "correct", "scores" {verifier: ...}, "context_lengths" and
    "token_counts" (of each attempt, for its FLOPs); with a task that names
    its errors (`first_error`), "first_errors" (the kind of each attempt's
    first wrong step, None when right); "prompt_lengths" [Q] (the question's
    plain prompt, as the base PRM reads it); "seconds", "generated_tokens".
  """
  questions = [e.question for e in examples]
  saved = {"answers": [], "correct": [], "scores": {}, "context_lengths": [],
           "token_counts": [], "seconds": 0.0, "generated_tokens": 0,
           "prompt_lengths": [len(revisions.context_tokens(tokenizer, task, q, []))
                              for q in questions]}
  verifier = ExactVerifier(tokenizer, task, questions) if exact else None
  first_error = getattr(task, "first_error", None)
  if first_error is not None:
    saved["first_errors"] = []
  for index, group in enumerate(unit.groups):
    run = revisions.run_chains(
        models["revision"], tokenizer, task, questions, sequential=group.length,
        parallel=group.num_chains, sampler_config=sampler_config, batch_size=batch_size,
        key=jax.random.fold_in(key, index), mesh=mesh, rules=rules)
    scores = {name: revisions.score_attempts(
        models[name], tokenizer, task, questions, run,
        with_context=name == "revision_verifier", batch_size=batch_size, mesh=mesh,
        rules=rules)[0] for name in ("revision_verifier", "prm")}
    if verifier is not None:
      scores["exact"] = np.array([[verifier.score_texts(question, [a.text for a in chain])
                                   for chain in attempts]
                                  for question, attempts in zip(questions, run.attempts,
                                                                strict=True)])
    answers = [[[task.extract_answer(a.text) for a in chain] for chain in question]
               for question in run.attempts]
    saved["answers"].append(answers)
    saved["correct"].append([[[task.grade(a, e.answer) for a in chain] for chain in question]
                             for question, e in zip(answers, examples, strict=True)])
    for name, values in scores.items():
      saved["scores"].setdefault(name, []).append(np.asarray(values).tolist())
    if first_error is not None:
      saved["first_errors"].append([[[first_error(q, a.text) for a in chain] for chain in attempts]
                                    for q, attempts in zip(questions, run.attempts, strict=True)])
    saved["context_lengths"].append([[[len(a.context) for a in chain] for chain in question]
                                     for question in run.attempts])
    saved["token_counts"].append([[[len(a.tokens) for a in chain] for chain in question]
                                  for question in run.attempts])
    saved["seconds"] += run.seconds
    saved["generated_tokens"] += run.generated_tokens
  return saved


def split_view(saved: dict, unit: Unit, sequential: int, chains: int) -> dict:
  """The split (s, p) of a saved pool: the first s attempts of its first p
  chains (`revision_pool.view`), as [Q, p, s] arrays: "answers", "correct",
  "scores" {verifier}, "context_lengths", "token_counts"."""
  groups = unit.groups

  def view(per_group):
    arrays = [np.asarray(a, dtype=object if per_group is saved["answers"] else None)
              for a in per_group]
    return revision_pool.view(groups, arrays, sequential, chains)

  return {"answers": view(saved["answers"]), "correct": view(saved["correct"]),
          "scores": {name: view(values) for name, values in saved["scores"].items()},
          "context_lengths": view(saved["context_lengths"]),
          "token_counts": view(saved["token_counts"])}


def choose(split: dict, selection: str) -> list[tuple[int, int] | None]:
  """Per question of a `split_view`, (chain, attempt) of the chosen answer, or None."""
  answers = split["answers"]
  q, p, s = answers.shape
  ids, valid = select.answer_ids([list(question.reshape(-1)) for question in answers])
  verifier = scored_by(selection)
  if verifier is None:
    flat = np.asarray(select.majority(ids, valid))
  else:
    flat = np.asarray(select.hierarchical_weighted_best_of_n(
        ids.reshape(q, p, s), np.asarray(split["scores"][verifier], np.float32),
        valid.reshape(q, p, s)))
  return [None if f < 0 else divmod(int(f), s) for f in flat]


def split_flops(split: dict, prompt_lengths, rates: dict[str, FlopsRate]) -> dict:
  """{"policy" or verifier: float64 [Q]}: the FLOPs of a `split_view`'s
  attempts (`revision_pool.policy_flops`) and of scoring them (the revision
  verifier reads each attempt after its context, the base PRM after the
  plain prompt; the exact verifier is an oracle: 0)."""
  contexts, tokens = split["context_lengths"], split["token_counts"]
  prompts = np.broadcast_to(np.asarray(prompt_lengths)[:, None, None], tokens.shape)
  return {"policy": revision_pool.policy_flops(rates["revision"], contexts, tokens),
          "revision_verifier": revision_pool.verifier_flops(rates["revision_verifier"],
                                                            contexts, tokens),
          "prm": revision_pool.verifier_flops(rates["prm"], prompts, tokens),
          "exact": np.zeros(len(tokens))}


def unit_rows(saved: dict, unit: Unit, wanted: list[tuple[int, int, int, str]],
              test: list[Example], task: Task, seed: int,
              rates: dict[str, FlopsRate]) -> list[outcomes.Outcome]:
  """The outcome rows `wanted` ((question, s, p, selection)) of a saved pool.

  A row's seconds are the pool's wall time per question, times its split's
  share of the question's policy FLOPs in the pool.
  """
  pool_flops = sum(revision_pool.policy_flops(rates["revision"], np.asarray(contexts),
                                              np.asarray(tokens))
                   for contexts, tokens in zip(saved["context_lengths"], saved["token_counts"],
                                               strict=True))
  seconds_per_question = saved["seconds"] / (unit.last - unit.first)
  views, chosen, flops = {}, {}, {}
  rows = []
  for i, sequential, chains, sel in wanted:
    split = (sequential, chains)
    if split not in views:
      views[split] = split_view(saved, unit, sequential, chains)
      flops[split] = split_flops(views[split], saved["prompt_lengths"], rates)
    if (split, sel) not in chosen:
      chosen[(split, sel)] = choose(views[split], sel)
    q = i - unit.first
    pick = chosen[(split, sel)][q]
    answer = None if pick is None else views[split]["answers"][q, pick[0], pick[1]]
    verifier = scored_by(sel)
    row_flops = float(flops[split]["policy"][q]
                      + (flops[split][verifier][q] if verifier else 0.0))
    share = float(flops[split]["policy"][q]) / max(float(pool_flops[q]), 1.0)
    rows.append(outcomes.Outcome(
        question_index=i, level=test[i].level, method="revisions",
        params=row_params(sequential, chains, sel), budget=sequential * chains, seed=seed,
        answer=answer, correct=task.grade(answer, test[i].answer),
        generations=sequential * chains, flops=row_flops,
        seconds=seconds_per_question * share))
  return rows
