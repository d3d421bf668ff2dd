"""The revision stages: data, the revision model, its verifier, and the sweep.

- `revision_data`: `samples_per_question` policy samples for each of the
  first `num_questions` training questions (in resumable parts); per question,
  `trajectories_per_question` trajectories of k ~ Uniform{0..4} incorrect
  attempts then a correct one (`tasks/revision.py`).
- `train_revision`: the policy fine-tuned on the trajectories, loss on the
  final (correct) attempt only; early stopping on held-out questions keeps
  the lowest-validation-loss checkpoint in `revision/best`.
- `train_revision_verifier`: chains of the revision model on other training
  questions, each attempt labelled by its outcome; a value model (from the
  revision model's trunk) trained on them with the previous attempts in
  context. Its held-out AUC is compared with the base PRM's, which sees the
  question only.
- `sweep_revisions`: every (s, p) split of every budget, three selectors,
  rows appended to `outcomes/revisions.jsonl` (the outcome table's revision
  part: same row format as `outcomes/search.jsonl`).
"""

from __future__ import annotations

import collections
import os
import zlib

import jax
import numpy as np
from etils import epath

from ttscale import io_utils, outcomes, parallel, resumable
from ttscale.data import batching
from ttscale.data.verifier_data import find_step_ends
from ttscale.models import policy_forward_fn
from ttscale.pipeline.context import Context
from ttscale.pipeline.verifier_stages import holdout_questions, train_value_model
from ttscale.progress import Progress
from ttscale.report import revision_figure
from ttscale.scaling import revision_analysis, verifier_quality
from ttscale.search import generate, revisions, sampling, scoring, select
from ttscale.search.budget import budget_grid
from ttscale.search.exact_verifier import ExactVerifier
from ttscale.tasks.revision import build_keep_trajectory, build_trajectory, revision_context
from ttscale.training.objectives import next_token_loss
from ttscale.training.trainer import EarlyStopping, train

REVISION_TABLE = ("outcomes", "revisions.jsonl")
ATTEMPTS = ("revisions", "attempts.json")
# Later attempts are judged against the first at this attempt (or the chains'
# last, when shorter): the paper's window of previous attempts is 4.
GAIN_ATTEMPT = 4
SELECTORS = ("hierarchical", "hierarchical_prm", "majority")
# How each selection's rows score attempts (None: majority vote, no verifier)
# and what their params say after the split. The exact verifier (an engine
# check, kept out of selection) is swept when `search.verifiers` has it.
_SELECTIONS = {"hierarchical": ("revision_verifier", "select=hierarchical"),
               "hierarchical_prm": ("prm", "select=hierarchical_prm"),
               "majority": (None, "select=majority"),
               "hierarchical_exact": ("exact", "select=hierarchical,verifier=exact")}


def _selections(ctx: Context) -> list[str]:
  """The revision rows' selections: `SELECTORS`, and the exact verifier's
  hierarchical selection when `search.verifiers` has "exact"."""
  return [*SELECTORS, *(["hierarchical_exact"] if "exact" in ctx.config.search.verifiers
                        else [])]


def _row_params(sequential: int, chains: int, selection: str) -> str:
  return f"s={sequential},p={chains},{_SELECTIONS[selection][1]}"


def _seed(ctx: Context, *parts) -> int:
  """A stable seed per (run seed, purpose): independent random streams."""
  return zlib.crc32("/".join(str(p) for p in (ctx.config.seed, *parts)).encode())


def _sampler_config(ctx: Context) -> sampling.SamplerConfig:
  cfg = ctx.config
  return sampling.SamplerConfig(
      rule=sampling.SamplingRule(cfg.sampling.temperature, cfg.sampling.top_p),
      stop_at=sampling.StopAt.SOLUTION, max_new_tokens=cfg.sampling.max_new_tokens,
      step_id=ctx.tokenizer.step_id, eos_id=ctx.tokenizer.eos_id)


