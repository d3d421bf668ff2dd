"""Plays one process of a cluster (or the whole single-process reference) for
`tests/test_distributed.py`: samples, scores, searches and trains on a 4-device
"data" mesh with a shared workdir, and writes what it got to a JSON file.

  python tests/distributed_worker.py OUT WORKDIR PORT PROCESS_ID NUM_PROCESSES
"""

import json
import os
import sys
import time
import traceback
import types

import jax


def _exit_at_once(kind, error, trace) -> None:
  # Exiting normally, a failed process would wait for the others in
  # `jax.distributed`'s shutdown, and they for it at their next barrier.
  traceback.print_exception(kind, error, trace)
  sys.stderr.flush()
  os._exit(1)


sys.excepthook = _exit_at_once

jax.config.update("jax_cpu_collectives_implementation", "gloo")
out_path, workdir, port = sys.argv[1:4]
process_id, num_processes = int(sys.argv[4]), int(sys.argv[5])
if num_processes > 1:
  jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                             process_id=process_id)

import numpy as np  # noqa: E402
from ml_collections import config_dict  # noqa: E402

from ttscale import distributed, outcomes, parallel, testing  # noqa: E402
from ttscale.data.batching import TrainBatches, pack_sequences  # noqa: E402
from ttscale.data.tokenizer import train_tokenizer  # noqa: E402
from ttscale.data.verifier_data import find_step_ends  # noqa: E402
from ttscale.models import Network, ValueModel, policy_forward_fn  # noqa: E402
from ttscale.search import common, generate, runner, sampling, scoring  # noqa: E402
from ttscale.search.budget import SearchSetting  # noqa: E402
from ttscale.tasks.arith import ArithTask  # noqa: E402
from ttscale.training.checkpoints import Checkpointer  # noqa: E402
from ttscale.training.objectives import next_token_loss  # noqa: E402
from ttscale.training.trainer import EarlyStopping, train  # noqa: E402

QUESTIONS = ["1+2", "3+4+5", "6+7", "8+9+1+2", "2+2"]
assert jax.device_count() == 4 and jax.process_count() == num_processes
mesh = parallel.make_mesh(config_dict.ConfigDict(dict(data=4, model=1)))
rules = (("batch", "data"),)
task = ArithTask(max_ops=3)
# Digits, "+" and the special pieces: the tiny policy's 16 ids.
tokenizer = train_tokenizer(["1+2"], os.path.join(workdir, "tokenizer.model"))
graphdef, params, config = testing.tiny_policy()
prm_graphdef, prm_params, _ = testing.tiny_policy(seed=1, module=ValueModel)
policy = Network(graphdef, params, config)
result = {"process_index": jax.process_index(), "local_devices": jax.local_device_count()}


def arrive_late() -> None:
  """Process 1 comes a second late: a process that writes a shared file
  before the others have read it shows."""
  if jax.process_index() == 1:
    time.sleep(1)


# Rows sharded over both processes' devices, read back on each.
samples = generate.sample_solutions(
    policy, tokenizer, task, QUESTIONS, num_samples=2, rule=sampling.SamplingRule(1.0),
    max_new_tokens=8, batch_size=8, seed=0, mesh=mesh, rules=rules, log=lambda _: None)
result["texts"] = samples.texts
records = [{"prompt": [tokenizer.bos_id] + tokenizer.encode(task.prompt(q)),
            "tokens": [int(t) for t in tokens],
            "step_ends": find_step_ends([int(t) for t in tokens], tokenizer)}
           for q, row in zip(QUESTIONS, samples.tokens, strict=True) for tokens in row]
verifier = Network(prm_graphdef, prm_params, config)
result["scores"] = scoring.last_step_scores(verifier, records, 8, mesh, rules).tolist()

# Search batches on the mesh's devices, parameters replicated on the mesh
# (as the pipeline loads them): 3 batches, 4 devices over 2 processes.
options = runner.SearchOptions(rule=sampling.SamplingRule(1.0), max_new_tokens=8,
                               max_step_tokens=4, max_rounds=4, rows=4)
setting = SearchSetting("best_of_n", 2)
batches = [QUESTIONS[0:2], QUESTIONS[2:4], QUESTIONS[4:]]
found = runner.search_batches(
    setting, common.SearchModels(graphdef, prm_graphdef, config, config),
    parallel.replicate(params, mesh), parallel.replicate(prm_params, mesh), tokenizer, task,
    batches, options=options, width=runner.prompt_width(tokenizer, task, QUESTIONS),
    rngs=[jax.random.key(b) for b in range(len(batches))], devices=list(mesh.devices.flat))
result["search"] = [{"answer": r.answer, "candidates": r.candidates,
                     "scores": r.scores.tolist(), "flops": r.flops,
                     "prefix_flops": r.prefix_flops.tolist()}
                    for batch in found for r in batch]

# The outcome table: every process appends, one writes. Opened once before
# (its meta written), as by an earlier run, then again by a late process 1.
table_path = os.path.join(workdir, "outcomes.jsonl")
outcomes.OutcomeTable(table_path, {"seed": 0})
arrive_late()
table = outcomes.OutcomeTable(table_path, {"seed": 0})
table.append([outcomes.Outcome(
    question_index=i, level=1, method="best_of_n", params="", budget=2, seed=0,
    answer=r["answer"], correct=False, generations=2, flops=r["flops"], seconds=0.0)
    for i, r in enumerate(result["search"])])
result["table_rows"] = len(table)

# Two steps of training with early stopping: metrics, checkpoints, best.
rng = np.random.default_rng(0)
sequences = [rng.integers(4, 16, size=n) for n in rng.integers(3, 12, size=24)]
packed = pack_sequences(sequences, [np.arange(len(s)) >= len(s) // 2 for s in sequences],
                        seq_len=16)
forward = policy_forward_fn(graphdef)


def loss_fn(params, batch, dropout_rng):
  logits = forward(params, batch["inputs"], batch["positions"], batch["segment_ids"],
                   dropout_rng)
  return next_token_loss(logits, batch["targets"], batch["loss_mask"])


validation_batch = parallel.shard_batch(TrainBatches(packed, 4, seed=2).batch(0), mesh)
validation_loss = jax.jit(lambda p, b: loss_fn(p, b, jax.random.key(0))[0])
train_config = types.SimpleNamespace(
    learning_rate=1e-2, warmup_steps=0, num_steps=2, end_learning_rate_fraction=0.1,
    weight_decay=0.01, b1=0.9, b2=0.95, grad_clip_norm=1.0, checkpoint_every=2, log_every=1,
    batch_size=4)
arrive_late()
stopping = EarlyStopping(lambda p: float(validation_loss(p, validation_batch)), patience=2,
                         best_checkpointer=Checkpointer(os.path.join(workdir, "best"), {}, 1))
trained = train(name="t", loss_fn=loss_fn, params=params,
                batches=TrainBatches(packed, batch_size=4, seed=1), train_config=train_config,
                checkpointer=Checkpointer(os.path.join(workdir, "state"), {}),
                metrics_path=os.path.join(workdir, "metrics.jsonl"), seed=0, mesh=mesh,
                rules=rules, early_stopping=stopping, log=lambda _: None)
result["trained"] = [float(np.sum(x, dtype=np.float64))
                     for x in jax.tree.leaves(parallel.to_host(trained))]
distributed.barrier("worker: done")
with open(out_path, "w") as f:
  json.dump(result, f)
