"""The revision stages: data, the revision model, its verifier, and the sweep.

- `revision_data`: policy samples of training questions (in resumable parts)
  → trajectories of k ~ Uniform{0..4} incorrect attempts then a correct one,
  the policy's own data mixed in (`training/revision_data.py`).
- `train_revision`: the policy fine-tuned on the trajectories, loss on the
  final attempt only; early stopping keeps the lowest validation loss.
- `train_revision_verifier`: chains of the revision model on other training
  questions, each attempt labelled by its outcome; a verifier trained on them
  with the previous attempts in context, compared with the base PRM.
- `sweep_revisions`: every (s, p) split of every budget
  (`search/revision_sweep.py`), rows in `outcomes/revisions.jsonl`.
"""

from __future__ import annotations

import jax
import numpy as np

from ttscale import io_utils, layout, resumable
from ttscale.pipeline.context import Context
from ttscale.pipeline.verifier_stages import train_verifier
from ttscale.scaling import verifier_quality
from ttscale.search import generate, revisions, scoring
from ttscale.training import revision_data
from ttscale.training.labelled_records import chain_records, holdout_questions
from ttscale.training.language_model import train_revision_model


def _seed(ctx: Context, *parts) -> int:
  return resumable.stream_seed(ctx.config.seed, *parts)


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
        num_samples=r.samples_per_question, rule=ctx.sampling_rule(),
        max_new_tokens=cfg.sampling.max_new_tokens, batch_size=cfg.sampling.batch_size,
        seed=_seed(ctx, "revision_data", first), mesh=ctx.mesh, rules=ctx.rules,
        log=ctx.log)
    return {"texts": samples.texts, "generated_tokens": samples.num_generated_tokens,
            "seconds": samples.seconds}

  parts = resumable.map_ranges(ctx.path(layout.REVISION_SAMPLES), len(examples),
                               r.questions_per_part, sample_part, "revision_data (samples)",
                               ctx.log)
  texts = [row for part in parts for row in part["texts"]]
  holdout = holdout_questions(len(examples), r.holdout_fraction, _seed(ctx, "holdout"))
  records, sample_correct = revision_data.trajectory_records(
      ctx.task, examples, texts, holdout, r, np.random.default_rng(_seed(ctx, "trajectories")))
  count = revision_data.policy_data_count(len(records), r.policy_data_fraction)
  if r.get("policy_data", "reference") == "samples":
    records += revision_data.policy_sample_records(
        examples, texts, count, holdout, np.random.default_rng(_seed(ctx, "policy_samples")))
  else:
    records += revision_data.policy_data_records(
        train_examples, r.num_questions + r.verifier_questions, count,
        _seed(ctx, "policy_data_holdout"), r.holdout_fraction)
  if not any(t["holdout"] for t in records) or all(t["holdout"] for t in records):
    raise ValueError(
        f"revision_data: {len(records)} trajectories, from questions with a correct "
        f"sample, and none {'held out' if records else 'to train on'}: the policy solved "
        "too few questions; raise revision.num_questions or set "
        "revision.with_reference_solution=True")
  io_utils.write_jsonl_atomic(ctx.path(layout.REVISION_TRAJECTORIES), records)
  summary = revision_data.data_summary(records, sample_correct, len(examples),
                                      r.samples_per_question, parts)
  ctx.log(f"revision_data: {summary['num_trajectories']} trajectories from {len(examples)} "
          f"questions and {summary['num_policy_data_records']} records of the policy's own "
          f"data (sample accuracy {summary['sample_accuracy']:.3f}); k: "
          f"{summary['previous_attempts_histogram']}")
  return summary


