#!/usr/bin/env bash
# Deletes the Cloud TPU VM slice TPU_NAME (gcloud asks to confirm; pass --quiet
# to skip). The workdir in Cloud Storage is kept.
set -euo pipefail

usage() {
  printf '%s\n' \
    "usage: TPU_NAME=NAME ZONE=ZONE $0 [GCLOUD_FLAGS...]   (e.g. --quiet, --async)" \
    "" \
    "Deletes the TPU VM slice TPU_NAME. Environment: TPU_NAME, ZONE (required)," \
    "PROJECT (default: gcloud's configured project)."
}
if [[ ${1-} == -h || ${1-} == --help ]]; then usage; exit 0; fi
if [[ -z ${TPU_NAME-} || -z ${ZONE-} ]]; then usage >&2; exit 2; fi
if ! command -v gcloud >/dev/null; then
  echo "$0: gcloud not found on PATH (install the Google Cloud CLI)" >&2; exit 127
fi

flags=(--zone="$ZONE")
if [[ -n ${PROJECT-} ]]; then flags+=(--project="$PROJECT"); fi

gcloud compute tpus tpu-vm delete "$TPU_NAME" "${flags[@]}" "$@"
