"""Tests of running on several hosts, without several hosts.

`jax.distributed` is never started here: its `initialize` is replaced by a
recorder, the environment of a pod slice or cluster is monkeypatched, and
process 1 of 2 is played by monkeypatching `jax.process_index`. Placement on
a mesh the way several processes do it (`jax.make_array_from_callback`) is
compared with `jax.device_put` on the 8 CPU devices of `tests/conftest.py`.
`gs://` workdirs are served from a local directory through epath's backend.

One test does start `jax.distributed`: two CPU processes on localhost (gloo
collectives), sharing a workdir, against one process with as many devices
(`tests/distributed_worker.py`).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_dict

from configs import arith
from ttscale import distributed, io_utils, outcomes, parallel, pipeline, testing

# Every variable `distributed.several_hosts` reads.
_CLUSTER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
    "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES",
    "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE", "TPU_SKIP_MDS_QUERY", "GCE_METADATA_IP")


@pytest.fixture
def plain_machine(monkeypatch):
  """No cluster variables, no TPU chips, and a `jax.distributed.initialize`
  that records its arguments instead of connecting anywhere."""
  for variable in _CLUSTER_VARIABLES:
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setattr(distributed, "has_tpu_chips", lambda: False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  return calls


# ------------------------------------------------------------------ modes

def test_an_unknown_mode_is_an_error_naming_the_flag(plain_machine):
  with pytest.raises(ValueError, match=r"^--multihost=yes: expected one of auto, on, off$"):
    distributed.initialize("yes")
  assert plain_machine == []


def test_auto_never_initialises_a_plain_machine(plain_machine):
  assert distributed.initialize("auto") is False
  assert plain_machine == []


def test_off_never_initialises_even_on_a_cluster(plain_machine, monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  assert distributed.initialize("off") is False
  assert plain_machine == []


def test_on_initialises_and_lets_jax_detect_the_cluster(plain_machine):
  assert distributed.initialize("on") is True
  assert plain_machine == [{}]


def test_auto_initialises_a_cluster_passing_the_process_variables(plain_machine, monkeypatch):
  # JAX reads the coordinator address itself, but not these two.
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  assert distributed.initialize("auto") is True
  assert plain_machine == [{"num_processes": 4, "process_id": 2}]


@pytest.mark.parametrize("environ,expected", [
    ({}, False),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "1"}, False),
    ({"JAX_NUM_PROCESSES": "2"}, True),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1,t1v-2,t1v-3", "TPU_WORKER_ID": "1"}, True),
    ({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}, False),
    ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"}, True),
    ({"MEGASCALE_NUM_SLICES": "2"}, True),
    ({"MEGASCALE_NUM_SLICES": "1"}, False),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0",
      "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_PROCID": "0",
      "SLURM_LOCALID": "0", "SLURM_NTASKS": "1"}, False),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, False),  # an allocation, not an srun step
    ({"OMPI_COMM_WORLD_SIZE": "8"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, False),
])
def test_auto_reads_several_hosts_from_the_environment(environ, expected, monkeypatch):
  monkeypatch.setattr(distributed, "has_tpu_chips", lambda: False)
  assert distributed.several_hosts(environ) is expected


@pytest.mark.parametrize("hosts,expected", [(4, True), (1, False)])
def test_a_cloud_tpu_vm_asks_the_metadata_server_for_its_hosts(hosts, expected, monkeypatch):
  monkeypatch.setattr(distributed, "has_tpu_chips", lambda: True)
  monkeypatch.setattr(distributed, "cloud_tpu_host_count", lambda environ: hosts)
  assert distributed.several_hosts({}) is expected


def test_only_a_machine_with_tpu_chips_asks_the_metadata_server(monkeypatch):
  def never(environ):
    raise AssertionError("asked the metadata server")

  monkeypatch.setattr(distributed, "cloud_tpu_host_count", never)
  monkeypatch.setattr(distributed, "has_tpu_chips", lambda: False)
  assert distributed.several_hosts({}) is False
  # JAX sets TPU_SKIP_MDS_QUERY on import where it finds no TPU.
  monkeypatch.setattr(distributed, "has_tpu_chips", lambda: True)
  assert distributed.several_hosts({"TPU_SKIP_MDS_QUERY": "1"}) is False


class _Metadata(http.server.BaseHTTPRequestHandler):
  """A GCE metadata server for a 4-host slice, on localhost."""

  def do_GET(self):  # noqa: N802 (the http.server name)
    known = (self.path.endswith("/attributes/worker-network-endpoints")
             and self.headers.get("Metadata-Flavor") == "Google")
    body = b"w0:0:10.0.0.1,w1:1:10.0.0.2,w2:2:10.0.0.3,w3:3:10.0.0.4"
    self.send_response(200 if known else 404)
    self.end_headers()
    if known:
      self.wfile.write(body)

  def log_message(self, *args):
    del args


def test_cloud_tpu_host_count_counts_the_metadata_endpoints():
  server = http.server.HTTPServer(("127.0.0.1", 0), _Metadata)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    address = f"127.0.0.1:{server.server_port}"
    assert distributed.cloud_tpu_host_count({"GCE_METADATA_IP": address}) == 4
  finally:
    server.shutdown()
    server.server_close()
  # Nobody answering (a TPU machine outside Google Cloud): one host.
  assert distributed.cloud_tpu_host_count({"GCE_METADATA_IP": address}) == 1


# ---------------------------------------------------------- who writes

@pytest.fixture
def barriers(monkeypatch):
  """Plays one of 2 processes: returns (set_process(index), barrier names)."""
  names = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", names.append)

  def set_process(index: int) -> None:
    monkeypatch.setattr(jax, "process_index", lambda: index)

  return set_process, names


def test_one_process_writes_without_barriers(tmp_path, monkeypatch):
  names = []
  monkeypatch.setattr(multihost_utils, "sync_global_devices", names.append)
  assert distributed.is_writer()
  io_utils.write_json_atomic(tmp_path / "a.json", {"x": 1})
  assert io_utils.read_json(tmp_path / "a.json") == {"x": 1}
  assert names == []


@pytest.mark.parametrize("write", [
    lambda path: io_utils.write_bytes_atomic(path, b"data"),
    lambda path: io_utils.write_json_atomic(path, {"x": 1}),
    lambda path: io_utils.write_jsonl_atomic(path, [{"x": 1}, {"y": 2}]),
], ids=["bytes", "json", "jsonl"])
def test_only_process_zero_writes_and_all_wait_before_and_after(tmp_path, barriers, write):
  set_process, names = barriers
  path = tmp_path / "out" / "file"
  set_process(1)
  assert not distributed.is_writer()
  write(path)
  assert not (tmp_path / "out").exists(), "process 1 wrote (or made a directory)"
  process_one_barriers, names[:] = list(names), []
  set_process(0)
  write(path)
  assert path.exists()
  assert os.listdir(path.parent) == ["file"], "a temporary file was left"
  # The same two barriers on both processes, or they would wait for each other.
  assert names == process_one_barriers and len(names) == 2
  assert str(path) in names[0]


def test_a_barrier_with_one_process_does_nothing(monkeypatch):
  names = []
  monkeypatch.setattr(multihost_utils, "sync_global_devices", names.append)
  distributed.barrier("alone")  # jax.distributed is not initialised
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  distributed.barrier("initialised, but one process")
  assert names == []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  distributed.barrier("two")
  assert names == ["two"]


# -------------------------------------------------------- gs:// paths

@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """`gs://bucket/...` served from `tmp_path/bucket` through epath's backend
  interface; returns the list of (operation, gs path) calls."""
  # With TensorFlow installed epath would take tf.io.gfile past the mock.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  calls = []

  root = str(tmp_path / "bucket")

  def local(path) -> str:
    path = os.fspath(path)
    if "://" not in path:
      return path  # local paths (code, temporary files) stay where they are
    assert path.startswith("gs://bucket/"), path
    return os.path.join(root, path.removeprefix("gs://bucket/"))

  def redirect(operation):
    def call(original, path, *args, **kwargs):
      if "://" in os.fspath(path):
        calls.append((operation, os.fspath(path)))
      return original(local(path), *[local(a) if "://" in str(a) else a for a in args],
                      **kwargs)
    return call

  def glob(original, pattern):
    calls.append(("glob", os.fspath(pattern)))
    found = original(local(pattern))
    if "://" not in os.fspath(pattern):
      return found
    return ["gs://bucket/" + os.path.relpath(path, root) for path in found]

  operations = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove",
                "rename", "replace", "stat", "copy")
  with epath_testing.mock_epath(glob=glob, **{op: redirect(op) for op in operations}):
    yield calls


def test_a_gs_path_is_written_as_one_object_through_epath(fake_bucket, tmp_path):
  records = [{"step": 1}, {"step": 2}]
  io_utils.write_jsonl_atomic("gs://bucket/run/metrics.jsonl", records)
  io_utils.write_json_atomic(epath.Path("gs://bucket/run/spec.json"), {"model": "tiny"})
  # One upload per object: no temporary object, no rename (a copy on GCS).
  assert not [op for op, _ in fake_bucket if op in ("rename", "replace", "copy", "remove")]
  assert ("open", "gs://bucket/run/metrics.jsonl") in fake_bucket
  assert sorted(os.listdir(tmp_path / "bucket" / "run")) == ["metrics.jsonl", "spec.json"]
  assert io_utils.read_jsonl("gs://bucket/run/metrics.jsonl") == records
  assert io_utils.read_json("gs://bucket/run/spec.json") == {"model": "tiny"}
  assert json.loads((tmp_path / "bucket" / "run" / "spec.json").read_text()) == {
      "model": "tiny"}
  with pytest.raises(ValueError, match=r"gs://bucket/run/missing\.json: unreadable JSON"):
    io_utils.read_json("gs://bucket/run/missing.json")


def test_a_local_path_never_goes_through_epath(tmp_path):
  def refuse(original, path, *args, **kwargs):
    raise AssertionError(f"epath used for {path}")

  with epath_testing.mock_epath(open=refuse, makedirs=refuse, replace=refuse):
    io_utils.write_json_atomic(pathlib.Path(tmp_path) / "a" / "b.json", [1, 2])
    assert io_utils.read_json(str(tmp_path / "a" / "b.json")) == [1, 2]


def _load(path: str, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_TESTS = os.path.dirname(os.path.abspath(__file__))


def _tiny_config():
  return arith.get_config("tiny")


def test_a_gs_workdir_stays_a_url_and_a_local_one_becomes_absolute(tmp_path, monkeypatch):
  config = _tiny_config()
  ctx = pipeline.Context(config, "gs://bucket/study", log=lambda _: None)
  assert ctx.workdir == "gs://bucket/study"
  assert ctx.path("stages", "data.json") == "gs://bucket/study/stages/data.json"
  monkeypatch.chdir(tmp_path)
  assert pipeline.Context(config, "study").workdir == str(tmp_path / "study")
  assert io_utils.absolute("gs://bucket/a/../b") == "gs://bucket/a/../b"


def test_outcome_rows_are_appended_to_a_gs_table(fake_bucket, tmp_path):
  meta = {"search": {"max_budget": 4}}

  def row(question: int) -> outcomes.Outcome:
    return outcomes.Outcome(question_index=question, level=1, method="best_of_n", params="",
                            budget=1, seed=0, answer="3", correct=True, generations=1,
                            flops=1.0, seconds=0.1)

  path = "gs://bucket/run/outcomes/search.jsonl"
  table = outcomes.OutcomeTable(path, meta)
  assert table.path == path
  table.append([row(0)])
  table.append([row(1), row(2)])
  reopened = outcomes.OutcomeTable(path, meta)
  assert [r["question_index"] for r in reopened.rows()] == [0, 1, 2]
  assert len((tmp_path / "bucket" / "run" / "outcomes" / "search.jsonl").read_text()
             .splitlines()) == 3
  with pytest.raises(ValueError, match=r"gs://bucket/run/outcomes/search\.jsonl holds "):
    outcomes.OutcomeTable(path, {"search": {"max_budget": 8}})


def test_the_report_stage_runs_on_a_gs_workdir_as_on_a_local_one(fake_bucket, tmp_path,
                                                                  monkeypatch):
  """Fails if a stage on a gs:// workdir touches the local file system where
  the workdir would be (an `os.makedirs("gs://...")` makes `./gs:`), misses a
  file that is there (`os.path.exists` is False for every URL), or reports
  otherwise than on a local copy of the same workdir."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  config = _tiny_config()
  study_report = _load(os.path.join(_TESTS, "report", "test_study_report.py"),
                       "study_report_workdir")
  workdir = "gs://bucket/study"
  study_report._write_workdir(workdir)
  # Every stage `report` needs, done: `check_prerequisites` reads their markers.
  for stage in [*pipeline.STAGES][:-1]:
    io_utils.write_json_atomic(f"{workdir}/stages/{stage}.json",
                               {"stage": stage, "seconds": 1.0, "inputs": {}})
  local = shutil.copytree(tmp_path / "bucket" / "study", tmp_path / "local")
  log = []
  records = pipeline.run(config, workdir, ["report"], log=log.append)
  assert "stage report: running" in log
  assert os.listdir(cwd) == [], "a gs:// path was used as a local one"
  assert ("glob", f"{workdir}/stages/*.json") in fake_bucket
  bucket = tmp_path / "bucket" / "study"
  results = json.loads((bucket / "results.json").read_text())
  assert set(results["stage_seconds"]) == set(pipeline.STAGES) - {"report"}
  for figure in results["figures"]:
    assert (bucket / figure).read_bytes().startswith(b"\x89PNG")
  assert json.loads((bucket / "stages" / "report.json").read_text())["summary"] == (
      records["report"]["summary"])
  # A second run finds the marker in the bucket and skips the stage.
  log.clear()
  pipeline.run(config, workdir, ["report"], log=log.append)
  assert any(line.startswith("stage report: already done") for line in log)
  pipeline.run(config, str(local), ["report"], log=lambda _: None)
  assert (bucket / "report.md").read_text() == (local / "report.md").read_text()
  assert results == json.loads((local / "results.json").read_text())