def _in_parts(directory: str, num_items: int, per_part: int, run_part, log,
              name: str) -> list[dict]:
  """Runs `run_part(first, last) -> dict` for each part of `per_part` items not
  yet in `directory/NNNNN.json` (`resumable.map_parts`; a part is described by
  its item range); returns every part's dict, in order."""
  parts = [resumable.Part(resumable.part_path(directory, number),
                          {"first": first, "last": min(first + per_part, num_items)}, None)
           for number, first in enumerate(range(0, num_items, per_part))]
  progress = Progress(name, len(parts), log)
  return resumable.map_parts(
      parts, lambda part: run_part(part.description["first"], part.description["last"]),
      delete=directory, on_part=lambda *_: progress.update()).results


# ------------------------------------------------------------------ data


def stage_revision_data(ctx: Context) -> dict:
  """Policy samples of training questions → revision trajectories."""
  cfg, r = ctx.config, ctx.config.revision
  train_examples = ctx.examples("train")
  if r.num_questions + r.verifier_questions > len(train_examples):
    raise ValueError(f"revision.num_questions + revision.verifier_questions = "
                     f"{r.num_questions + r.verifier_questions}: the train split has only "
                     f"{len(train_examples)} questions")
  examples = train_examples[:r.num_questions]
  policy = ctx.load_policy()

  def sample_part(first: int, last: int) -> dict:
    samples = generate.sample_solutions(
        policy, ctx.tokenizer, ctx.task, [e.question for e in examples[first:last]],
        num_samples=r.samples_per_question, rule=_sampler_config(ctx).rule,
        max_new_tokens=cfg.sampling.max_new_tokens, batch_size=cfg.sampling.batch_size,
        seed=_seed(ctx, "revision_data", first), mesh=ctx.mesh, rules=ctx.rules,
        log=ctx.log)
    return {"texts": samples.texts, "generated_tokens": samples.num_generated_tokens,
            "seconds": samples.seconds}

  parts = _in_parts(ctx.path("revision", "samples"), len(examples), r.questions_per_part,
                    sample_part, ctx.log, "revision_data (samples)")
  texts = [row for part in parts for row in part["texts"]]
  holdout = holdout_questions(len(examples), r.holdout_fraction, _seed(ctx, "holdout"))
  rng = np.random.default_rng(_seed(ctx, "trajectories"))
  records, sample_correct = [], []
  for q, (example, samples) in enumerate(zip(examples, texts, strict=True)):
    graded = [ctx.task.grade(ctx.task.extract_answer(t), example.answer) for t in samples]
    sample_correct.extend(graded)
    correct = [t for t, g in zip(samples, graded, strict=True) if g]
    incorrect = [t for t, g in zip(samples, graded, strict=True) if not g]
    if r.with_reference_solution:
      correct.append(example.solution)
    for _ in range(r.trajectories_per_question):
      # No draw when off: the paper's trajectories stay those of earlier runs.
      keep = r.keep_fraction > 0 and rng.random() < r.keep_fraction
      trajectory = (build_keep_trajectory if keep else build_trajectory)(correct, incorrect, rng)
      if trajectory is not None:
        records.append({"question_index": q, "question": example.question,
                        "level": example.level, "holdout": q in holdout,
                        "source": "keep" if keep else "trajectory", **trajectory})
  records += _policy_data_records(ctx, train_examples, len(records))
  if not any(t["holdout"] for t in records) or all(t["holdout"] for t in records):
    raise ValueError(
        f"revision_data: {len(records)} trajectories, from questions with a correct "
        f"sample, and none {'held out' if records else 'to train on'}: the policy solved "
        "too few questions; raise revision.num_questions or set "
        "revision.with_reference_solution=True")
  io_utils.write_jsonl_atomic(ctx.path("revision", "trajectories.jsonl"), records)
  ks = collections.Counter(len(t["previous"]) for t in records
                           if t["source"] == "trajectory")
  sources = collections.Counter(t["source"] for t in records)
  tokens = sum(p["generated_tokens"] for p in parts)
  seconds = sum(p["seconds"] for p in parts)
  summary = {
      "num_questions": len(examples), "samples_per_question": r.samples_per_question,
      "sample_accuracy": float(np.mean(sample_correct)),
      "questions_with_a_correct_sample": len({t["question_index"] for t in records}),
      "num_trajectories": sources["trajectory"],
      "num_keep_trajectories": sources["keep"],
      "num_policy_data_records": sources["policy_data"],
      "previous_attempts_histogram": {str(k): ks[k] for k in sorted(ks)},
      "sampled_tokens": tokens, "sampled_tokens_per_second": round(tokens / max(seconds, 1e-9)),
  }
  ctx.log(f"revision_data: {sources['trajectory']} trajectories from {len(examples)} questions "
          f"and {sources['policy_data']} reference solutions of other training questions "
          f"(sample accuracy {summary['sample_accuracy']:.3f}); k: "
          f"{summary['previous_attempts_histogram']}")
  return summary


