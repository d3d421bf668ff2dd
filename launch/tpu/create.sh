#!/usr/bin/env bash
# Creates the Cloud TPU VM slice TPU_NAME in ZONE. Extra arguments go to
# `gcloud compute tpus tpu-vm create` (e.g. --spot, --async).
set -euo pipefail

usage() {
  printf '%s\n' \
    "usage: TPU_NAME=NAME ZONE=ZONE $0 [GCLOUD_FLAGS...]" \
    "" \
    "Creates the TPU VM slice TPU_NAME. Environment:" \
    "  TPU_NAME          name of the slice (required)" \
    "  ZONE              zone, e.g. europe-west4-b (v5e), us-central2-b (v4) (required)" \
    "  ACCELERATOR_TYPE  slice type (default v5litepod-16; e.g. v4-32, v5p-32, v6e-16)" \
    "  RUNTIME_VERSION   TPU software version (default: the one for ACCELERATOR_TYPE:" \
    "                    v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p," \
    "                    v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base for v4 and older)" \
    "  PROJECT           Google Cloud project (default: gcloud's configured project)"
}
if [[ ${1-} == -h || ${1-} == --help ]]; then usage; exit 0; fi
if [[ -z ${TPU_NAME-} || -z ${ZONE-} ]]; then usage >&2; exit 2; fi
if ! command -v gcloud >/dev/null; then
  echo "$0: gcloud not found on PATH (install the Google Cloud CLI)" >&2; exit 127
fi

ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5litepod-16}
case $ACCELERATOR_TYPE in
  v5litepod-* | v5e-*) default_version=v2-alpha-tpuv5-lite ;;
  v5p-*) default_version=v2-alpha-tpuv5 ;;
  v6e-*) default_version=v2-alpha-tpuv6e ;;
  *) default_version=tpu-ubuntu2204-base ;;
esac
RUNTIME_VERSION=${RUNTIME_VERSION:-$default_version}
flags=(--zone="$ZONE")
if [[ -n ${PROJECT-} ]]; then flags+=(--project="$PROJECT"); fi

gcloud compute tpus tpu-vm create "$TPU_NAME" "${flags[@]}" \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "$@"
