"""The policy's stages: data and tokenizer, policy training, policy evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from ttscale import io_utils, layout
from ttscale.data import batching
from ttscale.data.pretrained_tokenizer import load_tokenizer
from ttscale.data.tokenizer import train_tokenizer
from ttscale.models import LanguageModel
from ttscale.models.checkpoint_import import import_language_model
from ttscale.pipeline.context import Context
from ttscale.scaling import difficulty
from ttscale.search import generate, sampling
from ttscale.training.language_model import next_token_loss_fn
from ttscale.training.trainer import train


def stage_data(ctx: Context) -> dict:
  """Builds the TFDS splits and the tokenizer: trained on the train split, or
  the imported checkpoint's (`checkpoint.tokenizer`), copied into the workdir."""
  data = ctx.data
  path = ctx.path(layout.TOKENIZER)
  if not epath.Path(path).exists():
    source = ctx.config.checkpoint.tokenizer
    if source:
      load_tokenizer(source)  # a bad file fails here, before the workdir has it
      io_utils.write_bytes_atomic(path, epath.Path(source).read_bytes())
    else:
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
  data = ctx.config.data
  encoded, longer = batching.fit_to_seq_len(encoded, data.seq_len, data.too_long)
  if longer:
    ctx.log(f"data: {longer} training examples longer than data.seq_len={data.seq_len}: "
            f"{'cut to it' if data.too_long == 'truncate' else 'left out'} "
            f"(data.too_long={data.too_long!r})")
  packed = batching.pack_sequences([t for t, _ in encoded],
                                   [m for _, m in encoded],
                                   data.seq_len)
  return batching.TrainBatches(packed, ctx.config.train.batch_size,
                               seed=ctx.config.seed)


def stage_train_policy(ctx: Context) -> dict:
  """Trains the policy with next-token loss on solution tokens."""
  return train_language_model(ctx, large=False)


def stage_train_large(ctx: Context) -> dict:
  """Trains the larger policy (`large_model`) on the same data and tokens."""
  return train_language_model(ctx, large=True)


def _has_checkpoint(ctx: Context, large: bool) -> bool:
  """Whether the policy (or the larger one) has a checkpoint to resume from."""
  if not epath.Path(ctx.path(layout.LARGE if large else layout.POLICY)).is_dir():
    return False
  checkpointer = ctx.policy_checkpointer(large)
  step = checkpointer.latest_step()
  checkpointer.close()
  return step is not None


def train_language_model(ctx: Context, large: bool) -> dict:
  """The policy (or the larger one): next-token loss on solution tokens, from
  random weights or from an imported checkpoint (`checkpoint.policy`/`.large`)."""
  name = "train_large" if large else "train_policy"
  model_config = ctx.policy_config(large)
  init = ctx.init_checkpoint("large" if large else "policy")
  if init is None:
    graphdef, params = nnx.split(
        LanguageModel(model_config, rngs=nnx.Rngs(ctx.config.seed)))
  else:
    graphdef, abstract = nnx.split(nnx.eval_shape(
        lambda: LanguageModel(model_config, rngs=nnx.Rngs(0))))
    if _has_checkpoint(ctx, large):
      # Resuming: the checkpoint's values replace these; only shapes matter.
      params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract)
    else:  # imported before the workdir is touched: a bad checkpoint changes nothing
      ctx.log(f"{name}: importing the {init['format']} checkpoint {init['path']}")
      params = import_language_model(init["format"], init["path"], model_config,
                                     trim_vocab=ctx.config.checkpoint.trim_vocab)
  checkpointer = ctx.policy_checkpointer(large)
  batches = _packed_train_batches(ctx)
  ctx.log(f"{name}: {model_config.num_params():,} parameters, "
          f"{batches.steps_per_epoch} steps per epoch")
  train(name=name, loss_fn=next_token_loss_fn(graphdef), params=params, batches=batches,
        train_config=ctx.config.train, checkpointer=checkpointer,
        metrics_path=ctx.path(layout.METRICS), seed=ctx.config.seed,
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
      rule=ctx.sampling_rule(), progress_name="eval_policy (sampled)", **common)
  greedy = generate.sample_solutions(
      policy, ctx.tokenizer, ctx.task, questions, num_samples=1,
      rule=sampling.SamplingRule(temperature=0.0),
      progress_name="eval_policy (greedy)", **common)

  def correct(texts, example):
    return [ctx.task.grade(ctx.task.extract_answer(t), example.answer) for t in texts]

  sampled_correct = [np.mean(correct(t, e)) for t, e in zip(sampled.texts, test, strict=True)]
  greedy_correct = [correct(t, e)[0] for t, e in zip(greedy.texts, test, strict=True)]
  per_level = difficulty.accuracy_by_level([e.level for e in test], sampled_correct,
                                           greedy_correct)
  result = {
      "num_samples": cfg.eval.num_samples,
      "temperature": cfg.sampling.temperature,
      "levels": per_level,
      "overall": {"pass_at_1": float(np.mean(sampled_correct)),
                  "greedy_accuracy": float(np.mean(greedy_correct))},
  }
  io_utils.write_json_atomic(ctx.path(layout.EVAL_POLICY), result)
  for level, row in per_level.items():
    ctx.log(f"eval_policy: level {level}: pass@1 {row['pass_at_1']:.3f} "
            f"greedy {row['greedy_accuracy']:.3f}")
  return {"overall": result["overall"],
          "sampled_tokens_per_second": round(
              sampled.num_generated_tokens / sampled.seconds)}
