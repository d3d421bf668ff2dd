"""The host side of search: batches of questions through one compiled program per
setting, answers chosen by weighted best-of-N, one outcome per question.

Questions are folded into fixed-shape batches of `rows` rows (Q = rows / N
questions of N rows each; one question when N > rows). Every batch of a
setting has the same shape, so each setting compiles once; the persistent
compilation cache (set by the launcher) keeps second runs from compiling.
Batches run whole on one device each, the devices taking them in turn.

Several processes (`ttscale.distributed`) pass the same devices, the mesh's:
each process runs the batches of its own devices (batch b on device
b % len(devices), as on one process) and the outputs are exchanged
(`multihost_utils.process_allgather`), so every process returns every
batch's results, the same as one process would.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ttscale import parallel
from ttscale.data.batching import left_pad
from ttscale.data.tokenizer import Tokenizer
from ttscale.search import beam, best_of_n, common, sampling, select
from ttscale.search.budget import SearchSetting
from ttscale.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class SearchOptions:
  """Settings shared by every search program of a sweep."""
  rule: sampling.SamplingRule
  max_new_tokens: int
  max_step_tokens: int
  max_rounds: int
  rows: int                  # batch rows per program (Q·N)
  aggregation: str = "last"  # a candidate's score from its step scores ("last", "min")


@dataclasses.dataclass
class QuestionResult:
  answer: str | None         # the chosen final answer
  candidates: list[str]      # the N candidate solutions (text)
  scores: np.ndarray         # float32 [N] their PRM scores
  flops: float               # FLOPs used
  policy_tokens: int         # tokens the policy decoded (rollouts included)
  seconds: float             # the question's share of its batch's wall time
  prefix_flops: np.ndarray | None = None  # float [N] best-of-N: FLOPs of the first n + 1
  distinct_prefixes: float | None = None  # tree search: mean distinct live prefixes per round


def prefix_results(result: QuestionResult, task: Task, budgets: list[int]
                   ) -> dict[int, QuestionResult]:
  """Best-of-n for every n in `budgets` from one best-of-N pool: the first n
  candidates, chosen by weighted best-of-n, their FLOPs, a share n/N of the
  pool's wall time.

  The first n of N independent samples are n independent samples, so each
  budget's answer has the distribution of its own run; budgets of one
  question share samples, which makes the best-of-N curve smoother.
  """
  if result.prefix_flops is None:
    raise ValueError("best-of-n prefixes need a best-of-N pool (its prefix_flops)")
  size = len(result.candidates)
  answers = [task.extract_answer(t) for t in result.candidates]
  ids, valid = select.answer_ids([answers])
  out = {}
  for n in budgets:
    if not 1 <= n <= size:
      raise ValueError(f"best-of-{n} from a pool of {size} candidates")
    chosen = int(np.asarray(select.weighted_best_of_n(
        ids[:, :n], result.scores[None, :n], valid[:, :n]))[0])
    out[n] = dataclasses.replace(
        result, answer=answers[chosen] if chosen >= 0 else None,
        candidates=result.candidates[:n], scores=result.scores[:n],
        flops=float(result.prefix_flops[n - 1]), seconds=result.seconds * n / size,
        prefix_flops=result.prefix_flops[:n])
  return out


def questions_per_batch(budget: int, rows: int) -> int:
  return max(rows // budget, 1)


def program_setting(setting: SearchSetting) -> SearchSetting:
  """The setting whose compiled program runs `setting`.

  Tree settings at one budget, lookahead and verifier share a program, beam
  search and DVTS at every beam width: those come in as inputs
  (`beam.BeamWidths`). On CPU a cold sweep spends much of its time
  compiling, so fewer programs is time saved.
  """
  if setting.method == "best_of_n":
    return setting
  return dataclasses.replace(setting, method="lookahead" if setting.lookahead else "beam",
                             beam_width=setting.budget)


def program_widths(setting: SearchSetting) -> beam.BeamWidths:
  """The inputs that make `program_setting(setting)`'s program run `setting`
  (ignored by best-of-N's)."""
  if setting.method == "best_of_n":
    return beam.BeamWidths(beam_width=np.int32(1), group_size=np.int32(setting.budget))
  return beam.BeamWidths(beam_width=np.int32(setting.beam_width),
                         group_size=np.int32(setting.group_size))


def search_program(models: common.SearchModels, setting: SearchSetting,
                   options: SearchOptions, step_id: int, eos_id: int):
  """The program of one setting, not jitted: `(policy_params, prm_params,
  prompts, lengths, rng, widths) -> Candidates` for one batch, `widths`
  (`program_widths`) the tree's beam width and group size."""
  if setting.method == "best_of_n":
    sampler_config = sampling.SamplerConfig(
        rule=options.rule, stop_at=sampling.StopAt.SOLUTION,
        max_new_tokens=options.max_new_tokens, step_id=step_id, eos_id=eos_id)
    pool = functools.partial(best_of_n.best_of_n, models,
                             num_samples=setting.budget, sampler_config=sampler_config,
                             aggregation=options.aggregation)
    return lambda policy_params, prm_params, prompts, lengths, rng, widths: pool(
        policy_params, prm_params, prompts, lengths, rng)
  config = beam.BeamConfig(
      budget=setting.budget, beam_width=setting.beam_width, lookahead=setting.lookahead,
      max_rounds=options.max_rounds, max_new_tokens=options.max_new_tokens,
      max_step_tokens=options.max_step_tokens, rule=options.rule, step_id=step_id,
      eos_id=eos_id, group_size=setting.group_size, distinct=setting.distinct,
      aggregation=options.aggregation)
  return functools.partial(beam.beam_search, models, config=config)


@functools.lru_cache(maxsize=64)
def compiled_search(models: common.SearchModels, setting: SearchSetting,
                    options: SearchOptions, step_id: int, eos_id: int,
                    devices: tuple = ()):
  """The jitted program of one setting (`program_setting`) over `devices`
  (default: this process's first device): `(policy_params, prm_params,
  prompts, lengths, rngs, widths) -> Candidates`, each input but the
  parameters and `widths` and each output stacked on a leading axis of
  `len(devices)` batches, batch g run whole on device g.

  One `shard_map`ped program for all the devices: a program jitted for one
  device compiles again for each other device (measured here: a beam
  program compiled in 3.3 s for one device, in 5.6 s for two at once). The
  batches do not communicate: each device runs its own while loops to their
  own end. Not for programs with a host callback (`_run_per_device`).
  """
  devices = devices or tuple(jax.local_devices()[:1])
  program = search_program(models, setting, options, step_id, eos_id)
  mesh = Mesh(np.asarray(devices), (_BATCHES,))

  def one_batch_per_device(policy_params, prm_params, prompts, lengths, rngs, widths):
    out = program(policy_params, prm_params, prompts[0], lengths[0], rngs[0], widths)
    return jax.tree.map(lambda x: x[None], out)

  stacked, shared = PartitionSpec(_BATCHES), PartitionSpec()
  return jax.jit(jax.shard_map(
      one_batch_per_device, mesh=mesh,
      in_specs=(shared, shared, stacked, stacked, stacked, shared),
      out_specs=stacked, check_vma=False))


_BATCHES = "batches"  # the mesh axis of `compiled_search`: one batch per device


@functools.lru_cache(maxsize=64)
def _compiled_per_device(models: common.SearchModels, setting: SearchSetting,
                         options: SearchOptions, step_id: int, eos_id: int):
  """The jitted program of one setting (`program_setting`) for one batch (see
  `_run_per_device`)."""
  return jax.jit(search_program(models, setting, options, step_id, eos_id))


def batch_by_length(tokenizer: Tokenizer, task: Task, questions: list[str],
                    per_batch: int) -> list[list[int]]:
  """Question indices in batches of `per_batch`, shortest prompts first.

  A search batch runs until its longest candidate finishes, and a prompt's
  length predicts its solution's (on the embedded task, the number of
  operations), so batches of like prompts stop sooner.
  """
  lengths = [len(tokenizer.encode(task.prompt(q))) for q in questions]
  order = sorted(range(len(questions)), key=lambda i: lengths[i])
  return [order[start:start + per_batch] for start in range(0, len(order), per_batch)]


def prompt_width(tokenizer: Tokenizer, task: Task, questions: list[str],
                 multiple: int = 16) -> int:
  """One prompt width for a whole sweep: one compiled shape per setting."""
  longest = max(len(tokenizer.encode(task.prompt(q))) + 1 for q in questions)
  return -(-longest // multiple) * multiple


def search_batches(setting: SearchSetting, models: common.SearchModels, policy_params,
                   prm_params, tokenizer: Tokenizer, task: Task,
                   batches: list[list[str]], *, options: SearchOptions, width: int,
                   rngs: list[jax.Array], devices=None) -> list[list[QuestionResult]]:
  """Searches batches of questions (each at most `questions_per_batch`).

  Questions are independent, so each batch runs whole on one device and the
  devices take batches in groups, one each, in parallel, with no
  communication (a batch sharded over devices would exchange caches at every
  beam selection).

  Args:
    batches: the questions of each batch; rngs: one PRNG key per batch.
    devices: where batches run, in turn (default: this process's first
      device). With several processes: the same list on every process (each
      runs its own devices' batches, then all exchange outputs), or only
      each process's own devices (each runs every batch).

  Returns:
    per batch, one `QuestionResult` per question; `seconds` is the wall time
    of all batches over the number of questions.
  """
  started = time.time()
  if setting.verifier == "exact" and models.exact_verifier is None:
    raise ValueError(f"{setting.method} {setting.params}: the exact verifier was not given "
                     "(SearchModels.exact_verifier)")
  if setting.verifier != "exact":
    models = dataclasses.replace(models, exact_verifier=None)
  devices = list(devices or jax.local_devices()[:1])
  capacity = questions_per_batch(setting.budget, options.rows)
  here = jax.process_index()
  owners = [devices[number % len(devices)].process_index for number in range(len(batches))]
  mine = [number for number, owner in enumerate(owners) if owner == here]
  # This process's devices, in the order batches go to them.
  local = (tuple(dict.fromkeys(device for device in devices if device.process_index == here))
           or tuple(jax.local_devices()[:1]))

  def inputs(number: int):
    questions = batches[number]
    if not 0 < len(questions) <= capacity:
      raise ValueError(f"{len(questions)} questions for a batch of {capacity}")
    prompts = [[tokenizer.bos_id] + tokenizer.encode(task.prompt(q)) for q in questions]
    prompts += [prompts[-1]] * (capacity - len(prompts))  # pad the last batch
    return (*left_pad(prompts, width, tokenizer.pad_id), rngs[number])

  if len(rngs) != len(batches):
    raise ValueError(f"{len(rngs)} PRNG keys for {len(batches)} batches")
  params = _this_process((policy_params, prm_params))
  program_key = (models, program_setting(setting), options, tokenizer.step_id,
                 tokenizer.eos_id)
  widths = program_widths(setting)
  if models.exact_verifier is None:
    outputs = _run_in_groups(compiled_search(*program_key, local), params,
                             [inputs(number) for number in mine], widths, local)
  else:
    outputs = _run_per_device(_compiled_per_device(*program_key), params,
                              [inputs(number) for number in mine], widths, local)
  if any(device.process_index != here for device in devices):  # others ran the rest
    like = jax.eval_shape(search_program(*program_key), *params, *inputs(0), widths)
    outputs = _exchange(dict(zip(mine, outputs, strict=True)), owners, like)
  seconds = (time.time() - started) / sum(len(b) for b in batches)
  return [_results(setting.budget, tokenizer, task, len(questions), out, seconds)
          for questions, out in zip(batches, outputs, strict=True)]


def _run_in_groups(run, params, batch_inputs: list, widths, devices: tuple) -> list:
  """Outputs of `run` (`compiled_search` over `devices`) on every batch's
  inputs and the shared `widths`, a group of one batch per device at a time."""
  mesh = Mesh(np.asarray(devices), (_BATCHES,))
  params, widths = jax.device_put((params, widths), NamedSharding(mesh, PartitionSpec()))
  outputs = []
  for start in range(0, len(batch_inputs), len(devices)):
    group = batch_inputs[start:start + len(devices)]
    # A last group short of devices repeats its last batch; the copy is dropped.
    padded = group + [group[-1]] * (len(devices) - len(group))
    stacked = jax.tree.map(
        lambda *xs: jax.numpy.stack(xs) if isinstance(xs[0], jax.Array) else np.stack(xs),
        *padded)
    stacked = jax.device_put(stacked, NamedSharding(mesh, PartitionSpec(_BATCHES)))
    out = jax.tree.map(np.asarray, run(*params, *stacked, widths))
    outputs += [jax.tree.map(lambda x, g=g: x[g], out) for g in range(len(group))]
  return outputs


def _run_per_device(run, params, batch_inputs: list, widths, devices: tuple) -> list:
  """Outputs of `run` (jitted for one batch) on every batch's inputs and the
  shared `widths`, batch j on device j % len(devices), one host thread per
  device.

  For programs with a host callback (the exact verifier): inside a program
  over several devices, a callback's inputs go to the first device, which
  waits for that program to end, and it never does. Each device compiles its
  own copy.
  """
  params_on = {device: jax.device_put((params, widths), device) for device in devices}

  def run_one(j: int):
    device = devices[j % len(devices)]
    device_params, device_widths = params_on[device]
    return jax.tree.map(np.asarray, run(*device_params,
                                        *jax.device_put(batch_inputs[j], device),
                                        device_widths))

  return parallel.run_on_devices(run_one, len(batch_inputs), len(devices))


def _this_process(tree):
  """`tree` with every array spread over processes replaced by this process's
  copy: a `device_put` onto one device cannot read other hosts' shards."""
  def local(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x.addressable_data(0) if x.is_fully_replicated else parallel.to_host(x)
    return x

  return jax.tree.map(local, tree)


def _exchange(outputs: dict, owners: list[int], like) -> list:
  """Every batch's output on every process, from `outputs` ({batch: output})
  of the batches this process ran; batch b was run by process `owners[b]`.

  A collective: every process calls it. Outputs travel stacked, each process
  padding its stack to the most batches any ran with zeros shaped as `like`.
  """
  here = jax.process_index()
  slots = max(owners.count(process) for process in range(jax.process_count()))
  padding = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), like)
  stack = [outputs[number] for number, owner in enumerate(owners) if owner == here]
  stack += [padding] * (slots - len(stack))
  # [process, slot, ...] on every process.
  gathered = multihost_utils.process_allgather(jax.tree.map(lambda *xs: np.stack(xs), *stack))
  taken = collections.Counter()
  result = []
  for owner in owners:
    result.append(jax.tree.map(lambda x, o=owner, k=taken[owner]: np.asarray(x[o, k]),
                               gathered))
    taken[owner] += 1
  return result


def _results(n: int, tokenizer: Tokenizer, task: Task, num_questions: int, out,
             seconds: float) -> list[QuestionResult]:
  """Decodes a batch's candidates and picks each question's answer by
  weighted best-of-N over its N candidates."""
  texts = [[_decode(tokenizer, out.tokens[r, :out.lengths[r]])
            for r in range(q * n, (q + 1) * n)] for q in range(num_questions)]
  answers = [[task.extract_answer(t) for t in row] for row in texts]
  scores = out.scores[:num_questions * n].reshape(num_questions, n)
  ids, valid = select.answer_ids(answers)
  chosen = np.asarray(select.weighted_best_of_n(ids, scores, valid))
  return [QuestionResult(
      answer=answers[q][chosen[q]] if chosen[q] >= 0 else None, candidates=texts[q],
      scores=scores[q], flops=float(out.flops[q]), policy_tokens=int(out.policy_tokens[q]),
      seconds=seconds,
      prefix_flops=None if out.prefix_flops is None else out.prefix_flops[q],
      distinct_prefixes=None if out.distinct_prefixes is None
      else float(out.distinct_prefixes[q]))
      for q in range(num_questions)]


def _decode(tokenizer: Tokenizer, tokens: np.ndarray) -> str:
  return tokenizer.decode([int(t) for t in tokens if t != tokenizer.eos_id])