def _policy_data_records(ctx: Context, train_examples, num_trajectories: int) -> list[dict]:
  """The policy's own training data mixed into the revision model's: reference
  solutions of training questions after the revision and revision-verifier
  questions, with no previous attempt, `revision.policy_data_fraction` of all
  records (so that fine-tuning on long revision contexts keeps what the policy
  knew about first attempts). A held-out fraction validates, as for trajectories."""
  r = ctx.config.revision
  fraction = r.policy_data_fraction
  count = round(num_trajectories * fraction / (1.0 - fraction))
  first = r.num_questions + r.verifier_questions
  if first + count > len(train_examples):
    raise ValueError(f"revision.policy_data_fraction={fraction}: needs {count} training "
                     f"questions after the first {first}; the train split has "
                     f"{len(train_examples)}")
  holdout = holdout_questions(count, r.holdout_fraction, _seed(ctx, "policy_data_holdout"))
  return [{"question_index": first + i, "question": e.question, "level": e.level,
           "holdout": i in holdout, "source": "policy_data", "previous": [],
           "target": e.solution}
          for i, e in enumerate(train_examples[first:first + count])]


# ------------------------------------------------------------------ revision model


def _revision_sequences(ctx: Context, records: list[dict]):
  """Token sequences (bos, context, target, eos) and their loss masks (target + eos)."""
  sequences, masks = [], []
  for record in records:
    context = [ctx.tokenizer.bos_id] + ctx.tokenizer.encode(
        revision_context(ctx.task, record["question"], record["previous"]))
    target = ctx.tokenizer.encode(record["target"]) + [ctx.tokenizer.eos_id]
    sequences.append(context + target)
    masks.append([False] * len(context) + [True] * len(target))
  return sequences, masks


def _lm_validation_loss_fn(forward, packed: dict, batch_size: int, mesh):
  """`params -> mean next-token loss` over every packed validation row."""
  n = packed["inputs"].shape[0]
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  padded = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in packed.items()}
  padded["loss_mask"][n:] = 0.0

  @jax.jit
  def batch_loss(params, batch):
    logits = forward(params, batch["inputs"], batch["positions"], batch["segment_ids"])
    loss, metrics = next_token_loss(logits, batch["targets"], batch["loss_mask"])
    return loss * metrics["tokens"], metrics["tokens"]

  def validate(params) -> float:
    total, count = 0.0, 0.0
    for b in range(num_batches):
      batch = {k: v[b * batch_size:(b + 1) * batch_size] for k, v in padded.items()}
      if mesh is not None:
        batch = parallel.shard_batch(batch, mesh)
      loss_sum, tokens = batch_loss(params, batch)
      total, count = total + float(loss_sum), count + float(tokens)
    return total / max(count, 1.0)

  return validate


