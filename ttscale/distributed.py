"""Several hosts, one program: starting `jax.distributed`, and who writes.

On a TPU pod slice (or a GPU cluster) the same program runs on every host,
one process each. `initialize` connects them before JAX starts its backends;
after that `jax.devices()` lists every host's devices and one mesh spans
them all (`ttscale.parallel` hands each process only its own slices).
Files are written by process 0 alone (`ttscale.io_utils`), between two
`barrier`s, so the workdir must be shared by every host (`gs://...` or a
network file system).

When are there several hosts ("auto")? Checked from the environment only,
so a plain machine never waits on a coordinator:

- `JAX_COORDINATOR_ADDRESS` set (with `JAX_NUM_PROCESSES` not 1): a cluster
  launched by hand. JAX reads the address itself; `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID`, which JAX does not read, are passed on here.
- `TPU_WORKER_HOSTNAMES` (or `TPU_PROCESS_ADDRESSES`) naming several hosts,
  or `MEGASCALE_NUM_SLICES` > 1: TPU slices on GKE, Ray or multislice.
- Slurm (`SLURM_NTASKS` > 1 with the variables JAX's Slurm detection needs)
  or Open MPI (`OMPI_COMM_WORLD_SIZE` > 1).
- A Cloud TPU VM of a pod slice made with `gcloud compute tpus tpu-vm
  create`, which sets none of these: its hosts are listed by the GCE
  metadata server (`worker-network-endpoints`, as JAX's own detection reads
  them). It is asked only when this machine has Google TPU chips on its PCI
  bus, so nothing else ever makes that request.
"""

from __future__ import annotations

import glob
import logging
import os
import pathlib
import urllib.request
from collections.abc import Mapping

import jax
from jax.experimental import multihost_utils

MODES = ("auto", "on", "off")

_GOOGLE_PCI_VENDOR = "0x1ae0"
_METADATA_URL = "http://{host}/computeMetadata/v1/instance/attributes/worker-network-endpoints"
_METADATA_TIMEOUT_SECONDS = 5


def initialize(mode: str) -> bool:
  """Starts `jax.distributed` as `mode` (the `--multihost` flag) says.

  Must run before anything touches JAX devices. "on" always initialises
  (JAX detects Cloud TPU, Slurm, Open MPI and Kubernetes itself), "auto"
  only when `several_hosts()`, "off" never.

  Returns:
    Whether `jax.distributed` is initialised (by this call or before).
  """
  if mode not in MODES:
    raise ValueError(f"--multihost={mode}: expected one of {', '.join(MODES)}")
  if jax.distributed.is_initialized():
    return True
  if mode == "off" or (mode == "auto" and not several_hosts()):
    return False
  jax.distributed.initialize(**_process_arguments(os.environ))
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  return True


def _process_arguments(environ: Mapping[str, str]) -> dict[str, int]:
  """`num_processes` and `process_id` from the environment, where set."""
  arguments = {}
  for variable, name in (("JAX_NUM_PROCESSES", "num_processes"),
                         ("JAX_PROCESS_ID", "process_id")):
    if environ.get(variable):
      arguments[name] = int(environ[variable])
  return arguments


def several_hosts(environ: Mapping[str, str] | None = None) -> bool:
  """Whether this process is one of several (see the module docstring)."""
  environ = os.environ if environ is None else environ
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return _count(environ, "JAX_NUM_PROCESSES", default=2) > 1
  if _count(environ, "JAX_NUM_PROCESSES") > 1:
    return True
  hostnames = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES")
  if hostnames is not None:
    return len([h for h in hostnames.split(",") if h.strip()]) > 1
  if _count(environ, "MEGASCALE_NUM_SLICES") > 1:
    return True
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
  if all(v in environ for v in slurm) and _count(environ, "SLURM_NTASKS") > 1:
    return True
  if _count(environ, "OMPI_COMM_WORLD_SIZE") > 1:
    return True
  if "TPU_SKIP_MDS_QUERY" not in environ and has_tpu_chips():
    return cloud_tpu_host_count(environ) > 1
  return False


def _count(environ: Mapping[str, str], variable: str, default: int = 0) -> int:
  try:
    return int(environ.get(variable, default))
  except ValueError:
    return default


def has_tpu_chips() -> bool:
  """Whether a Google TPU sits on this machine's PCI bus (a local check)."""
  return any(pathlib.Path(vendor).read_text().strip() == _GOOGLE_PCI_VENDOR
             for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"))


def cloud_tpu_host_count(environ: Mapping[str, str]) -> int:
  """Hosts of this Cloud TPU VM's slice, from the GCE metadata server (1 if
  it does not answer: a TPU machine that is not a Cloud TPU VM)."""
  host = environ.get("GCE_METADATA_IP", "metadata.google.internal")
  request = urllib.request.Request(_METADATA_URL.format(host=host),
                                   headers={"Metadata-Flavor": "Google"})
  # No proxies: the metadata server answers only from inside the VM.
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
  try:
    with opener.open(request, timeout=_METADATA_TIMEOUT_SECONDS) as response:
      endpoints = response.read().decode()
  except OSError:
    return 1
  return max(1, len([e for e in endpoints.split(",") if e.strip()]))


def _multiprocess() -> bool:
  # Without `jax.distributed` there is one process; asking `jax.process_count`
  # then would start the backends, which a report run on a TPU host that is
  # training must not (the chips are taken).
  return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
  """Whether this process writes shared files: process 0 (or the only one)."""
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches `barrier(name)`; no-op on one process.

  `name` must be the same on every process (a mismatch is an error), so it
  also checks that the processes are at the same point of the program.
  """
  if _multiprocess():
    multihost_utils.sync_global_devices(name)
