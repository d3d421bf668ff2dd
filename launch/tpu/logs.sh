#!/usr/bin/env bash
# Shows the end of the newest run log on every worker (-f: follows them).
set -euo pipefail

usage() {
  printf '%s\n' \
    "usage: TPU_NAME=NAME ZONE=ZONE $0 [-f]" \
    "" \
    "Prints the last TAIL_LINES (default 20) lines of the newest ~/ttscale-logs/*.log" \
    "of every worker, headed by the file name (which holds the worker's host name);" \
    "-f keeps following them (Ctrl-C to end; the run goes on). PROJECT: as in run.sh."
}
if [[ ${1-} == -h || ${1-} == --help ]]; then usage; exit 0; fi
if [[ -z ${TPU_NAME-} || -z ${ZONE-} || $# -gt 1 || ( $# == 1 && $1 != -f ) ]]; then
  usage >&2; exit 2
fi
if ! command -v gcloud >/dev/null; then
  echo "$0: gcloud not found on PATH (install the Google Cloud CLI)" >&2; exit 127
fi

flags=(--zone="$ZONE" --worker=all)
if [[ -n ${PROJECT-} ]]; then flags+=(--project="$PROJECT"); fi
printf -v tail_flags '%q ' -v -n "${TAIL_LINES:-20}" "$@"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" \
  --command="tail ${tail_flags}\"\$(ls -t ~/ttscale-logs/*.log | head -n 1)\""