def stage_train_revision(ctx: Context) -> dict:
  """Fine-tunes the policy into the revision model (loss on the final attempt)."""
  cfg, rt = ctx.config, ctx.config.revision_train
  records = ctx.revision_trajectories()
  policy = ctx.load_policy()
  forward = policy_forward_fn(policy.graphdef)
  seq_len = cfg.revision.seq_len

  def packed(subset):
    sequences, masks = _revision_sequences(ctx, subset)
    too_long = [len(s) for s in sequences if len(s) > seq_len]
    if too_long:
      raise ValueError(f"revision.seq_len={seq_len}: a trajectory has {max(too_long)} "
                       "tokens; raise it")
    return batching.pack_sequences(sequences, masks, seq_len)

  train_rows = packed([r for r in records if not r["holdout"]])
  holdout_rows = packed([r for r in records if r["holdout"]])

  def loss_fn(params, batch, dropout_rng):
    logits = forward(params, batch["inputs"], batch["positions"], batch["segment_ids"],
                     dropout_rng)
    return next_token_loss(logits, batch["targets"], batch["loss_mask"])

  batches = batching.TrainBatches(train_rows, rt.batch_size, seed=_seed(ctx, "revision_train"))
  ctx.log(f"train_revision: {len(records)} trajectories in {train_rows['inputs'].shape[0]} "
          f"packed rows; {holdout_rows['inputs'].shape[0]} held out; "
          f"{batches.steps_per_epoch} steps per epoch")
  state_checkpointer, best_checkpointer = ctx.revision_checkpointers()
  stopping = EarlyStopping(
      _lm_validation_loss_fn(forward, holdout_rows, rt.batch_size, ctx.mesh),
      rt.patience, best_checkpointer)
  train(name="train_revision", loss_fn=loss_fn, params=policy.params, batches=batches,
        train_config=rt, checkpointer=state_checkpointer,
        metrics_path=ctx.path("metrics.jsonl"), seed=_seed(ctx, "revision_dropout"),
        mesh=ctx.mesh, rules=ctx.rules, early_stopping=stopping, log=ctx.log)
  state_checkpointer.close()
  best_checkpointer.close()
  return {"best_step": stopping.best_step, "best_validation_loss": stopping.best,
          "stopped_early": stopping.stopped,
          "num_train_rows": int(train_rows["inputs"].shape[0])}


# ------------------------------------------------------------------ revision verifier


def _chain_records(ctx: Context, examples, chains: revisions.Chains) -> list[dict]:
  """One labelled record per attempt: its context as the prompt, its outcome."""
  records = []
  for q, example in enumerate(examples):
    for c, chain in enumerate(chains.attempts[q]):
      for j, attempt in enumerate(chain):
        tokens = [int(t) for t in attempt.tokens]
        records.append({
            "question_index": q, "chain": c, "attempt": j, "question": example.question,
            "answer": example.answer, "prompt": attempt.context, "tokens": tokens,
            "step_ends": find_step_ends(tokens, ctx.tokenizer),
            "ended": attempt.ended,
            "correct": ctx.task.grade(ctx.task.extract_answer(attempt.text), example.answer)})
  return records