# ------------------------------------------------------ several processes

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_worker(out: pathlib.Path, workdir: pathlib.Path, port: int, process: int,
                  processes: int, log) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // processes}",
             PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(_TESTS),
                                                      os.environ.get("PYTHONPATH")])))
  for variable in _CLUSTER_VARIABLES:
    env.pop(variable, None)
  return subprocess.Popen(
      [sys.executable, os.path.join(_TESTS, "distributed_worker.py"), str(out), str(workdir),
       str(port), str(process), str(processes)],
      # A file, not a pipe: a worker blocked on a full pipe would stall the other.
      env=env, stdout=log, stderr=subprocess.STDOUT)


def _metric_lines(path: pathlib.Path) -> list[dict]:
  records = [json.loads(line) for line in path.read_text().splitlines()]
  for record in records:
    record.pop("tokens_per_second", None)  # wall time
  return records


def test_two_processes_return_what_one_returns_and_write_each_file_once(tmp_path):
  """Two processes of 2 CPU devices each (one 4-device mesh over both) and
  one process of 4 devices run the same sampling, scoring, search, outcome
  table and training with early stopping (`tests/distributed_worker.py`).

  Fails if an output sharded over both processes is read with `np.asarray`
  (refused), if the search's batches on the other process's devices are
  lost or differ, if a process returns other results than the single
  process, if a metric line or outcome row is written once per process, or
  if process 0 appends to a file before process 1 (a second late) read it.
  """
  shared, alone = tmp_path / "shared", tmp_path / "alone"
  shared.mkdir()
  alone.mkdir()
  port = _free_port()
  names = ["process0", "process1", "alone"]
  logs = [open(tmp_path / f"{name}.log", "wb") for name in names]
  workers = [_start_worker(tmp_path / f"process{p}.json", shared, port, p, 2, logs[p])
             for p in (0, 1)]
  workers.append(_start_worker(tmp_path / "alone.json", alone, 0, 0, 1, logs[2]))
  try:
    # Until all end, or one fails: the others would wait for it at a barrier.
    deadline = time.monotonic() + 300
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
      if any(w.poll() for w in workers):
        break
      time.sleep(0.2)
  finally:
    for worker, log in zip(workers, logs, strict=True):
      worker.kill()
      worker.wait()
      log.close()
  codes = {name: worker.returncode for name, worker in zip(names, workers, strict=True)}
  # The logs of the workers that failed (not those killed, -9, after them).
  failed = [name for name, code in codes.items() if code > 0] or [
      name for name, code in codes.items() if code]
  assert not failed, f"{codes}\n" + "\n".join(
      f"--- {name}\n" + (tmp_path / f"{name}.log").read_text()[-3000:] for name in failed)
  expected = json.loads((tmp_path / "alone.json").read_text())
  for p in (0, 1):
    got = json.loads((tmp_path / f"process{p}.json").read_text())
    assert (got["process_index"], got["local_devices"]) == (p, 2)
    # Sampling rows, scoring rows and search batches never mix: bit-identical.
    for key in ("texts", "scores", "search", "table_rows"):
      assert got[key] == expected[key], key
    # Gradients are summed over devices in another order: close, not equal.
    np.testing.assert_allclose(got["trained"], expected["trained"], rtol=1e-5)
  assert expected["table_rows"] == len(expected["search"]) == 5
  assert (shared / "outcomes.jsonl").read_text() == (alone / "outcomes.jsonl").read_text()
  got_metrics, expected_metrics = (_metric_lines(d / "metrics.jsonl") for d in (shared, alone))
  assert [(m["step"], sorted(m)) for m in got_metrics] == [
      (m["step"], sorted(m)) for m in expected_metrics]
  assert len(expected_metrics) == 3  # steps 1 and 2, one validation
  for got, want in zip(got_metrics, expected_metrics, strict=True):
    np.testing.assert_allclose([got[k] for k in sorted(got) if k != "stage"],
                               [want[k] for k in sorted(want) if k != "stage"], rtol=1e-5)
  assert sorted(os.listdir(shared)) == sorted(os.listdir(alone))


