"""The verifiers' stages: Monte-Carlo step labels, PRM and ORM training, PRM quality.

- `prm_labels`: solutions sampled for training questions, each step labelled
  by rollouts of the policy (`training/prm_labels.py`), with the task's exact
  step labels beside the soft ones; a held-out 10% of the questions is marked.
- `train_prm`, `train_orm`: the policy's trunk with a scalar head, trained
  with binary cross-entropy on the soft step labels (PRM) or on outcomes of
  whole solutions (ORM); early stopping on the held-out questions.
- `eval_prm`: step AUC against exact labels, calibration against held-out MC
  labels, and accuracy vs N of the answer selectors on one pool of samples.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from etils import epath
from flax import nnx

from ttscale import io_utils, parallel, resumable
from ttscale.data.batching import TrainBatches
from ttscale.data.verifier_data import verifier_arrays
from ttscale.models import policy_forward_fn
from ttscale.models.checkpoint_import import import_language_model
from ttscale.models.value import init_from_policy
from ttscale.pipeline.context import Context
from ttscale.report import prm_figure
from ttscale.scaling import verifier_quality
from ttscale.search import generate, sampling, scoring, select
from ttscale.training import frozen_trunk, prm_labels
from ttscale.training.objectives import step_value_loss
from ttscale.training.trainer import EarlyStopping, train

_WIDTH_MULTIPLE = 16  # verifier rows are padded to a multiple of this


def _prompt_tokens(ctx: Context, question: str) -> list[int]:
  return [ctx.tokenizer.bos_id] + ctx.tokenizer.encode(ctx.task.prompt(question))


def _sampling_rule(ctx: Context) -> sampling.SamplingRule:
  return sampling.SamplingRule(ctx.config.sampling.temperature, ctx.config.sampling.top_p)


def labelled_records(ctx: Context, examples, samples: dict, holdout: set[int],
                      counts: dict | None, num_rollouts: int
                      ) -> tuple[list[dict], list[prm_labels.SolutionToLabel]]:
  """One record per sampled solution, with exact step labels and, given the
  rollout `counts`, soft ones (None without); and the solutions to label."""
  records, to_label = [], []
  for q, example in enumerate(examples):
    prompt = _prompt_tokens(ctx, example.question)
    for tokens, ended in zip(samples["tokens"][q], samples["ended"][q], strict=True):
      to_label.append(prm_labels.solution_to_label(
          prompt, np.asarray(tokens, np.int32), ended, ctx.tokenizer, ctx.task,
          example.answer))
      records.append({"question_index": q, "question": example.question,
                      "answer": example.answer, "level": example.level,
                      "holdout": q in holdout})
  if counts is None:
    soft = [[None] * len(s.step_ends) for s in to_label]
  else:
    soft = prm_labels.step_labels(to_label, counts, num_rollouts)
  for record, solution, labels in zip(records, to_label, soft, strict=True):
    text = ctx.tokenizer.decode([t for t in solution.tokens if t != ctx.tokenizer.eos_id])
    exact = ctx.task.step_labels(record["question"], text)
    record.update(prompt=solution.prompt, tokens=solution.tokens,
                  step_ends=solution.step_ends, ended=solution.ended,
                  correct=solution.correct, mc_labels=labels,
                  exact_labels=None if exact is None else exact[:len(solution.step_ends)])
  return records, to_label


def sample_pool(ctx: Context, path: str, questions: list[str], num_samples: int,
                 seed: int, name: str) -> dict:
  """Samples solutions once and keeps them in `path` (a re-run reads them; a
  file sampled for other questions, another count or seed is refused).

  Returns:
    {"tokens": [question][sample] solution tokens, "ended": [question][sample]
     bool, "generated_tokens", "seconds", "part": what was sampled}.
  """
  cfg = ctx.config

  def sample(part: resumable.Part) -> dict:
    del part
    samples = generate.sample_solutions(
        ctx.load_policy(), ctx.tokenizer, ctx.task, questions, num_samples=num_samples,
        rule=_sampling_rule(ctx), max_new_tokens=cfg.sampling.max_new_tokens,
        batch_size=cfg.sampling.batch_size, seed=seed, mesh=ctx.mesh, rules=ctx.rules,
        progress_name=name, log=ctx.log)
    return {"tokens": [[t.tolist() for t in row] for row in samples.tokens],
            "ended": samples.ended, "generated_tokens": samples.num_generated_tokens,
            "seconds": samples.seconds}

  # One part: the whole pool (`sample_solutions` batches across questions).
  description = {"questions": resumable.digest(questions), "num_questions": len(questions),
                 "num_samples": num_samples, "seed": seed}
  return resumable.map_parts([resumable.Part(path, description, None)], sample).results[0]


def holdout_questions(num_questions: int, fraction: float, seed: int) -> set[int]:
  """The question indices held out for early stopping and calibration."""
  count = int(round(num_questions * fraction))
  return set(np.random.default_rng([seed, 1]).permutation(num_questions)[:count].tolist())


def stage_prm_labels(ctx: Context) -> dict:
  """Samples solutions of training questions and labels every step by rollouts."""
  cfg, p = ctx.config, ctx.config.prm
  train_examples = ctx.examples("train")
  if p.num_questions > len(train_examples):
    raise ValueError(f"prm.num_questions={p.num_questions}: the train split has only "
                     f"{len(train_examples)} questions")
  examples = train_examples[:p.num_questions]
  holdout = holdout_questions(len(examples), p.holdout_fraction, cfg.seed)
  samples = sample_pool(ctx, ctx.path("prm_labels", "solutions.json"),
                         [e.question for e in examples], p.samples_per_question,
                         cfg.seed + 2, "prm_labels (solutions)")
  _, to_label = labelled_records(ctx, examples, samples, holdout, None, p.num_rollouts)
  settings = prm_labels.RolloutSettings(
      num_rollouts=p.num_rollouts, prefixes_per_part=p.prefixes_per_part,
      batch_size=cfg.sampling.batch_size, seed=cfg.seed + 3,
      sampler_config=sampling.SamplerConfig(
          rule=_sampling_rule(ctx), stop_at=sampling.StopAt.SOLUTION,
          max_new_tokens=cfg.sampling.max_new_tokens, step_id=ctx.tokenizer.step_id,
          eos_id=ctx.tokenizer.eos_id))
  answers = [example.answer for example, row in zip(examples, samples["tokens"], strict=True)
             for _ in row]
  rollouts = prm_labels.count_correct_rollouts(
      ctx.load_policy(), ctx.tokenizer, ctx.task, to_label, answers, settings,
      ctx.path("prm_labels", "parts"), mesh=ctx.mesh, rules=ctx.rules, log=ctx.log)
  records, _ = labelled_records(ctx, examples, samples, holdout, rollouts["correct"],
                                 p.num_rollouts)
  io_utils.write_jsonl_atomic(ctx.path("prm_labels", "labels.jsonl"), records)
  soft = np.concatenate([r["mc_labels"] for r in records if r["mc_labels"]])
  # Tasks without exact step labels (MATH) have none to compare with.
  exact = [label for r in records for label in r["exact_labels"] or ()]
  # Tokens of all parts, also those of an earlier interrupted run.
  parts_dir = ctx.path("prm_labels", "parts")
  # Only finished parts: `NNNNN.json` (a killed write leaves a `.tmp-` file).
  parts = [io_utils.read_json(os.fspath(path))
           for path in sorted(epath.Path(parts_dir).glob("[0-9]*.json"))]
  total_tokens = sum(part["generated_tokens"] for part in parts)
  total_seconds = sum(part["seconds"] for part in parts)
  summary = {
      "num_questions": len(examples), "num_holdout_questions": len(holdout),
      "num_solutions": len(records), "num_steps": int(soft.size),
      "num_prefixes": rollouts["num_prefixes"],
      "num_prefixes_rolled_out": rollouts["num_distinct_prefixes"],
      "num_rollouts": p.num_rollouts,
      "solution_accuracy": float(np.mean([r["correct"] for r in records])),
      "mean_soft_label": float(soft.mean()),
      "exact_step_accuracy": float(np.mean(exact)) if exact else None,
      "rollout_tokens": total_tokens, "rollout_seconds": round(total_seconds, 1),
      "rollout_tokens_per_second": round(total_tokens / max(total_seconds, 1e-9)),
      "parts_resumed": rollouts["parts_resumed"], "num_parts": rollouts["num_parts"],
  }
  ctx.log(f"prm_labels: {summary['num_steps']} steps of {summary['num_solutions']} "
          f"solutions; {summary['num_prefixes_rolled_out']} distinct of "
          f"{summary['num_prefixes']} prefixes rolled out; {total_tokens:,} rollout tokens at "
          f"{summary['rollout_tokens_per_second']:,} tokens/s")
  return summary


def _padded_width(records: list[dict]) -> int:
  longest = max(len(r["prompt"]) + len(r["tokens"]) for r in records)
  return -(-longest // _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE


def _validation_loss_fn(forward, arrays: dict, batch_size: int, mesh):
  """`params -> mean loss` over all validation rows (padded batches count 0)."""
  n = arrays["inputs"].shape[0]
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  padded = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in arrays.items()}
  padded["step_mask"][n:] = 0.0

  @jax.jit
  def batch_loss(params, batch):
    logits = forward(params, batch["inputs"], batch["positions"])
    loss, metrics = step_value_loss(logits, batch["step_ends"], batch["step_mask"],
                                    batch["targets"])
    return loss * metrics["steps"], metrics["steps"]

  def validate(params) -> float:
    total, count = 0.0, 0.0
    for b in range(num_batches):
      batch = {k: v[b * batch_size:(b + 1) * batch_size] for k, v in padded.items()}
      if mesh is not None:
        batch = parallel.shard_batch(batch, mesh)
      loss_sum, steps = batch_loss(params, batch)
      total, count = total + float(loss_sum), count + float(steps)
    return total / max(count, 1.0)

  return validate


def train_value_model(ctx: Context, kind: str, records: list[dict], target: str,
                      init_params) -> dict:
  """Trains a verifier of `kind` on labelled `records` (split by `holdout`).

  Args:
    kind: where it is kept (`<kind>/state`, `<kind>/best`), e.g. "prm".
    target: "steps" (Monte-Carlo step labels), "hard_steps" (any rollout
      correct) or "outcome".
    init_params: the language model whose trunk the verifier starts from.
  """
  cfg, vt = ctx.config, ctx.verifier_train_config(kind)
  width = _padded_width(records)
  train_arrays = verifier_arrays([r for r in records if not r["holdout"]], target, width)
  holdout_arrays = verifier_arrays([r for r in records if r["holdout"]], target, width)
  model_config = ctx.verifier_config(kind)
  graphdef, params = nnx.split(ctx.verifier_module(kind)(model_config, rngs=nnx.Rngs(cfg.seed)))
  params = init_from_policy(params, init_params)
  name = f"train_{kind}"
  trainable = None
  if vt.get("step_likelihood", False):
    # The trunk is frozen: its features are computed once (`frozen_trunk`).
    ctx.log(f"{name}: the trunk's features of every solution (trunk frozen)")
    train_arrays, holdout_arrays = (
        frozen_trunk.step_end_features(graphdef, params, arrays, cfg.sampling.batch_size,
                                       ctx.mesh, ctx.rules)
        for arrays in (train_arrays, holdout_arrays))
    loss_fn = frozen_trunk.head_loss_fn(graphdef)
    validate = frozen_trunk.validation_loss_fn(graphdef, holdout_arrays, vt.batch_size,
                                               ctx.mesh)
    trainable = frozen_trunk.trainable_head(params)
  else:
    forward = policy_forward_fn(graphdef)

    def loss_fn(params, batch, dropout_rng):
      logits = forward(params, batch["inputs"], batch["positions"], None, dropout_rng)
      loss, metrics = step_value_loss(logits, batch["step_ends"], batch["step_mask"],
                                      batch["targets"])
      return loss, {**metrics, "tokens": batch["token_mask"].sum()}

    validate = _validation_loss_fn(forward, holdout_arrays, vt.batch_size, ctx.mesh)
  batches = TrainBatches(train_arrays, vt.batch_size, seed=cfg.seed + 5)
  ctx.log(f"{name}: {train_arrays['step_mask'].shape[0]} solutions, "
          f"{int(train_arrays['step_mask'].sum())} labelled steps; "
          f"{holdout_arrays['step_mask'].shape[0]} held out; "
          f"{batches.steps_per_epoch} steps per epoch")
  state_checkpointer, best_checkpointer = ctx.verifier_checkpointers(kind)
  stopping = EarlyStopping(validate, vt.patience, best_checkpointer)
  train(name=name, loss_fn=loss_fn, params=params, batches=batches, train_config=vt,
        checkpointer=state_checkpointer, metrics_path=ctx.path("metrics.jsonl"),
        seed=cfg.seed + 6, mesh=ctx.mesh, rules=ctx.rules, early_stopping=stopping,
        log=ctx.log, trainable=trainable)
  state_checkpointer.close()
  best_checkpointer.close()
  return {"best_step": stopping.best_step, "best_validation_loss": stopping.best,
          "stopped_early": stopping.stopped,
          "num_train_solutions": int(train_arrays["step_mask"].shape[0]),
          "num_train_labels": int(train_arrays["step_mask"].sum())}


def stage_train_prm(ctx: Context) -> dict:
  """The PRM: BCE on Monte-Carlo step labels at every step end, its trunk
  from the trained policy or from a released checkpoint (`checkpoint.prm`)."""
  target = {"soft": "steps", "hard": "hard_steps"}[ctx.config.verifier_train.step_labels]
  return train_value_model(ctx, "prm", ctx.labelled_solutions(), target, prm_trunk(ctx))


def prm_trunk(ctx: Context) -> nnx.State:
  """The language model whose trunk the PRM starts from: `checkpoint.prm`
  imported (the policy's shape and tokenizer, checked), else the trained
  policy or larger policy (`verifier_trunk`).

  Raises:
    ValueError: the checkpoint does not match the policy's config or the
      tokenizer (names the file and field).
  """
  init = ctx.init_checkpoint("prm")
  if init is None:
    return verifier_trunk(ctx, "prm")
  ctx.log(f"train_prm: importing the {init['format']} checkpoint {init['path']}")
  return import_language_model(init["format"], init["path"], ctx.policy_config(),
                               trim_vocab=init["trim_vocab"])


def stage_train_orm(ctx: Context) -> dict:
  """The ORM baseline: BCE on the outcome at the end of whole solutions."""
  return train_value_model(ctx, "orm", ctx.labelled_solutions(), "outcome",
                           verifier_trunk(ctx, "orm"))


def verifier_trunk(ctx: Context, kind: str) -> nnx.State:
  """The trained language model a verifier of `kind` starts from: the policy,
  or the larger policy (`verifier_train.trunk="large"`)."""
  return ctx.load_policy(large=ctx.verifier_trunk_is_large(kind)).params


def _methods(aggregations, search_aggregation: str) -> list[verifier_quality.Method]:
  methods = [verifier_quality.Method(f"PRM weighted best-of-N ({how})",
                                     "weighted_best_of_n", f"prm_{how}")
             for how in aggregations]
  return methods + [
      verifier_quality.Method(f"PRM best-of-N ({search_aggregation})", "best_of_n",
                              f"prm_{search_aggregation}"),
      verifier_quality.Method("ORM weighted best-of-N", "weighted_best_of_n", "orm"),
      verifier_quality.Method("ORM best-of-N", "best_of_n", "orm"),
      verifier_quality.Method("majority vote", "majority", None),
      verifier_quality.Method("pass@N", "pass_at_n", None),
  ]


def stage_eval_prm(ctx: Context) -> dict:
  """PRM quality: step AUC, calibration, and accuracy vs N of the selectors."""
  cfg, e = ctx.config, ctx.config.eval_prm
  test = ctx.examples("test")[:e.num_questions]
  pool = sample_pool(ctx, ctx.path("eval_prm", "pool.json"), [x.question for x in test],
                      e.pool_size, cfg.seed + 4, "eval_prm (pool)")
  records, _ = labelled_records(ctx, test, pool, set(), None, 0)
  prm, orm = ctx.load_verifier("prm"), ctx.load_verifier("orm")
  width = _padded_width(records)
  arrays = verifier_arrays(records, None, width)
  batch = cfg.sampling.batch_size
  # One trunk pass for both when they share a frozen trunk.
  prm_steps, orm_steps = scoring.score_steps_of([prm, orm], arrays, batch, ctx.mesh, ctx.rules)
  mask = arrays["step_mask"] > 0

  # Step AUC against the exact labels (every step of the pool).
  exact = np.zeros(mask.shape, bool)
  for row, record in enumerate(records):
    labels = record["exact_labels"] or ()  # None: the task has no exact labels
    exact[row, :len(labels)] = labels
  # Undefined (None) when every step has the same label, as with an untrained policy.
  both_classes = 0 < exact[mask].sum() < mask.sum()
  step_auc = {name: verifier_quality.roc_auc(steps[mask], exact[mask]) if both_classes
              else None for name, steps in (("prm", prm_steps), ("orm", orm_steps))}

  # Calibration against the Monte-Carlo labels of the held-out training questions.
  holdout = [r for r in ctx.labelled_solutions() if r["holdout"]]
  holdout_arrays = verifier_arrays(holdout, "steps", _padded_width(holdout))
  holdout_mask = holdout_arrays["step_mask"] > 0
  holdout_scores = scoring.score_steps(prm, holdout_arrays, batch, ctx.mesh, ctx.rules)
  predictions = holdout_scores[holdout_mask]
  targets = holdout_arrays["targets"][holdout_mask]
  reliability = verifier_quality.reliability_table(predictions, targets, e.calibration_bins)
  ece = verifier_quality.expected_calibration_error(predictions, targets, e.calibration_bins)

  # Accuracy vs N from the one pool.
  texts = [ctx.tokenizer.decode([t for t in r["tokens"] if t != ctx.tokenizer.eos_id])
           for r in records]
  answers = [ctx.task.extract_answer(t) for t in texts]
  shape = (len(test), e.pool_size)
  ids, valid = select.answer_ids([answers[q * e.pool_size:(q + 1) * e.pool_size]
                                  for q in range(len(test))])
  correct = np.array([r["correct"] for r in records]).reshape(shape)
  scores = {f"prm_{how}": np.asarray(select.aggregate_steps(prm_steps, mask, how)).reshape(shape)
            for how in e.aggregations}
  scores["orm"] = np.asarray(select.aggregate_steps(orm_steps, mask, "last")).reshape(shape)
  samples = verifier_quality.SamplePool(answer_ids=ids, valid=valid, correct=correct,
                                        scores=scores)
  errors = _scores_by_first_error(ctx, records, texts,
                                  scores[f"prm_{cfg.search.step_aggregation}"].reshape(-1))
  budgets = [2 ** i for i in range(int(np.log2(e.pool_size)) + 1)]
  curves = verifier_quality.accuracy_vs_n(
      samples, _methods(e.aggregations, cfg.search.step_aggregation), budgets, e.num_draws,
      cfg.seed + 7)
  # What search needs: right vs wrong sibling steps after one prefix.
  siblings = ({name: sibling_quality(records, steps, e.sibling_width, e.num_draws,
                                     cfg.seed + 8)
               for name, steps in (("prm", prm_steps), ("orm", orm_steps))}
              if both_classes else None)
  result = {
      "num_questions": len(test), "pool_size": e.pool_size, "num_draws": e.num_draws,
      "step_auc_vs_exact": step_auc, "siblings": siblings,
      "search_aggregation": cfg.search.step_aggregation,
      "prm_score_by_first_error": errors,
      "num_steps_scored": int(mask.sum()),
      "calibration": {"ece": ece, "num_steps": int(holdout_mask.sum()),
                      "reliability": reliability},
      "accuracy_vs_n": curves,
  }
  io_utils.write_json_atomic(ctx.path("eval_prm.json"), result)
  prm_figure.plot(result, ctx.path("eval_prm.png"))
  ctx.log(f"eval_prm: step AUC vs exact labels: PRM {step_auc['prm']}, "
          f"ORM {step_auc['orm']}; PRM ECE {ece:.3f}")
  if siblings:
    for name, quality in siblings.items():
      top = quality["top_of_m"]
      ctx.log(f"eval_prm: {name.upper()} sibling AUC {quality['auc']} over "
              f"{quality['num_pairs']} pairs; top of {top['m']} siblings right "
              f"{top['top']:.3f} vs a random one {top['random']:.3f} (mixed draws: "
              f"{top['top_mixed']} vs {top['random_mixed']})")
  return {"step_auc_vs_exact": step_auc, "ece": ece,
          "sibling_auc": {k: v["auc"] for k, v in (siblings or {}).items()}}


def _scores_by_first_error(ctx: Context, records: list[dict], texts: list[str],
                           scores: np.ndarray) -> dict | None:
  """{kind: {"count", "mean_score"}} of the PRM's solution scores by the kind of
  each solution's first error ("right" without one), for tasks that name
  them (`first_error`); None otherwise."""
  if not hasattr(ctx.task, "first_error"):
    return None
  by_kind: dict[str, list[float]] = {}
  for record, text, score in zip(records, texts, scores, strict=True):
    kind = ctx.task.first_error(record["question"], text) or "right"
    by_kind.setdefault(kind, []).append(float(score))
  return {kind: {"count": len(values), "mean_score": float(np.mean(values))}
          for kind, values in sorted(by_kind.items())}


def sibling_quality(records: list[dict], step_scores: np.ndarray, width: int,
                    num_draws: int, seed: int) -> dict:
  """Sibling AUC and top-of-M accuracy of one verifier's step scores.

  Args:
    records: labelled solutions (`labelled_records`) with exact labels.
    step_scores: float [len(records), S], the verifier's score at each step end.
    width: M, the siblings one beam-search round chooses among.
  """
  solutions = []
  for row, record in enumerate(records):
    ends = record["step_ends"]
    starts = [0] + [end + 1 for end in ends[:-1]]
    steps = [tuple(record["tokens"][a:b + 1]) for a, b in zip(starts, ends, strict=True)]
    labels = list(record["exact_labels"] or ())[:len(steps)]
    solutions.append(verifier_quality.ScoredSolution(
        record["question_index"], steps[:len(labels)], labels,
        step_scores[row, :len(labels)].tolist()))
  groups = verifier_quality.sibling_groups(solutions)
  return {**verifier_quality.sibling_auc(groups),
          "top_of_m": verifier_quality.top_of_m(groups, width, num_draws, seed)}