def stage_train_revision_verifier(ctx: Context) -> dict:
  """Labels revision-model attempts by outcome and trains a verifier on them."""
  cfg, r = ctx.config, ctx.config.revision
  examples = ctx.examples("train")[r.num_questions:r.num_questions + r.verifier_questions]
  model = ctx.load_revision_model()

  def chain_part(first: int, last: int) -> dict:
    chains = revisions.run_chains(
        model, ctx.tokenizer, ctx.task, [e.question for e in examples[first:last]],
        sequential=r.verifier_sequential, parallel=r.verifier_parallel,
        sampler_config=_sampler_config(ctx), batch_size=cfg.sampling.batch_size,
        key=jax.random.key(_seed(ctx, "revision_verifier", first)), mesh=ctx.mesh,
        rules=ctx.rules)
    return {"records": _chain_records(ctx, examples[first:last], chains),
            "generated_tokens": chains.generated_tokens, "seconds": chains.seconds}

  parts = _in_parts(ctx.path("revision_verifier", "chains"), len(examples),
                    r.questions_per_part, chain_part, ctx.log,
                    "train_revision_verifier (chains)")
  records = []
  for part in parts:
    for record in part["records"]:
      record["question_index"] += part["part"]["first"]
      records.append(record)
  holdout = holdout_questions(len(examples), r.holdout_fraction, _seed(ctx, "rv_holdout"))
  for record in records:
    record["holdout"] = record["question_index"] in holdout
  summary = train_value_model(ctx, "revision_verifier", records, "outcome", model.params)
  # Transfer: the held-out attempts scored by the new verifier (with context)
  # and by the base PRM (question only), against their outcomes.
  held = [x for x in records if x["holdout"] and x["step_ends"]]
  verifier = ctx.load_verifier("revision_verifier", stage_done=False)
  prm = ctx.load_verifier("prm")
  plain = {x["question"]: revisions.context_tokens(ctx.tokenizer, ctx.task, x["question"], [])
           for x in held}
  outcome = np.array([x["correct"] for x in held])
  auc, scores = {}, {}
  both = 0 < outcome.sum() < len(outcome)
  for name, scorer, use_context in (("revision_verifier", verifier, True),
                                    ("base_prm", prm, False)):
    rows = [{**x, "prompt": x["prompt"] if use_context else plain[x["question"]]}
            for x in held]
    scores[name] = scoring.last_step_scores(scorer, rows, cfg.sampling.batch_size, ctx.mesh,
                                            ctx.rules)
    auc[name] = verifier_quality.roc_auc(scores[name], outcome) if both else None
  # Whether the revision verifier's advantage holds: questions resampled.
  advantage = (verifier_quality.auc_difference(
      scores["revision_verifier"], scores["base_prm"], outcome,
      [x["question_index"] for x in held], seed=_seed(ctx, "auc_difference"))
               if both else None)
  previous = np.array([x["attempt"] > 0 for x in held])
  tokens = sum(p["generated_tokens"] for p in parts)
  summary.update(
      num_attempts=len(records), attempt_accuracy=float(np.mean([x["correct"] for x in records])),
      heldout_outcome_auc=auc, heldout_auc_advantage=advantage, heldout_attempts=len(held),
      heldout_attempts_with_previous=int(previous.sum()),
      chain_tokens_per_second=round(tokens / max(sum(p["seconds"] for p in parts), 1e-9)))
  ctx.log(f"train_revision_verifier: held-out outcome AUC: revision verifier "
          f"{auc['revision_verifier']}, base PRM {auc['base_prm']}; difference "
          + (f"{advantage['difference']:+.3f} [{advantage['interval'][0]:+.3f}, "
             f"{advantage['interval'][1]:+.3f}] over {advantage['num_questions']} questions"
             if advantage else "n/a"))
  return summary


# ------------------------------------------------------------------ sweep


def sweep_splits(sweep_config) -> list[tuple[int, int]]:
  """The (s, p) splits to run: `splits` if given, else every split of every budget."""
  grid = budget_grid(sweep_config.max_budget, "sweep_revisions.max_budget")
  if sweep_config.splits:
    return revisions.parse_splits(sweep_config.splits, grid)
  return [split for budget in grid for split in revisions.splits(budget)]


def revision_table_meta(ctx: Context) -> dict:
  """What the revision rows depend on: a table made otherwise is not appended to."""
  sweep = {k: v for k, v in ctx.config.sweep_revisions.to_dict().items()
           if k not in ("max_budget", "splits")}  # which rows exist, not what they hold
  return {"revision": ctx.revision_spec(),
          "revision_verifier": ctx.verifier_spec("revision_verifier"),
          "prm": ctx.verifier_spec("prm"), "sampling": ctx.config.sampling.to_dict(),
          "sweep_revisions": sweep, "seed": ctx.config.seed}