# ----------------------------------------------------------- placement

@pytest.fixture(scope="module")
def meshes():
  return {shape: parallel.make_mesh(config_dict.ConfigDict(dict(data=shape[0],
                                                                model=shape[1])))
          for shape in [(8, 1), (2, 4), (1, 8)]}


def _assert_same_placement(got: jax.Array, expected: jax.Array) -> None:
  assert got.sharding.is_equivalent_to(expected.sharding, expected.ndim)
  assert got.dtype == expected.dtype
  for got_shard, expected_shard in zip(got.addressable_shards, expected.addressable_shards,
                                       strict=True):
    assert got_shard.device == expected_shard.device
    assert got_shard.index == expected_shard.index
    np.testing.assert_array_equal(np.asarray(got_shard.data), np.asarray(expected_shard.data))


@pytest.mark.parametrize("mesh_shape", [(8, 1), (2, 4)])
def test_shard_batch_places_rows_as_device_put_does(meshes, mesh_shape):
  mesh = meshes[mesh_shape]
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, 16, (8, 5)),  # int64 on the host: int32 on devices
           "mask": rng.random((8, 5)) < 0.5,
           "weights": rng.random((8,)), "count": np.int32(3)}
  placed = parallel.shard_batch(batch, mesh)
  for name, value in batch.items():
    spec = PartitionSpec("data", *([None] * (np.ndim(value) - 1))) if np.ndim(value) else (
        PartitionSpec())
    _assert_same_placement(placed[name], jax.device_put(value, NamedSharding(mesh, spec)))


