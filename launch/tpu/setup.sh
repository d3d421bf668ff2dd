#!/usr/bin/env bash
# Puts the code on every worker of the slice and installs it: a Python 3.11
# venv with `pip install -e .` and JAX for TPU. Safe to re-run (replaces the
# code, keeps the venv and upgrades what it holds).
#
# The code is `git archive HEAD` of this checkout (commit your changes first),
# or, with REPO_URL set, a `git clone` of that URL on every worker.
set -euo pipefail

usage() {
  printf '%s\n' \
    "usage: TPU_NAME=NAME ZONE=ZONE $0" \
    "" \
    "Copies the code to every worker and installs it. Environment:" \
    "  TPU_NAME, ZONE  the slice (required); PROJECT (default: gcloud's configured project)" \
    "  REPO_URL        git URL to clone on the workers (default: copy \`git archive HEAD\`)" \
    "  GIT_REF         branch or tag to clone (default: the default branch; with REPO_URL)" \
    "  REMOTE_DIR      code directory on the workers, relative to home (default ttscale)" \
    "  VENV_DIR        venv on the workers, relative to home (default ttscale-venv)" \
    "  PYTHON          interpreter for the venv; apt-installed if missing (default python3.11)" \
    "  JAX_PACKAGE     JAX requirement (default jax[tpu]; e.g. 'jax[tpu]==0.7.2')"
}
if [[ ${1-} == -h || ${1-} == --help ]]; then usage; exit 0; fi
if [[ $# -gt 0 || -z ${TPU_NAME-} || -z ${ZONE-} ]]; then usage >&2; exit 2; fi
if ! command -v gcloud >/dev/null; then
  echo "$0: gcloud not found on PATH (install the Google Cloud CLI)" >&2; exit 127
fi

REMOTE_DIR=${REMOTE_DIR:-ttscale}
VENV_DIR=${VENV_DIR:-ttscale-venv}
case $REMOTE_DIR in
  /* | .* | *..*) echo "$0: REMOTE_DIR must be a directory under the home directory" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3.11}
JAX_PACKAGE=${JAX_PACKAGE:-jax[tpu]}
flags=(--zone="$ZONE" --worker=all)
if [[ -n ${PROJECT-} ]]; then flags+=(--project="$PROJECT"); fi

# Values for the workers' shell, quoted; the scripts below run there (bash).
printf -v prelude 'dir=%q venv=%q python=%q jax=%q repo=%q ref=%q; ' \
  "$REMOTE_DIR" "$VENV_DIR" "$PYTHON" "$JAX_PACKAGE" "${REPO_URL-}" "${GIT_REF-}"

if [[ -z ${REPO_URL-} ]]; then
  repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  tarball=$(mktemp "${TMPDIR:-/tmp}/ttscale.XXXXXX")
  trap 'rm -f "$tarball"' EXIT
  git -C "$repo_root" archive --format=tar.gz -o "$tarball" HEAD
  if [[ -n $(git -C "$repo_root" status --porcelain --untracked-files=no) ]]; then
    echo "warning: uncommitted changes are not copied (git archive HEAD)" >&2
  fi
  echo "copying $(git -C "$repo_root" rev-parse --short HEAD) to every worker of $TPU_NAME"
  gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:ttscale.tar.gz" "${flags[@]}"
  # shellcheck disable=SC2016  # expands on the workers
  fetch='rm -rf "$dir"; mkdir -p "$dir"; tar -xzf ttscale.tar.gz -C "$dir"; rm ttscale.tar.gz'
else
  # shellcheck disable=SC2016  # expands on the workers
  fetch='rm -rf "$dir"; git clone --depth 1 ${ref:+--branch "$ref"} "$repo" "$dir"'
fi

# shellcheck disable=SC2016  # expands on the workers
install='
if ! command -v "$python" >/dev/null; then
  sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
    "$python" "$python-venv"
fi
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q -U pip
"$venv/bin/pip" install -q -e "$(realpath -- "$dir")"
"$venv/bin/pip" install -q -U "$jax"
echo "$(hostname): jax $("$venv/bin/python" -c "import jax, ttscale; print(jax.__version__)")"
'

gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" \
  --command="set -euo pipefail; cd ~; ${prelude}${fetch}; ${install}"