def _run_unit(ctx: Context, models: dict, examples, sequential: int, chains: int,
              key: jax.Array) -> dict:
  """Chains for some questions, every attempt graded and scored by both verifiers
  (and by the exact verifier when it is swept)."""
  cfg = ctx.config
  questions = [e.question for e in examples]
  run = revisions.run_chains(
      models["revision"], ctx.tokenizer, ctx.task, questions, sequential=sequential,
      parallel=chains, sampler_config=_sampler_config(ctx),
      batch_size=cfg.sampling.batch_size, key=key, mesh=ctx.mesh, rules=ctx.rules)
  scored = {name: revisions.score_attempts(
      models[name], ctx.tokenizer, ctx.task, questions, run,
      with_context=name == "revision_verifier", batch_size=cfg.sampling.batch_size,
      mesh=ctx.mesh, rules=ctx.rules) for name in ("revision_verifier", "prm")}
  if "exact" in cfg.search.verifiers:
    exact = ExactVerifier(ctx.tokenizer, ctx.task, questions)
    scored["exact"] = (np.array([[exact.score_texts(question, [a.text for a in chain])
                                  for chain in attempts]
                                 for question, attempts in zip(questions, run.attempts,
                                                               strict=True)]),
                       np.zeros(len(questions)))  # an oracle: no FLOPs
  answers = [[[ctx.task.extract_answer(a.text) for a in chain] for chain in question]
             for question in run.attempts]
  return {
      "answers": answers,
      "correct": [[[ctx.task.grade(a, e.answer) for a in chain] for chain in question]
                  for question, e in zip(answers, examples, strict=True)],
      "scores": {name: s.tolist() for name, (s, _) in scored.items()},
      "flops": {"policy": run.flops.tolist(),
                **{name: f.tolist() for name, (_, f) in scored.items()}},
      "seconds": run.seconds, "generated_tokens": run.generated_tokens,
  }


def _choose(unit: dict, selection: str) -> list[tuple[int, int] | None]:
  """Per question, (chain, attempt) of the chosen answer, or None."""
  answers = unit["answers"]
  q, p, s = len(answers), len(answers[0]), len(answers[0][0])
  ids, valid = select.answer_ids([[a for chain in question for a in chain]
                                  for question in answers])
  scored_by = _SELECTIONS[selection][0]
  if scored_by is None:
    flat = np.asarray(select.majority(ids, valid))
  else:
    scores = np.asarray(unit["scores"][scored_by])
    flat = np.asarray(select.hierarchical_weighted_best_of_n(
        ids.reshape(q, p, s), scores, valid.reshape(q, p, s)))
  return [None if f < 0 else divmod(int(f), s) for f in flat]


def _unit_flops(unit: dict, selection: str, q: int) -> float:
  verifier = _SELECTIONS[selection][0]
  return unit["flops"]["policy"][q] + (unit["flops"][verifier][q] if verifier else 0.0)


def _unit_file_name(budget: int, sequential: int, first: int) -> str:
  """A sweep unit's file: its budget, split and first question (sorts by them)."""
  return f"N{budget:04d}_s{sequential:04d}_q{first:05d}.json"


def _unit_first_question(name: str) -> int:
  return int(name.rsplit("_q", 1)[1].removesuffix(".json"))


