"""Tests that a mesh changes where the numbers live, not what they are.

On 8 fake CPU devices (`tests/conftest.py`), with the logical-axis rules of
`configs/arith.py`: the forward pass, a training step, the greedy sampler and
beam search give the same numbers on (data, model) = (8, 1), (2, 4) and
(1, 8) meshes as on one device (on (1, 8) the tiny model's kv heads, fewer
than 8, stay replicated), revision chains on the first two; and the
trainer places its state so that its step compiles once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, struct
from jax.sharding import PartitionSpec
from ml_collections import config_dict

from configs import arith
from ttscale import parallel, testing
from ttscale.models import Network, init_cache, policy_extend_fn, policy_forward_fn
from ttscale.search import sampling
from ttscale.training.checkpoints import Checkpointer
from ttscale.training.objectives import next_token_loss
from ttscale.training.optimizer import make_optimizer
from ttscale.training.trainer import train

MESH_SHAPES = [(8, 1), (2, 4), (1, 8)]
NUM_ROWS = 8
LENGTH = 8
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _arith_config(variant: str = "tiny") -> config_dict.ConfigDict:
  return arith.get_config(variant)


RULES = tuple(_arith_config().mesh.rules)


@functools.cache
def _mesh(data: int, model: int):
  return parallel.make_mesh(config_dict.ConfigDict(dict(data=data, model=model)))


def _on(mesh_shape):
  """(mesh, sharding context) for `mesh_shape`, or (None, no-op) for one device."""
  if mesh_shape is None:
    return None, contextlib.nullcontext()
  mesh = _mesh(*mesh_shape)
  return mesh, parallel.sharding_context(mesh, RULES)


def _run_on(mesh_shape, fn, params, batch):
  """`fn(params, batch)`, sharded by the rules on `mesh_shape` (None: one device)."""
  mesh, context = _on(mesh_shape)
  with context:
    if mesh is not None:
      params = parallel.shard_params(params, mesh, RULES)
      batch = parallel.shard_batch(batch, mesh)
    return fn(params, batch)


def test_device_count_is_eight():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 CPU devices"


# ------------------------------------------------------------------- rules

def test_param_specs_follow_the_arith_rules():
  _, params, _ = testing.tiny_policy()
  specs = parallel.param_specs(params, RULES)
  block = specs["decoder"]["blocks"][0]
  expected = {
      ("mlp", "gate"): PartitionSpec(None, "model"),
      ("mlp", "up"): PartitionSpec(None, "model"),
      ("mlp", "down"): PartitionSpec("model", None),
      ("attention", "query"): PartitionSpec(None, "model", None),
      ("attention", "key"): PartitionSpec(None, "model", None),
      ("attention", "value"): PartitionSpec(None, "model", None),
      ("attention", "out"): PartitionSpec("model", None, None),
      ("attention_norm", "scale"): PartitionSpec(None),
  }
  for (module, name), spec in expected.items():
    assert block[module][name].get_value() == spec, (module, name)
  assert specs["decoder"]["embedding"].get_value() == PartitionSpec(None, None)
  assert specs["lm_head"].get_value() == PartitionSpec(None, None)


def test_a_mesh_axis_shards_at_most_one_dimension():
  # "heads" takes "model"; "mlp" maps to "model" too but must stay replicated.
  assert parallel.logical_to_spec(("heads", "mlp"), RULES) == PartitionSpec("model", None)
  assert parallel.logical_to_spec(("batch", "unknown", None), RULES) == PartitionSpec(
      "data", None, None)


def test_a_dimension_the_mesh_axis_does_not_divide_stays_replicated():
  _, params, config = testing.tiny_policy()
  assert config.num_kv_heads % 8, "the tiny model should have fewer than 8 kv heads"
  specs = parallel.param_specs(params, RULES, _mesh(1, 8))
  attention = specs["decoder"]["blocks"][0]["attention"]
  heads_axis = None if config.num_heads % 8 else "model"
  assert attention["query"].get_value() == PartitionSpec(None, heads_axis, None)
  assert attention["key"].get_value() == PartitionSpec(None, None, None)
  assert attention["value"].get_value() == PartitionSpec(None, None, None)
  assert specs["decoder"]["blocks"][0]["mlp"]["gate"].get_value() == PartitionSpec(
      None, "model")
  # The axis left free by an indivisible dimension goes to a later one.
  sizes = {"data": 2, "model": 8}
  assert parallel.logical_to_spec(("heads", "mlp"), RULES, (4, 16), sizes) == PartitionSpec(
      None, "model")
  assert parallel.logical_to_spec(("batch", "heads"), RULES, (3, 8), sizes) == PartitionSpec(
      None, "model")


def _constraints(fn, x) -> list[str]:
  """The sharding-constraint lines of `fn(x)` lowered on the (1, 8) mesh."""
  with parallel.sharding_context(_mesh(1, 8), RULES):
    text = jax.jit(fn).lower(x).as_text()
  return [line for line in text.splitlines() if "sharding_constraint" in line]


def test_an_activation_constraint_leaves_an_indivisible_dimension_replicated():
  # 4 kv heads on 8 devices: constrained to "model", XLA would pad them to 8.
  kv_heads = _constraints(lambda x: parallel.constrain(x, ("batch", "kv_heads")),
                          jnp.ones((2, 4)))
  heads = _constraints(lambda x: parallel.constrain(x, ("batch", "heads")),
                       jnp.ones((2, 8)))
  assert kv_heads and not any('"model"' in line for line in kv_heads), kv_heads
  assert any('"model"' in line for line in heads), heads


@pytest.mark.parametrize("data,model", [(3, 2), (16, 1), (-1, 3), (-1, -1)])
def test_make_mesh_rejects_shapes_that_do_not_cover_the_devices(data, model):
  with pytest.raises(ValueError, match=r"mesh\.data"):
    parallel.make_mesh(config_dict.ConfigDict(dict(data=data, model=model)))


def test_make_mesh_fills_a_minus_one_axis_with_the_remaining_devices():
  mesh = parallel.make_mesh(config_dict.ConfigDict(dict(data=-1, model=4)))
  assert dict(mesh.shape) == {"data": 2, "model": 4}


# ------------------------------------------------------ forward and train

def _train_batch() -> dict[str, np.ndarray]:
  """8 rows of two packed segments each, with random next-token targets."""
  rng = np.random.default_rng(0)
  vocab = testing.TINY_CONFIG.vocab_size
  tokens = rng.integers(0, vocab, (NUM_ROWS, LENGTH)).astype(np.int32)
  positions = np.broadcast_to(np.concatenate([np.arange(3), np.arange(5)]), tokens.shape)
  segment_ids = np.broadcast_to(np.array([1, 1, 1, 2, 2, 2, 2, 2]), tokens.shape)
  targets = rng.integers(0, vocab, tokens.shape).astype(np.int32)
  loss_mask = (rng.random(tokens.shape) < 0.75).astype(np.float32)
  return dict(inputs=tokens, targets=targets, loss_mask=loss_mask,
              positions=positions.astype(np.int32),
              segment_ids=segment_ids.astype(np.int32))


def _train_config():
  train_config = _arith_config().train
  # No warm-up: the first step already has the peak learning rate.
  train_config.update(num_steps=2, warmup_steps=0, log_every=1, checkpoint_every=2)
  return train_config


@struct.dataclass
class _StepOutput:
  params_in: nnx.State   # the parameters as placed on the devices
  logits: jax.Array      # float32: [8, 8, vocab] of the forward pass
  loss: jax.Array        # float32: []
  grads: nnx.State       # like params
  params: nnx.State      # after one AdamW step


@functools.cache
def _train_step(mesh_shape) -> _StepOutput:
  """Forward pass, gradients and one AdamW step, in one program, on `mesh_shape`."""
  graphdef, params, _ = testing.tiny_policy()
  forward = policy_forward_fn(graphdef)
  optimizer = make_optimizer(_train_config())

  def loss_fn(params, batch):
    logits = forward(params, batch["inputs"], batch["positions"], batch["segment_ids"])
    return next_token_loss(logits, batch["targets"], batch["loss_mask"])[0], logits

  @jax.jit
  def step(params, batch):
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return _StepOutput(params_in=params, logits=logits, loss=loss, grads=grads,
                       params=optax.apply_updates(params, updates))

  return _run_on(mesh_shape, step, params, _train_batch())


def _assert_trees_close(tree, expected_tree):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       **TOLERANCE),
               tree, expected_tree)


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
def test_forward_pass_on_a_mesh_equals_one_device(mesh_shape):
  expected, out = _train_step(None), _train_step(mesh_shape)
  np.testing.assert_allclose(np.asarray(out.logits), np.asarray(expected.logits),
                             **TOLERANCE)
  # The numbers agree because the work was split, not because it was not.
  _, model = mesh_shape
  gate = out.params_in["decoder"]["blocks"][0]["mlp"]["gate"].get_value()
  assert gate.addressable_shards[0].data.shape == (32, 64 // model)
  assert len(out.logits.sharding.device_set) == 8


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
def test_a_train_step_on_a_mesh_equals_one_device(mesh_shape):
  expected, out = _train_step(None), _train_step(mesh_shape)
  np.testing.assert_allclose(out.loss, expected.loss, **TOLERANCE)
  _assert_trees_close(out.grads, expected.grads)
  _assert_trees_close(out.params, expected.params)
  initial = testing.tiny_policy()[1]
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                       expected.params, initial)
  assert min(jax.tree.leaves(moved)) > 1e-4, "the step should move every parameter"


# ---------------------------------------------------------------- trainer

class _CompileCounter(logging.Handler):
  """Counts the compilations JAX logs for jitted functions named `name`."""

  def __init__(self, name: str):
    super().__init__()
    self.pattern = f"compilation of jit({name})"
    self.count = 0

  def emit(self, record: logging.LogRecord) -> None:
    self.count += self.pattern in record.getMessage()


@contextlib.contextmanager
def _counting_compiles(name: str):
  counter = _CompileCounter(name)
  logger = logging.getLogger("jax._src.dispatch")
  logger.addHandler(counter)
  try:
    with jax.log_compiles(True):
      yield counter
  finally:
    logger.removeHandler(counter)


class _Batches:
  """The same batch at every step."""

  def batch(self, step: int) -> dict[str, np.ndarray]:
    del step
    return _train_batch()


class _Kernel(nnx.Module):
  """One weight matrix sharded like an MLP kernel: all the trainer needs."""

  def __init__(self):
    self.kernel = nnx.Param(jnp.ones((4, 8)), logical_axes=("embed", "mlp"))


@pytest.mark.parametrize("mesh_shape", [
    None,
    (2, 4),
])
def test_trainer_compiles_its_step_once(mesh_shape, tmp_path):
  # The trainer's placement of its state does not depend on the model: a
  # quadratic loss on one sharded kernel compiles in a blink.
  def loss_fn(params, batch, dropout_rng):
    del dropout_rng
    loss = jnp.mean(jnp.square(params["kernel"].get_value() - 2.0))
    return loss, {"loss": loss, "tokens": batch["loss_mask"].sum()}

  _, params = nnx.split(_Kernel())
  mesh = None if mesh_shape is None else _mesh(*mesh_shape)
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"), {"model": "kernel"})
  metrics_path = tmp_path / "metrics.jsonl"
  with _counting_compiles("train_step") as compilations:
    trained = train(name="train", loss_fn=loss_fn, params=params, batches=_Batches(),
                    train_config=_train_config(), checkpointer=checkpointer,
                    metrics_path=str(metrics_path), seed=0, mesh=mesh,
                    rules=None if mesh is None else RULES, log=lambda line: None)
  checkpointer.close()
  records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2]
  assert records[1]["loss"] < records[0]["loss"]
  assert (np.asarray(trained["kernel"].get_value()) > 1.0).all()
  assert compilations.count == 1


# ---------------------------------------------------------------- sampler

# eos 10 ends some of the seed-0 policy's greedy continuations, not all.
GREEDY = sampling.SamplerConfig(
    sampling.SamplingRule(temperature=0.0), sampling.StopAt.SOLUTION,
    max_new_tokens=8, step_id=1, eos_id=10)


def _prompts():
  """Left-padded prompts [8, 5] of lengths 5, 4, ..., 1, 5, 3, 1."""
  lengths = np.array([5, 4, 3, 2, 1, 5, 3, 1], np.int32)
  tokens = np.random.default_rng(1).integers(
      0, testing.TINY_CONFIG.vocab_size, (NUM_ROWS, 5)).astype(np.int32)
  tokens = np.where(np.arange(5)[None, :] >= 5 - lengths[:, None], tokens, 0)
  return tokens, lengths


@functools.cache
def _greedy_samples(mesh_shape):
  graphdef, params, config = testing.tiny_policy()
  extend = policy_extend_fn(graphdef)

  @jax.jit
  def run(params, prompts, lengths):
    cache = init_cache(config, prompts.shape[0], prompts.shape[1] + GREEDY.max_new_tokens)
    cache, pending = sampling.prefill(extend, params, cache, prompts, lengths)
    active = jnp.ones(pending.shape, bool)
    return sampling.sample(extend, params, cache, pending, active,
                           jax.random.key(0, impl="rbg"), GREEDY)

  return _run_on(mesh_shape, lambda p, batch: run(p, *batch), params, _prompts())


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
def test_greedy_sampling_on_a_mesh_equals_one_device(mesh_shape):
  expected = _greedy_samples(None)
  out = _greedy_samples(mesh_shape)
  assert 0 < int(expected.ended_solution.sum()) < NUM_ROWS
  np.testing.assert_array_equal(out.tokens, expected.tokens)
  np.testing.assert_array_equal(out.lengths, expected.lengths)
  np.testing.assert_array_equal(out.ended_solution, expected.ended_solution)
  np.testing.assert_allclose(out.logprobs, expected.logprobs, **TOLERANCE)
  np.testing.assert_array_equal(out.pending, expected.pending)
  assert len(out.tokens.sharding.device_set) == 8


# ------------------------------------------------------------- search


@functools.cache
def _beam_search(mesh_shape, lookahead: int):
  """Beam search (N=4, M=2) with the tiny policy and a tiny verifier."""
  from ttscale.models import ValueModel
  from ttscale.search import beam, common

  policy_graphdef, policy_params, config = testing.tiny_policy()
  prm_graphdef, prm_params, _ = testing.tiny_policy(seed=1, module=ValueModel)
  models = common.SearchModels(policy_graphdef, prm_graphdef, config, config)
  beam_config = beam.BeamConfig(
      budget=4, beam_width=2, lookahead=lookahead, max_rounds=3, max_new_tokens=8,
      max_step_tokens=3, rule=sampling.SamplingRule(temperature=1.0), step_id=1, eos_id=10)
  run = jax.jit(functools.partial(beam.beam_search, models, config=beam_config))
  params = {"policy": policy_params, "prm": prm_params}
  out = _run_on(mesh_shape, lambda p, batch: run(p["policy"], p["prm"], *batch,
                                                 jax.random.key(0, impl="rbg")),
                params, _prompts())
  return jax.tree.map(np.asarray, out)


# Each (mesh, lookahead) compiles its own ~7 s program. The lookahead search
# takes every path lookahead 0 takes and more, so lookahead 0 runs on the
# first mesh shape only (the data-parallel one), lookahead 1 on every shape.
BEAM_CASES = [(MESH_SHAPES[0], 0)] + [(mesh_shape, 1) for mesh_shape in MESH_SHAPES]


@pytest.mark.parametrize("mesh_shape,lookahead", BEAM_CASES)
def test_beam_search_on_a_mesh_equals_one_device(mesh_shape, lookahead):
  expected = _beam_search(None, lookahead)
  out = _beam_search(mesh_shape, lookahead)
  # Searched, not trivial: rows differ, and some ended early.
  assert len({tuple(row) for row in expected.tokens}) > 4
  assert (expected.lengths < 8).any()
  np.testing.assert_array_equal(out.tokens, expected.tokens)
  np.testing.assert_array_equal(out.lengths, expected.lengths)
  np.testing.assert_allclose(out.scores, expected.scores, **TOLERANCE)
  np.testing.assert_allclose(out.flops, expected.flops, rtol=1e-6)


# ---------------------------------------------------------------- revisions

# Questions the "1+2" tokenizer encodes: digits and "+" (and the step delimiter).
REVISION_QUESTIONS = ("1+2", "3+4+5", "6+7", "8+9+1+2", "10+11", "2+2", "5+6+7", "9+8")
REVISION_SEQUENTIAL, REVISION_PARALLEL = 3, 2
# Not (1, 8): the chains' host-side batching is what this adds over the
# sampler test, and (1, 8) would cost ~8 s more for the same batching.
REVISION_MESH_SHAPES = [(8, 1), (2, 4)]


@pytest.fixture(scope="module")
def revision_chains(tmp_path_factory) -> dict:
  """{mesh shape (None: one device): `revisions.Chains`} of the tiny policy:
  2 chains of 3 attempts for each of 8 questions, sampled at temperature 1
  in batches of 16 rows (8 prompts × 2 copies, then 16 contexts)."""
  from ttscale.data.tokenizer import train_tokenizer
  from ttscale.search import revisions
  from ttscale.tasks.arith import ArithTask

  # Digits, "+" and the 5 special pieces: the tiny policy's 16 ids exactly.
  tokenizer = train_tokenizer(["1+2"], str(tmp_path_factory.mktemp("tokenizer") / "model"))
  assert tokenizer.vocab_size == testing.TINY_CONFIG.vocab_size
  graphdef, params, config = testing.tiny_policy()
  policy = Network(graphdef, params, config)
  sampler_config = sampling.SamplerConfig(
      sampling.SamplingRule(temperature=1.0), sampling.StopAt.SOLUTION, max_new_tokens=8,
      step_id=tokenizer.step_id, eos_id=tokenizer.eos_id)
  chains = {}
  for mesh_shape in [None, *REVISION_MESH_SHAPES]:
    mesh = None if mesh_shape is None else _mesh(*mesh_shape)
    chains[mesh_shape] = revisions.run_chains(
        policy, tokenizer, ArithTask(max_ops=3), list(REVISION_QUESTIONS),
        sequential=REVISION_SEQUENTIAL, parallel=REVISION_PARALLEL,
        sampler_config=sampler_config, batch_size=16, key=jax.random.key(0), mesh=mesh,
        rules=None if mesh is None else RULES)
  return chains


@pytest.mark.parametrize("mesh_shape", REVISION_MESH_SHAPES)
def test_revision_chains_on_a_mesh_equal_one_device(revision_chains, mesh_shape):
  """Fails if `revisions.run_chains` on a (data, model) mesh samples other
  attempts (tokens, end flags, texts), builds other revision contexts or
  counts other FLOPs or tokens than on one device; or if the chains are too
  trivial to tell (every attempt alike, none or all ended, no previous
  attempt in any context)."""
  expected, out = revision_chains[None], revision_chains[mesh_shape]
  attempts = [a for question in expected.attempts for chain in question for a in chain]
  assert len(attempts) == len(REVISION_QUESTIONS) * REVISION_SEQUENTIAL * REVISION_PARALLEL
  assert len({a.text for a in attempts}) > len(attempts) // 2
  assert 0 < sum(a.ended for a in attempts) < len(attempts)
  assert all(len(chain[-1].context) > len(chain[0].context)
             for question in expected.attempts for chain in question)
  for q, (got_chains, expected_chains) in enumerate(
      zip(out.attempts, expected.attempts, strict=True)):
    assert len(got_chains) == REVISION_PARALLEL
    for c, (got_chain, expected_chain) in enumerate(
        zip(got_chains, expected_chains, strict=True)):
      assert len(got_chain) == REVISION_SEQUENTIAL
      for j, (got, want) in enumerate(zip(got_chain, expected_chain, strict=True)):
        where = (q, c, j)
        np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=str(where))
        assert (got.ended, got.text, got.context) == (want.ended, want.text, want.context), \
            where
  np.testing.assert_allclose(out.flops, expected.flops, rtol=1e-12)
  assert out.generated_tokens == expected.generated_tokens
