#!/usr/bin/env bash
# Runs the study on every worker of the slice at once:
#   python -m launch.main --config=CONFIG --workdir=WORKDIR --multihost=on FLAGS...
# Each worker logs to ~/ttscale-logs/STAMP-HOSTNAME.log on the worker; gcloud
# also writes each worker's output to LOCAL_LOG_DIR/STAMP/WORKER.log here.
# Every stage resumes, so re-running the same command continues the study.
set -euo pipefail

usage() {
  printf '%s\n' \
    "usage: TPU_NAME=NAME ZONE=ZONE $0 CONFIG WORKDIR [LAUNCH_MAIN_FLAGS...]" \
    "  e.g. $0 configs/arith.py:paper gs://my-bucket/ttscale/paper --stages=data" \
    "" \
    "Runs launch.main on all workers with --multihost=on. Environment:" \
    "  TPU_NAME, ZONE  the slice (required); PROJECT (default: gcloud's configured project)" \
    "  DETACH=1        start in the background on the workers and return at once" \
    "                  (watch with logs.sh, end with stop.sh)" \
    "  LOCAL_LOG_DIR   where gcloud writes each worker's output (default logs/TPU_NAME)" \
    "  REMOTE_DIR      code directory on the workers (default ttscale; see setup.sh)" \
    "  VENV_DIR        venv on the workers (default ttscale-venv)"
}
if [[ ${1-} == -h || ${1-} == --help ]]; then usage; exit 0; fi
if [[ $# -lt 2 || -z ${TPU_NAME-} || -z ${ZONE-} ]]; then usage >&2; exit 2; fi
if ! command -v gcloud >/dev/null; then
  echo "$0: gcloud not found on PATH (install the Google Cloud CLI)" >&2; exit 127
fi

config=$1 workdir=$2
shift 2
stamp=$(date +%Y%m%d-%H%M%S)
local_logs=${LOCAL_LOG_DIR:-logs/$TPU_NAME}/$stamp
flags=(--zone="$ZONE" --worker=all)
if [[ -n ${PROJECT-} ]]; then flags+=(--project="$PROJECT"); fi

# Values for the workers' shell, quoted; the script below runs there (bash).
printf -v main_args ' %q' "--config=$config" "--workdir=$workdir" --multihost=on "$@"
printf -v prelude 'dir=%q venv=%q stamp=%q detach=%q; args=(%s); ' \
  "${REMOTE_DIR:-ttscale}" "${VENV_DIR:-ttscale-venv}" "$stamp" "${DETACH:-0}" "$main_args"
# shellcheck disable=SC2016  # expands on the workers
script='
python=$(realpath -s -- "$venv/bin/python")
if [[ ! -x $python ]]; then echo "$(hostname): no $python; run setup.sh first" >&2; exit 1; fi
mkdir -p ttscale-logs
log=$(realpath -- ttscale-logs)/$stamp-$(hostname).log pid=$(realpath -- ttscale-logs)/run.pid
if [[ -f $pid ]] && kill -0 "$(<"$pid")" 2>/dev/null; then
  echo "$(hostname): a run is in progress (pid $(<"$pid")); stop it with stop.sh" >&2; exit 1
fi
cd "$dir"
export PYTHONUNBUFFERED=1
echo "$(hostname): python -m launch.main ${args[*]}; log: $log"
if [[ $detach == 1 ]]; then
  nohup "$python" -m launch.main "${args[@]}" >"$log" 2>&1 </dev/null &
  echo "$!" >"$pid"
else
  { echo "$BASHPID" >"$pid"; exec "$python" -m launch.main "${args[@]}"; } 2>&1 | tee "$log"
fi
'

mkdir -p "$local_logs"
echo "running on every worker of $TPU_NAME; output of worker N: $local_logs/N.log"
echo "  watch: tail -f $local_logs/0.log   (or: TPU_NAME=$TPU_NAME ZONE=$ZONE $(dirname "$0")/logs.sh -f)"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" --output-directory="$local_logs" \
  --command="set -euo pipefail; cd ~; ${prelude}${script}"
