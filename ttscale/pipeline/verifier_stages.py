"""The verifiers' stages: Monte-Carlo step labels, PRM and ORM training, PRM quality.

- `prm_labels`: solutions sampled for training questions, each step labelled
  by rollouts of the policy (`training/prm_labels.py`), with the task's exact
  step labels beside the soft ones; a held-out 10% of the questions is marked.
- `train_prm`, `train_orm`: the policy's trunk with a scalar head, trained
  with binary cross-entropy on the soft step labels (PRM) or on outcomes of
  whole solutions (ORM); early stopping on the held-out questions.
- `eval_prm`: step AUC against exact labels, calibration against held-out MC
  labels, and accuracy vs N of the answer selectors on one pool of samples
  (`scaling/prm_evaluation.py`).
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from ttscale import io_utils, layout
from ttscale.data.verifier_data import verifier_arrays
from ttscale.models.checkpoint_import import import_language_model
from ttscale.pipeline.context import Context
from ttscale.report import prm_figure
from ttscale.scaling import prm_evaluation
from ttscale.search import scoring
from ttscale.training import prm_labels
from ttscale.training.labelled_records import holdout_questions, labelled_records
from ttscale.training.value_model import padded_width, train_value_model


def stage_prm_labels(ctx: Context) -> dict:
  """Samples solutions of training questions and labels every step by rollouts."""
  cfg, p = ctx.config, ctx.config.prm
  train_examples = ctx.examples("train")
  if p.num_questions > len(train_examples):
    raise ValueError(f"prm.num_questions={p.num_questions}: the train split has only "
                     f"{len(train_examples)} questions")
  examples = train_examples[:p.num_questions]
  holdout = holdout_questions(len(examples), p.holdout_fraction, cfg.seed)
  samples = ctx.sample_pool(layout.PRM_LABELS_SOLUTIONS, [e.question for e in examples],
                            p.samples_per_question, cfg.seed + 2, "prm_labels (solutions)")
  _, to_label = labelled_records(ctx.tokenizer, ctx.task, examples, samples, holdout, None,
                                 p.num_rollouts)
  settings = prm_labels.RolloutSettings(
      num_rollouts=p.num_rollouts, prefixes_per_part=p.prefixes_per_part,
      batch_size=cfg.sampling.batch_size, seed=cfg.seed + 3,
      sampler_config=ctx.sampler_config())
  answers = [example.answer for example, row in zip(examples, samples["tokens"], strict=True)
             for _ in row]
  rollouts = prm_labels.count_correct_rollouts(
      ctx.load_policy(), ctx.tokenizer, ctx.task, to_label, answers, settings,
      ctx.path(layout.PRM_LABELS_PARTS), mesh=ctx.mesh, rules=ctx.rules, log=ctx.log)
  records, _ = labelled_records(ctx.tokenizer, ctx.task, examples, samples, holdout,
                                rollouts["correct"], p.num_rollouts)
  io_utils.write_jsonl_atomic(ctx.path(layout.PRM_LABELS), records)
  soft = np.concatenate([r["mc_labels"] for r in records if r["mc_labels"]])
  # Tasks without exact step labels (MATH) have none to compare with.
  exact = [label for r in records for label in r["exact_labels"] or ()]
  tokens, seconds = rollouts["total_generated_tokens"], rollouts["total_seconds"]
  summary = {
      "num_questions": len(examples), "num_holdout_questions": len(holdout),
      "num_solutions": len(records), "num_steps": int(soft.size),
      "num_prefixes": rollouts["num_prefixes"],
      "num_prefixes_rolled_out": rollouts["num_distinct_prefixes"],
      "num_rollouts": p.num_rollouts,
      "solution_accuracy": float(np.mean([r["correct"] for r in records])),
      "mean_soft_label": float(soft.mean()),
      "exact_step_accuracy": float(np.mean(exact)) if exact else None,
      "rollout_tokens": tokens, "rollout_seconds": round(seconds, 1),
      "rollout_tokens_per_second": round(tokens / max(seconds, 1e-9)),
      "parts_resumed": rollouts["parts_resumed"], "num_parts": rollouts["num_parts"],
  }
  ctx.log(f"prm_labels: {summary['num_steps']} steps of {summary['num_solutions']} "
          f"solutions; {summary['num_prefixes_rolled_out']} distinct of "
          f"{summary['num_prefixes']} prefixes rolled out; {tokens:,} rollout tokens at "
          f"{summary['rollout_tokens_per_second']:,} tokens/s")
  return summary


def train_verifier(ctx: Context, kind: str, records: list[dict], target: str,
                   init_params) -> dict:
  """Trains the verifier of `kind` on `records` (`training/value_model.py`),
  kept in `<kind>/state` and `<kind>/best`."""
  return train_value_model(
      name=f"train_{kind}", records=records, target=target, init_params=init_params,
      module=ctx.verifier_module(kind), model_config=ctx.verifier_config(kind),
      train_config=ctx.verifier_train_config(kind), checkpointers=ctx.checkpointers(kind),
      seed=ctx.config.seed, metrics_path=ctx.path(layout.METRICS), mesh=ctx.mesh,
      rules=ctx.rules, log=ctx.log)


def stage_train_prm(ctx: Context) -> dict:
  """The PRM: BCE on Monte-Carlo step labels at every step end, its trunk
  from the trained policy or from a released checkpoint (`checkpoint.prm`)."""
  target = {"soft": "steps", "hard": "hard_steps"}[ctx.config.verifier_train.step_labels]
  init = ctx.init_checkpoint("prm")
  if init is None:
    trunk = verifier_trunk(ctx, "prm")
  else:  # the policy's shape and tokenizer, checked by the import
    ctx.log(f"train_prm: importing the {init['format']} checkpoint {init['path']}")
    trunk = import_language_model(init["format"], init["path"], ctx.policy_config(),
                                  trim_vocab=init["trim_vocab"])
  return train_verifier(ctx, "prm", ctx.labelled_solutions(), target, trunk)


def stage_train_orm(ctx: Context) -> dict:
  """The ORM baseline: BCE on the outcome at the end of whole solutions."""
  return train_verifier(ctx, "orm", ctx.labelled_solutions(), "outcome",
                        verifier_trunk(ctx, "orm"))


def verifier_trunk(ctx: Context, kind: str) -> nnx.State:
  """The trained language model a verifier of `kind` starts from: the policy,
  or the larger policy (`verifier_train.trunk="large"`)."""
  return ctx.load_policy(large=ctx.verifier_trunk_is_large(kind)).params


def stage_eval_prm(ctx: Context) -> dict:
  """PRM quality: step AUC, calibration, and accuracy vs N of the selectors."""
  cfg, e = ctx.config, ctx.config.eval_prm
  test = ctx.examples("test")[:e.num_questions]
  pool = ctx.sample_pool(layout.EVAL_PRM_POOL, [x.question for x in test], e.pool_size,
                         cfg.seed + 4, "eval_prm (pool)")
  records, _ = labelled_records(ctx.tokenizer, ctx.task, test, pool, set(), None, 0)
  prm, orm = ctx.load_verifier("prm"), ctx.load_verifier("orm")
  arrays = verifier_arrays(records, None, padded_width(records))
  batch = cfg.sampling.batch_size
  # One trunk pass for both when they share a frozen trunk.
  steps = dict(zip(("prm", "orm"),
                   scoring.score_steps_of([prm, orm], arrays, batch, ctx.mesh, ctx.rules),
                   strict=True))
  # Calibration against the Monte-Carlo labels of the held-out training questions.
  holdout = [r for r in ctx.labelled_solutions() if r["holdout"]]
  holdout_arrays = verifier_arrays(holdout, "steps", padded_width(holdout))
  holdout_mask = holdout_arrays["step_mask"] > 0
  holdout_scores = scoring.score_steps(prm, holdout_arrays, batch, ctx.mesh, ctx.rules)
  texts = [ctx.tokenizer.decode([t for t in r["tokens"] if t != ctx.tokenizer.eos_id])
           for r in records]
  result = prm_evaluation.evaluate(
      records, texts, steps, arrays["step_mask"] > 0,
      (holdout_scores[holdout_mask], holdout_arrays["targets"][holdout_mask]), ctx.task, e,
      cfg.search.step_aggregation, cfg.seed)
  io_utils.write_json_atomic(ctx.path(layout.EVAL_PRM), result)
  prm_figure.plot(result, ctx.path(layout.EVAL_PRM_FIGURE))
  step_auc, ece = result["step_auc_vs_exact"], result["calibration"]["ece"]
  ctx.log(f"eval_prm: step AUC vs exact labels: PRM {step_auc['prm']}, "
          f"ORM {step_auc['orm']}; PRM ECE {ece:.3f}")
  for name, quality in (result["siblings"] or {}).items():
    top = quality["top_of_m"]
    ctx.log(f"eval_prm: {name.upper()} sibling AUC {quality['auc']} over "
            f"{quality['num_pairs']} pairs; top of {top['m']} siblings right "
            f"{top['top']:.3f} vs a random one {top['random']:.3f} (mixed draws: "
            f"{top['top_mixed']} vs {top['random_mixed']})")
  return {"step_auc_vs_exact": step_auc, "ece": ece,
          "sibling_auc": {k: v["auc"] for k, v in (result["siblings"] or {}).items()}}
