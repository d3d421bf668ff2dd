"""The study's stages, in order, each resumable from the workdir.

A stage that finished writes `stages/<name>.json` (atomically, with its wall
time and summary); a re-run skips it. A stage killed half-way resumes from its
own checkpoints or outputs. Every stage is a plain function of a `Context`,
importable from a notebook:

    ctx = Context(config, workdir)
    run_stage(ctx, "eval_policy")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from ttscale import io_utils, parallel
from ttscale.data import arith_builder, batching
from ttscale.data.tokenizer import Tokenizer, train_tokenizer
from ttscale.models import LanguageModel, ModelConfig, policy_forward_fn
from ttscale.progress import format_seconds
from ttscale.search import generate, sampling
from ttscale.tasks import get_task
from ttscale.training.checkpoints import Checkpointer, check_spec, first_difference
from ttscale.training.objectives import next_token_loss
from ttscale.training.optimizer import make_optimizer
from ttscale.training.trainer import TrainState, train

# Fields that change how a stage reports or checkpoints, never its result.
_BOOKKEEPING = ("log_every", "checkpoint_every", "max_checkpoints")


def _without(block: dict, keys) -> dict:
  return {k: v for k, v in block.items() if k not in keys}


class Context:
  """What the stages share: config, workdir paths, lazily loaded artefacts."""

  def __init__(self, config, workdir: str, log: Callable[[str], None] = print):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.log = log
    self.task = get_task(config.task)

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  @functools.cached_property
  def data(self) -> dict:
    return arith_builder.build_arith_data(self.config.task, self.config.data,
                                          self.path("data"))

  def examples(self, split: str):
    return arith_builder.read_examples(self.data[split])

  @functools.cached_property
  def tokenizer(self) -> Tokenizer:
    path = self.path("tokenizer.model")
    if not os.path.exists(path):
      raise ValueError(f"{path} is missing: run the 'data' stage first")
    return Tokenizer.load(path)

  @functools.cached_property
  def mesh(self):
    return parallel.make_mesh(self.config.mesh)

  @property
  def rules(self):
    return tuple(tuple(rule) for rule in self.config.mesh.rules)

  def policy_config(self) -> ModelConfig:
    return ModelConfig.from_config(self.config.model, self.tokenizer.vocab_size)

  def policy_spec(self) -> dict:
    """What a policy checkpoint must have been trained with to be reused."""
    return {"tokenizer": self.tokenizer.fingerprint,
            "model": dataclasses.asdict(self.policy_config()),
            "train": _without(self.config.train.to_dict(), _BOOKKEEPING),
            "data": self.config.data.to_dict(),
            "task": self.config.task.to_dict()}

  def policy_checkpointer(self) -> Checkpointer:
    return Checkpointer(self.path("policy"), self.policy_spec(),
                        max_to_keep=self.config.train.max_checkpoints)

  def load_policy(self) -> generate.Policy:
    """The trained policy from its last checkpoint."""
    if not os.path.isdir(self.path("policy")):
      raise ValueError(f"{self.path('policy')} is missing: run the "
                       "'train_policy' stage first")
    checkpointer = self.policy_checkpointer()
    step = checkpointer.latest_step()
    if step is None or step < self.config.train.num_steps:
      raise ValueError(f"{checkpointer.directory}: no finished policy "
                       "checkpoint; run the 'train_policy' stage first")
    model_config = self.policy_config()
    graphdef, params = nnx.split(nnx.eval_shape(
        lambda: LanguageModel(model_config, rngs=nnx.Rngs(0))))
    optimizer = make_optimizer(self.config.train)
    abstract = jax.eval_shape(lambda p: TrainState(
        step=np.int32(0), params=p, opt_state=optimizer.init(p)), params)
    # Restored replicated on this run's mesh, whatever mesh saved it.
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
    state = checkpointer.restore(step, abstract)
    checkpointer.close()
    return generate.Policy(graphdef, state.params, model_config)


# ----------------------------------------------------------------- stages

def stage_data(ctx: Context) -> dict:
  """Builds the TFDS splits and trains the tokenizer on the train split."""
  data = ctx.data
  path = ctx.path("tokenizer.model")
  if not os.path.exists(path):
    train = ctx.examples("train")
    texts = (ctx.task.prompt(e.question) + e.solution for e in train)
    train_tokenizer(texts, path)
  tokenizer = ctx.tokenizer
  return {"splits": {name: len(source) for name, source in data.items()},
          "vocab_size": tokenizer.vocab_size,
          "tokenizer_fingerprint": tokenizer.fingerprint}


def _packed_train_batches(ctx: Context) -> batching.TrainBatches:
  encoded = [batching.encode_example(ctx.tokenizer, ctx.task, e)
             for e in ctx.examples("train")]
  packed = batching.pack_sequences([t for t, _ in encoded],
                                   [m for _, m in encoded],
                                   ctx.config.data.seq_len)
  return batching.TrainBatches(packed, ctx.config.train.batch_size,
                               seed=ctx.config.seed)


def stage_train_policy(ctx: Context) -> dict:
  """Trains the policy with next-token loss on solution tokens."""
  model_config = ctx.policy_config()
  graphdef, params = nnx.split(
      LanguageModel(model_config, rngs=nnx.Rngs(ctx.config.seed)))
  forward = policy_forward_fn(graphdef)

  def loss_fn(params, batch, dropout_rng):
    logits = forward(params, batch["inputs"], batch["positions"],
                     batch["segment_ids"], dropout_rng)
    return next_token_loss(logits, batch["targets"], batch["loss_mask"])

  batches = _packed_train_batches(ctx)
  ctx.log(f"train_policy: {model_config.num_params():,} parameters, "
          f"{batches.steps_per_epoch} steps per epoch")
  checkpointer = ctx.policy_checkpointer()
  train(name="train_policy", loss_fn=loss_fn, params=params, batches=batches,
        train_config=ctx.config.train, checkpointer=checkpointer,
        metrics_path=ctx.path("metrics.jsonl"), seed=ctx.config.seed,
        mesh=ctx.mesh, rules=ctx.rules, log=ctx.log)
  checkpointer.close()
  return {"num_params": model_config.num_params(),
          "num_steps": ctx.config.train.num_steps}


def stage_eval_policy(ctx: Context) -> dict:
  """Per difficulty level of the test split: pass@1 (K samples) and greedy."""
  policy = ctx.load_policy()
  test = ctx.examples("test")
  questions = [e.question for e in test]
  cfg = ctx.config
  common = dict(max_new_tokens=cfg.sampling.max_new_tokens,
                batch_size=cfg.sampling.batch_size, seed=cfg.seed + 1,
                mesh=ctx.mesh, rules=ctx.rules, log=ctx.log)
  sampled = generate.sample_solutions(
      policy, ctx.tokenizer, ctx.task, questions,
      num_samples=cfg.eval.num_samples,
      rule=sampling.SamplingRule(cfg.sampling.temperature, cfg.sampling.top_p),
      progress_name="eval_policy (sampled)", **common)
  greedy = generate.sample_solutions(
      policy, ctx.tokenizer, ctx.task, questions, num_samples=1,
      rule=sampling.SamplingRule(temperature=0.0),
      progress_name="eval_policy (greedy)", **common)

  def correct(texts, example):
    return [ctx.task.grade(ctx.task.extract_answer(t), example.answer) for t in texts]

  sampled_correct = [np.mean(correct(t, e)) for t, e in zip(sampled.texts, test, strict=True)]
  greedy_correct = [correct(t, e)[0] for t, e in zip(greedy.texts, test, strict=True)]
  levels = sorted({e.level for e in test})
  per_level = {}
  for level in levels:
    idx = [i for i, e in enumerate(test) if e.level == level]
    per_level[str(level)] = {
        "num_questions": len(idx),
        "pass_at_1": float(np.mean([sampled_correct[i] for i in idx])),
        "greedy_accuracy": float(np.mean([greedy_correct[i] for i in idx])),
    }
  result = {
      "num_samples": cfg.eval.num_samples,
      "temperature": cfg.sampling.temperature,
      "levels": per_level,
      "overall": {"pass_at_1": float(np.mean(sampled_correct)),
                  "greedy_accuracy": float(np.mean(greedy_correct))},
  }
  io_utils.write_json_atomic(ctx.path("eval_policy.json"), result)
  for level, row in per_level.items():
    ctx.log(f"eval_policy: level {level}: pass@1 {row['pass_at_1']:.3f} "
            f"greedy {row['greedy_accuracy']:.3f}")
  return {"overall": result["overall"],
          "sampled_tokens_per_second": round(
              sampled.num_generated_tokens / sampled.seconds)}


STAGES: dict[str, Callable[[Context], dict]] = {
    "data": stage_data,
    "train_policy": stage_train_policy,
    "eval_policy": stage_eval_policy,
}

# The config blocks each stage's output depends on. A finished stage records
# them; re-running with other values is an error, not a silent reuse.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "data": ("task", "data"),
    "train_policy": ("seed", "task", "data", "model", "train"),
    "eval_policy": ("seed", "task", "data", "model", "train", "sampling", "eval"),
}


def _stage_inputs(config, name: str) -> dict:
  values = {}
  for key in STAGE_INPUTS[name]:
    value = config[key]
    value = value.to_dict() if hasattr(value, "to_dict") else value
    values[key] = _without(value, _BOOKKEEPING) if key == "train" else value
  return json.loads(json.dumps(values))


def validate_workdir(ctx: Context, names: list[str]) -> None:
  """Checks, reading only, that the workdir was made with this config.

  Raises ValueError naming the first field that differs from a finished
  stage's record or from the policy checkpoint's spec.
  """
  for name in names:
    marker = ctx.path("stages", f"{name}.json")
    if not os.path.exists(marker):
      continue
    recorded = io_utils.read_json(marker).get("inputs")
    if not isinstance(recorded, dict):
      raise ValueError(f"{marker}: no 'inputs' record; the workdir is damaged")
    difference = first_difference(_stage_inputs(ctx.config, name), recorded)
    if difference:
      raise ValueError(
          f"stage {name} in {ctx.workdir} was done with other settings: "
          f"{difference}; use a new --workdir or the settings it was made with")
  if os.path.exists(ctx.path("tokenizer.model")):
    check_spec(ctx.path("policy"), ctx.policy_spec())


def check_stage_names(names) -> list[str]:
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise ValueError(f"--stages: unknown stage {unknown[0]!r}; expected some "
                     f"of {', '.join(STAGES)}")
  return list(names)


def run_stage(ctx: Context, name: str) -> dict:
  """Runs one stage unless its marker says it is done; returns the marker."""
  marker = ctx.path("stages", f"{name}.json")
  if os.path.exists(marker):
    record = io_utils.read_json(marker)
    ctx.log(f"stage {name}: already done "
            f"({format_seconds(record['seconds'])}), skipped")
    return record
  ctx.log(f"stage {name}: running")
  started = time.time()
  summary = STAGES[name](ctx)
  record = {"stage": name, "seconds": time.time() - started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary,
            "inputs": _stage_inputs(ctx.config, name)}
  io_utils.write_json_atomic(marker, record)
  ctx.log(f"stage {name}: done in {format_seconds(record['seconds'])}")
  return record


def run(config, workdir: str, stages=None, log: Callable[[str], None] = print) -> dict:
  """Runs `stages` (default: all, in order); returns {stage: marker record}."""
  names = check_stage_names(stages or list(STAGES))
  ctx = Context(config, workdir, log)
  validate_workdir(ctx, names)
  log(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; "
      f"mesh {dict(ctx.mesh.shape)}")
  records = {name: run_stage(ctx, name) for name in names}
  total = sum(r["seconds"] for r in records.values())
  timings = ", ".join(f"{name} {format_seconds(record['seconds'])}"
                      for name, record in records.items())
  log(f"stages: {timings}; total {format_seconds(total)}")
  return records