def stage_train_revision(ctx: Context) -> dict:
  """Fine-tunes the policy into the revision model (loss on the final attempt)."""
  records = ctx.revision_trajectories()
  sequences = {held: revision_data.revision_sequences(
      ctx.tokenizer, ctx.task, [r for r in records if r["holdout"] == held])
      for held in (False, True)}
  return train_revision_model(
      ctx.load_policy(), sequences[False], sequences[True], seq_len=ctx.config.revision.seq_len,
      train_config=ctx.config.revision_train, checkpointers=ctx.checkpointers("revision"),
      seed=_seed(ctx, "revision_train"), dropout_seed=_seed(ctx, "revision_dropout"),
      metrics_path=ctx.path(layout.METRICS), mesh=ctx.mesh, rules=ctx.rules, log=ctx.log,
      num_records=len(records))


def stage_train_revision_verifier(ctx: Context) -> dict:
  """Labels revision-model attempts by outcome and trains a verifier on them."""
  cfg, r = ctx.config, ctx.config.revision
  examples = ctx.examples("train")[r.num_questions:r.num_questions + r.verifier_questions]
  model = ctx.load_revision_model()

  def chain_part(first: int, last: int) -> dict:
    chains = revisions.run_chains(
        model, ctx.tokenizer, ctx.task, [e.question for e in examples[first:last]],
        sequential=r.verifier_sequential, parallel=r.verifier_parallel,
        sampler_config=ctx.sampler_config(), batch_size=cfg.sampling.batch_size,
        key=jax.random.key(_seed(ctx, "revision_verifier", first)), mesh=ctx.mesh,
        rules=ctx.rules)
    return {"records": chain_records(ctx.tokenizer, ctx.task, examples[first:last], chains),
            "generated_tokens": chains.generated_tokens, "seconds": chains.seconds}

  parts = resumable.map_ranges(ctx.path(layout.REVISION_VERIFIER_CHAINS), len(examples),
                               r.questions_per_part, chain_part,
                               "train_revision_verifier (chains)", ctx.log)
  holdout = holdout_questions(len(examples), r.holdout_fraction, _seed(ctx, "rv_holdout"))
  records = [{**record, "question_index": record["question_index"] + part["part"]["first"]}
             for part in parts for record in part["records"]]
  for record in records:
    record["holdout"] = record["question_index"] in holdout
  summary = train_verifier(ctx, "revision_verifier", records, "outcome", model.params)
  # Transfer: the held-out attempts scored by the new verifier (with context)
  # and by the base PRM (question only), against their outcomes.
  held = [x for x in records if x["holdout"] and x["step_ends"]]
  plain = {x["question"]: revisions.context_tokens(ctx.tokenizer, ctx.task, x["question"], [])
           for x in held}
  scores = {name: scoring.last_step_scores(
      scorer, [{**x, "prompt": x["prompt"] if use_context else plain[x["question"]]}
               for x in held], cfg.sampling.batch_size, ctx.mesh, ctx.rules)
      for name, scorer, use_context in (
          ("revision_verifier", ctx.load_verifier("revision_verifier", stage_done=False), True),
          ("base_prm", ctx.load_verifier("prm"), False))}
  transfer = verifier_quality.transfer(scores, np.array([x["correct"] for x in held]),
                                       [x["question_index"] for x in held],
                                       _seed(ctx, "auc_difference"))
  tokens = sum(p["generated_tokens"] for p in parts)
  summary.update(
      num_attempts=len(records), attempt_accuracy=float(np.mean([x["correct"] for x in records])),
      heldout_outcome_auc=transfer["auc"], heldout_auc_advantage=transfer["advantage"],
      heldout_attempts=len(held),
      heldout_attempts_with_previous=sum(x["attempt"] > 0 for x in held),
      chain_tokens_per_second=round(tokens / max(sum(p["seconds"] for p in parts), 1e-9)))
  auc, advantage = transfer["auc"], transfer["advantage"]
  ctx.log(f"train_revision_verifier: held-out outcome AUC: revision verifier "
          f"{auc['revision_verifier']}, base PRM {auc['base_prm']}; difference "
          + (f"{advantage['difference']:+.3f} [{advantage['interval'][0]:+.3f}, "
             f"{advantage['interval'][1]:+.3f}] over {advantage['num_questions']} questions"
             if advantage else "n/a"))
  return summary