def test_params_placed_through_the_host_equal_device_put(meshes, monkeypatch):
  # What several processes do with parameters held on one device each.
  mesh = meshes[(1, 8)]
  rules = tuple(dict(batch="data", mlp="model", heads="model", kv_heads="model").items())
  _, params, _ = testing.tiny_policy()
  expected = parallel.shard_params(params, mesh, rules)
  replicated = parallel.replicate(params, mesh)
  key = jax.random.split(jax.random.key(0), 8)
  expected_key = parallel.shard_batch(key, mesh)
  monkeypatch.setattr(parallel, "_device_to_device", lambda x, sharding: False)
  jax.tree.map(_assert_same_placement, parallel.shard_params(params, mesh, rules), expected)
  jax.tree.map(_assert_same_placement, parallel.replicate(params, mesh), replicated)
  got_key = parallel.shard_batch(key, mesh)
  assert jax.dtypes.issubdtype(got_key.dtype, jax.dtypes.prng_key)
  _assert_same_placement(jax.random.key_data(got_key), jax.random.key_data(expected_key))


def test_to_host_returns_the_whole_array(meshes):
  values = jnp.arange(32).reshape(8, 4)
  sharded = parallel.shard_batch(values, meshes[(2, 4)])
  np.testing.assert_array_equal(parallel.to_host({"v": sharded})["v"], np.asarray(values))
