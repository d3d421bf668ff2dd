"""Measurements behind `launch/bench.py`: the machine's limits, the sampler, the grader.

It sits with the launchers, above the package: the search benchmark runs a
trained workdir through the pipeline's context, which no library layer may
import.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttscale import parallel
from ttscale.models import (
    LanguageModel,
    ModelConfig,
    init_cache,
    policy_extend_fn,
    policy_forward_fn,
)
from ttscale.models.value import ValueModel
from ttscale.search import sampling
from ttscale.tasks.math import MathTask, normalize_answer
from ttscale.tasks.math_fuzz import fuzzed_answers
from ttscale.training.objectives import next_token_loss, step_value_loss
from ttscale.training.optimizer import make_optimizer
from ttscale.training.trainer import TrainState, make_train_step


def _best_seconds(fn, *args, repeats: int = 5) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def matmul_flops_per_second(size: int = 1024) -> float:
  """f32 [size, size] @ [size, size] through XLA, best of several runs."""
  a = jnp.ones((size, size), jnp.float32)
  seconds = _best_seconds(jax.jit(lambda x: x @ x), a)
  return 2 * size ** 3 / seconds


def memory_bytes_per_second(num_bytes: int = 64 << 20) -> float:
  """Read bandwidth: a jitted sum over `num_bytes` of f32, best of several runs.

  A read, because decoding reads the cache; a sum, because its output is tiny
  (a large output buffer would measure page faults, not memory).
  """
  a = jnp.ones((num_bytes // 4,), jnp.float32)
  seconds = _best_seconds(jax.jit(jnp.sum), a)
  return num_bytes / seconds


def decode_benchmark(config, batch_sizes: list[int], vocab_size: int,
                     prompt_length: int = 32, new_tokens: int = 96) -> dict:
  """Sampler throughput per batch size against the roofline (module docstring)."""
  model_config = ModelConfig.from_config(config.model, vocab_size)
  graphdef, params = nnx.split(LanguageModel(model_config, rngs=nnx.Rngs(0)))
  extend_fn = policy_extend_fn(graphdef)
  # No stop tokens: every row decodes exactly `new_tokens`.
  sampler_config = sampling.SamplerConfig(
      rule=sampling.SamplingRule(temperature=1.0),
      stop_at=sampling.StopAt.SOLUTION, max_new_tokens=new_tokens,
      step_id=-1, eos_id=-1)
  flops_rate = matmul_flops_per_second()
  bandwidth = memory_bytes_per_second()
  context = prompt_length + new_tokens / 2
  flops_per_token = model_config.flops_per_token(int(context))
  kv_bytes_per_token = (2 * model_config.num_layers * model_config.num_kv_heads
                        * model_config.head_dim * 4 * context)
  param_bytes = 4 * model_config.num_params()
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  rows = []
  for batch in batch_sizes:

    @jax.jit
    def run(params, prompts, rng, batch=batch):
      cache = init_cache(model_config, batch, prompt_length + new_tokens)
      lengths = jnp.full((batch,), prompt_length, jnp.int32)
      cache, pending = sampling.prefill(extend_fn, params, cache, prompts, lengths)
      out = sampling.sample(extend_fn, params, cache, pending,
                            jnp.ones((batch,), bool), rng, sampler_config)
      return out.tokens

    prompts = jnp.ones((batch, prompt_length), jnp.int32)
    # Rows split over every device when they divide evenly (one per core).
    split = batch % jax.device_count() == 0
    with parallel.maybe_sharding(mesh if split else None, (("batch", "data"),)):
      placed = params
      if split:
        prompts = parallel.shard_batch(prompts, mesh)
        # Replicated explicitly (`put_global`): with several processes, the
        # device_put jit would make of parameters on one device is refused.
        placed = parallel.replicate(params, mesh)
      seconds = _best_seconds(run, placed, prompts, jax.random.key(0))
    tokens_per_second = batch * new_tokens / seconds
    bytes_per_token = kv_bytes_per_token + param_bytes / batch
    roofline = 1.0 / max(flops_per_token / flops_rate, bytes_per_token / bandwidth)
    rows.append({
        "batch_size": batch,
        "tokens_per_second": round(tokens_per_second),
        "roofline_tokens_per_second": round(roofline),
        "roofline_fraction": round(tokens_per_second / roofline, 3),
        "bound": ("compute" if flops_per_token / flops_rate
                  > bytes_per_token / bandwidth else "memory"),
        "seconds": round(seconds, 4),
        "devices": jax.device_count() if split else 1,
    })
  return {
      "bench": "decode",
      "model": {"num_params": model_config.num_params(),
                "num_layers": model_config.num_layers,
                "embed_dim": model_config.embed_dim,
                "vocab_size": vocab_size},
      "prompt_length": prompt_length,
      "new_tokens": new_tokens,
      "mean_context": context,
      "flops_per_token": flops_per_token,
      "kv_bytes_per_token": kv_bytes_per_token,
      "machine": {"matmul_flops_per_second": round(flops_rate),
                  "memory_bytes_per_second": round(bandwidth),
                  "devices": [str(d) for d in jax.devices()]},
      "decode": rows,
  }


def search_benchmark(config, workdir: str, budgets: list[int] | None,
                     num_batches: int = 4) -> dict:
  """Wall time per question of best-of-N, beam (M=4), lookahead (k=3, M=4), DVTS (M=4)
  and beam (M=4) without distinct beams, with accuracy and distinct prefixes per round.

  Runs the trained policy and PRM of `workdir` on the first test questions
  (the same ones for every method at a budget), `num_batches` batches of
  `config.search.rows` rows each, spread over the devices as the sweep does,
  after a compiling call. (The compile time reported includes one batch.) The PRM's share
  of the time is measured by running each program again with every PRM call
  left out (scores 0): 1 - (time without PRM) / (time with PRM).
  """
  from ttscale.pipeline import Context
  from ttscale.search import common, runner, search_sweep
  from ttscale.search.budget import SearchSetting, budget_grid, check_on_grid

  ctx = Context(config, workdir, log=lambda _: None)
  policy, prm = ctx.load_policy(), ctx.load_verifier("prm")
  devices = list(ctx.mesh.devices.flat)
  options = search_sweep.search_options(config)
  test = ctx.examples("test")
  questions = [e.question for e in test]
  width = runner.prompt_width(ctx.tokenizer, ctx.task, questions)
  grid = budget_grid(config.search.max_budget)
  budgets = budgets or [n for n in grid if n >= 16][-3:]
  for budget in budgets:
    check_on_grid(budget, grid)
  rows = []
  for budget in budgets:
    per_batch = runner.questions_per_batch(budget, options.rows)
    # As the sweep batches them (shortest prompts first), every num_batches-th
    # batch of the test questions, so the timed batches span the lengths.
    batched = runner.batch_by_length(ctx.tokenizer, ctx.task, questions, per_batch)
    step = max(len(batched) // num_batches, 1)
    batch_indices = batched[::step][:num_batches]
    batch_questions = [[questions[i] for i in batch] for batch in batch_indices]
    settings = [SearchSetting("best_of_n", budget), SearchSetting("beam", budget, beam_width=4),
                SearchSetting("lookahead", budget, beam_width=4, lookahead=3),
                SearchSetting("dvts", budget, beam_width=4),
                # Beam search keeping copies of one prefix, as it did before
                # distinct beams: its diversity against the default's.
                SearchSetting("beam", budget, beam_width=4, distinct=False)]
    timings = {}
    for setting in settings:
      for with_prm in (True, False):
        models = common.SearchModels(policy.graphdef, prm.graphdef, policy.config,
                                     prm.config, with_prm=with_prm)

        def run(batches, seed, setting=setting, models=models):
          return runner.search_batches(
              setting, models, policy.params, prm.params, ctx.tokenizer, ctx.task, batches,
              options=options, width=width,
              rngs=[jax.random.key(seed + b) for b in range(len(batches))], devices=devices)

        start = time.perf_counter()
        run(batch_questions[:1], 0)  # compiles
        compile_and_run = time.perf_counter() - start
        start = time.perf_counter()
        results = [r for batch in run(batch_questions, 1) for r in batch]
        seconds = time.perf_counter() - start
        timings[(setting, with_prm)] = dict(
            seconds=seconds, compile=compile_and_run - seconds / num_batches,
            results=results)
    base = timings[(settings[0], True)]["seconds"]
    for setting in settings:
      timing = timings[(setting, True)]
      without_prm = timings[(setting, False)]["seconds"]
      num_questions = len(timing["results"])
      answers = [test[i].answer for batch in batch_indices for i in batch]
      accuracy = sum(ctx.task.grade(r.answer, answer)
                     for r, answer in zip(timing["results"], answers, strict=True)) / num_questions
      rows.append({
          "budget": budget, "method": setting.method, "params": setting.params,
          "questions": num_questions,
          "seconds_per_question": round(timing["seconds"] / num_questions, 4),
          "ratio_to_best_of_n": round(timing["seconds"] / base, 3),
          "generated_tokens_per_second": round(
              sum(r.policy_tokens for r in timing["results"]) / timing["seconds"]),
          "prm_time_fraction": round(1 - without_prm / timing["seconds"], 3),
          "compile_seconds": round(timing["compile"], 1),
          "accuracy": round(accuracy, 3),
          "distinct_prefixes_per_round": None if setting.method == "best_of_n" else round(
              float(np.mean([r.distinct_prefixes for r in timing["results"]])), 2),
      })
  return {"bench": "search", "rows_per_batch": options.rows, "workdir": workdir,
          "devices": jax.device_count(), "search": rows}


def grader_benchmark(count: int, seed: int = 0) -> dict:
  """The MATH grader on `fuzzed_answers(seed, count)`: each string is
  extracted from, normalised, and graded against itself and its predecessor.

  Returns:
    {"strings", "errors" (count of strings that raised), "first_error",
     "seconds_per_string" (mean), "max_seconds_per_string", "slowest_length"
     (characters of the slowest string), "longest_length", "seconds"}.
  """
  task = MathTask()
  strings = fuzzed_answers(seed, count)
  durations, errors, first_error = [], 0, None
  for index, text in enumerate(strings):
    started = time.perf_counter()
    try:
      answer = task.extract_answer(text)
      normalize_answer(text)
      task.grade(answer, text)
      task.grade(text, strings[index - 1])
      task.grade(text, text)
    except Exception as error:  # noqa: BLE001 - counted and reported, not raised
      errors += 1
      first_error = first_error or f"{type(error).__name__}: {error} on {text[:60]!r}"
    durations.append(time.perf_counter() - started)
  slowest = int(np.argmax(durations))
  return {"strings": len(strings), "errors": errors, "first_error": first_error,
          "seconds_per_string": sum(durations) / len(strings),
          "max_seconds_per_string": durations[slowest],
          "slowest_length": len(strings[slowest]),
          "longest_length": max(map(len, strings)), "seconds": sum(durations)}


def _lm_batch(rng: np.random.Generator, batch: int, width: int, vocab_size: int) -> dict:
  tokens = rng.integers(3, vocab_size, (batch, width + 1), dtype=np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "positions": np.broadcast_to(np.arange(width, dtype=np.int32), (batch, width)),
          "segment_ids": np.ones((batch, width), np.int32),
          "loss_mask": np.ones((batch, width), np.float32)}


def _value_batch(rng: np.random.Generator, batch: int, width: int, vocab_size: int,
                 num_steps: int = 8) -> dict:
  arrays = _lm_batch(rng, batch, width, vocab_size)
  ends = np.sort(rng.choice(np.arange(width // 2, width), (batch, num_steps)), axis=1)
  return {"inputs": arrays["inputs"], "positions": arrays["positions"],
          "step_ends": ends.astype(np.int32),
          "step_mask": np.ones((batch, num_steps), np.float32),
          "targets": rng.random((batch, num_steps)).astype(np.float32)}


def train_benchmark(config, vocab_size: int, steps: int = 5) -> dict:
  """Training throughput of the policy, the larger policy and the PRM, each at its
  config's batch size and a row width of `data.seq_len`, and of the revision
  model (the policy fine-tuned on rows of `revision.seq_len`, at
  `revision_train.batch_size`), against the machine's measured matmul rate.

  A training step costs about 3x the forward FLOPs (backward: 2x), counted at
  the mean context (half the width): `3 * flops_per_token(width / 2)` per
  token; 1x for a PRM whose trunk is kept as trained (`step_likelihood`).
  Random tokens: the work does not depend on them.
  """
  width = config.data.seq_len
  rng = np.random.default_rng(0)
  flops_rate = matmul_flops_per_second()
  verifier_trunk = config.large_model if config.verifier_train.trunk == "large" else config.model
  # The PRM's head reads its trunk's step likelihood when configured: any two
  # token ids stand for the step delimiter and end of solution here.
  value_model = functools.partial(
      ValueModel, step_likelihood=(1, 2) if config.verifier_train.step_likelihood else ())
  # (name, network block, its training block, model class, batch builder, loss,
  # forward passes a step costs)
  # A PRM that reads its trunk's step likelihood keeps the trunk as trained
  # (no gradient through it): a step costs one forward, not three.
  prm_passes = 1 if config.verifier_train.step_likelihood else 3
  setups = [("policy", config.model, config.train, width, LanguageModel, _lm_batch, "lm", 3),
            ("large", config.large_model, config.train, width, LanguageModel, _lm_batch,
             "lm", 3),
            ("prm", verifier_trunk, config.verifier_train, width, value_model, _value_batch,
             "value", prm_passes),
            ("revision", config.model, config.revision_train, config.revision.seq_len,
             LanguageModel, _lm_batch, "lm", 3)]
  rows = []
  for name, block, train_config, width, module, make_batch, loss, passes in setups:
    model_config = ModelConfig.from_config(block, vocab_size)
    graphdef, params = nnx.split(module(model_config, rngs=nnx.Rngs(0)))
    forward = policy_forward_fn(graphdef)

    def loss_fn(params, batch, dropout_rng, forward=forward, loss=loss):
      if loss == "lm":
        logits = forward(params, batch["inputs"], batch["positions"], batch["segment_ids"],
                         dropout_rng)
        return next_token_loss(logits, batch["targets"], batch["loss_mask"])
      logits = forward(params, batch["inputs"], batch["positions"], None, dropout_rng)
      return step_value_loss(logits, batch["step_ends"], batch["step_mask"], batch["targets"])

    optimizer = make_optimizer(train_config)
    step = jax.jit(make_train_step(loss_fn, optimizer, seed=0), donate_argnums=0)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=optimizer.init(params))
    batch = jax.tree.map(jnp.asarray, make_batch(rng, train_config.batch_size, width,
                                                 vocab_size))
    state, _ = step(state, batch)  # compile
    jax.block_until_ready(state)
    started = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - started) / steps
    tokens_per_second = train_config.batch_size * width / seconds
    flops_per_token = passes * model_config.flops_per_token(width // 2)
    rows.append({"model": name, "num_params": model_config.num_params(),
                 "batch_size": train_config.batch_size, "width": width,
                 "seconds_per_step": round(seconds, 4), "forward_passes_per_step": passes,
                 "tokens_per_second": round(tokens_per_second),
                 "flops_per_second": round(flops_per_token * tokens_per_second),
                 "matmul_peak_fraction": round(flops_per_token * tokens_per_second
                                               / flops_rate, 3)})
  return {"bench": "train", "width": config.data.seq_len,
          "machine": {"matmul_flops_per_second": round(flops_rate)}, "train": rows}
