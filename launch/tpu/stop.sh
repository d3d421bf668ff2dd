#!/usr/bin/env bash
# Stops the run on every worker (the process recorded by run.sh). The workdir
# keeps what finished; run.sh resumes from there.
set -euo pipefail

usage() {
  printf '%s\n' \
    "usage: TPU_NAME=NAME ZONE=ZONE $0" \
    "" \
    "Sends SIGTERM to the launch.main process that run.sh started on every worker" \
    "(pid in ~/ttscale-logs/run.pid). PROJECT: as in run.sh."
}
if [[ ${1-} == -h || ${1-} == --help ]]; then usage; exit 0; fi
if [[ $# -gt 0 || -z ${TPU_NAME-} || -z ${ZONE-} ]]; then usage >&2; exit 2; fi
if ! command -v gcloud >/dev/null; then
  echo "$0: gcloud not found on PATH (install the Google Cloud CLI)" >&2; exit 127
fi

flags=(--zone="$ZONE" --worker=all)
if [[ -n ${PROJECT-} ]]; then flags+=(--project="$PROJECT"); fi
# shellcheck disable=SC2016  # expands on the workers
script='pid=~/ttscale-logs/run.pid
if [[ -f $pid ]] && kill "$(<"$pid")" 2>/dev/null; then
  echo "$(hostname): stopped pid $(<"$pid")"
else
  echo "$(hostname): no run in progress"
fi'

gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" --command="$script"