def stage_sweep_revisions(ctx: Context) -> dict:
  """Every (s, p) split of every budget on the test questions; appends to the table."""
  cfg, sw = ctx.config, ctx.config.sweep_revisions
  test = ctx.examples("test")[:sw.num_questions]
  table = outcomes.OutcomeTable(ctx.path(*REVISION_TABLE), revision_table_meta(ctx))
  models = {"revision": ctx.load_revision_model(),
            "revision_verifier": ctx.load_verifier("revision_verifier"),
            "prm": ctx.load_verifier("prm")}
  units = []
  for sequential, chains in sweep_splits(sw):
    per_unit = max(1, sw.rows // chains)
    for first in range(0, len(test), per_unit):
      units.append((sequential * chains, sequential, chains, first,
                    min(first + per_unit, len(test))))
  progress = Progress("sweep_revisions", len(units), ctx.log)
  seed = cfg.seed
  unit_dir = ctx.path("revisions", "sweep")
  epath.Path(unit_dir).mkdir(parents=True, exist_ok=True)
  selections = _selections(ctx)
  # Units whose rows are all in the table are neither read nor run (their
  # files may be gone); the others are read from their files or run.
  to_run = []
  for budget, sequential, chains, first, last in units:
    params = {sel: _row_params(sequential, chains, sel) for sel in selections}
    missing = [(i, sel) for i in range(first, last) for sel in selections
               if not table.has((i, "revisions", params[sel], budget, seed))]
    if missing:
      to_run.append(resumable.Part(
          os.path.join(unit_dir, _unit_file_name(budget, sequential, first)),
          {"sequential": sequential, "chains": chains, "first": first, "last": last},
          (params, missing)))
    else:
      progress.update(note=f"N={budget} s={sequential} p={chains}")

  def run(part: resumable.Part) -> dict:
    unit = part.description
    budget = unit["sequential"] * unit["chains"]
    key = jax.random.key(_seed(ctx, "sweep_revisions", budget, unit["sequential"],
                               unit["first"]))
    return _run_unit(ctx, models, test[unit["first"]:unit["last"]], unit["sequential"],
                     unit["chains"], key)

  def scores_every_missing_row(part: resumable.Part, unit: dict) -> bool:
    # A unit saved before the exact verifier was swept is run again (same key).
    return all(_SELECTIONS[sel][0] in (None, *unit["scores"]) for _, sel in part.item[1])

  def append_rows(index: int, unit: dict, resumed: bool) -> None:
    del resumed
    part = to_run[index]
    sequential, chains = part.description["sequential"], part.description["chains"]
    first, last = part.description["first"], part.description["last"]
    budget = sequential * chains
    params, missing = part.item
    chosen = {sel: _choose(unit, sel) for sel in {sel for _, sel in missing}}
    rows = []
    for i, sel in missing:
      q = i - first
      pick = chosen[sel][q]
      answer = None if pick is None else unit["answers"][q][pick[0]][pick[1]]
      rows.append(outcomes.Outcome(
          question_index=i, level=test[i].level, method="revisions", params=params[sel],
          budget=budget, seed=seed, answer=answer,
          correct=ctx.task.grade(answer, test[i].answer), generations=budget,
          flops=_unit_flops(unit, sel, q), seconds=unit["seconds"] / (last - first)))
    # Appended unit by unit: a kill keeps the rows of every unit finished.
    table.append(rows)
    progress.update(note=f"N={budget} s={sequential} p={chains}")

  mapped = resumable.map_parts(to_run, run, delete=unit_dir,
                               reusable=scores_every_missing_row, on_part=append_rows)
  ran = len(to_run) - mapped.num_resumed
  return _sweep_summary(ctx, table.rows(), unit_dir, ran, len(units))


def _attempt_analysis(units: dict[str, np.ndarray], seed: int) -> dict:
  """Per-attempt accuracy and gain of the longest single chains (the units of
  s = N, p = 1 at the largest such N: one chain per question), and the
  transitions of every chain of every unit ({unit file name: graded [Q, p, s]})."""
  longest = {}
  for name, correct in units.items():
    if correct.shape[1] == 1:
      longest.setdefault(correct.shape[2], []).append((name, correct))
  first_questions = [(_unit_first_question(name), correct) for name, correct in units.items()]
  analysis = {"transitions": revision_analysis.transitions(units.values()),
              "fresh_baseline": revision_analysis.fresh_baseline(first_questions),
              "longest_chains": None}
  if longest:
    sequential = max(longest)
    # Unit names sort by first question: the chains in question order.
    correct = np.concatenate([c for _, c in sorted(longest[sequential])])
    accuracy = revision_analysis.attempt_accuracy(correct, seed)
    accuracy["gain"] = revision_analysis.attempt_gain(correct, min(GAIN_ATTEMPT, sequential),
                                                      seed)
    analysis["longest_chains"] = accuracy
  return analysis


def _rate_text(rate: float | None) -> str:
  return "n/a" if rate is None else f"{rate:.3f}"


def _sweep_summary(ctx: Context, rows: list[dict], unit_dir: str, ran: int,
                   num_units: int) -> dict:
  """Accuracy per setting, sequential vs parallel, and how often revising hurts."""
  accuracy = collections.defaultdict(list)
  for row in rows:
    accuracy[(row["params"], row["budget"])].append(row["correct"])
  curves = collections.defaultdict(dict)
  for (params, budget), values in sorted(accuracy.items(), key=lambda kv: kv[0][1]):
    curves[params][budget] = round(float(np.mean(values)), 4)
  sequential_vs_parallel = {}
  for sel in SELECTORS:
    for budget in sorted({b for _, b in accuracy}):
      seq = curves.get(f"s={budget},p=1,select={sel}", {}).get(budget)
      par = curves.get(f"s=1,p={budget},select={sel}", {}).get(budget)
      sequential_vs_parallel.setdefault(sel, {})[budget] = {"sequential": seq, "parallel": par}
  units = {os.path.basename(str(path)): np.asarray(io_utils.read_json(str(path))["correct"], bool)
           for path in sorted(epath.Path(unit_dir).glob("*.json"))}
  attempts = _attempt_analysis(units, ctx.config.seed)
  io_utils.write_json_atomic(ctx.path(*ATTEMPTS), attempts)
  revision_figure.plot(rows, ctx.path("sweep_revisions.png"))
  for sel, by_budget in sequential_vs_parallel.items():
    ctx.log(f"sweep_revisions: {sel:17s} sequential vs parallel: " + " ".join(
        f"N={n}: {v['sequential']} vs {v['parallel']}" for n, v in by_budget.items()))
  turned = attempts["transitions"]
  ctx.log("sweep_revisions: a correct attempt is revised into an incorrect one "
          f"{turned['correct_to_incorrect']['count']}/{turned['correct_to_incorrect']['of']} "
          f"times, an incorrect one into a correct one "
          f"{turned['incorrect_to_correct']['count']}/{turned['incorrect_to_correct']['of']}"
          " times (a fresh sample in their place: right "
          f"{_rate_text(attempts['fresh_baseline']['after_correct'])} after a correct attempt, "
          f"{_rate_text(attempts['fresh_baseline']['after_incorrect'])} after an incorrect one)")
  if attempts["longest_chains"]:
    by_attempt = attempts["longest_chains"]["accuracy"]
    gain = attempts["longest_chains"]["gain"]
    ctx.log(f"sweep_revisions: accuracy by attempt of the {len(by_attempt)}-attempt chains: "
            + " ".join(f"{a:.3f}" for a in by_attempt)
            + f"; attempt {gain['attempt']} − attempt 1: {gain['gain']:+.3f} "
            f"[{gain['interval'][0]:+.3f}, {gain['interval'][1]:+.3f}]")
  return {"num_rows": len(rows), "units_run": ran, "num_units": num_units,
          "accuracy": {k: dict(v) for k, v in curves.items()},
          "sequential_vs_parallel": sequential_vs_parallel,
          "transitions": attempts["transitions"], "fresh_baseline": attempts["fresh_baseline"],
          "longest_chains": attempts["longest_chains"]}
