#!/usr/bin/env bash
# Set up fluxmpi on this machine: the Debian packages of the local cluster, then the package itself
# (editable, from this checkout). `--test` adds the test extras. Idempotent.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
extras="flux"
deps_args=()

for arg in "$@"; do
  case "$arg" in
    --test) extras="flux,test"; deps_args+=(--test) ;;
    -h|--help) echo "Usage: $(basename "$0") [--test]   (as root on Debian 12)"; exit 0 ;;
    *) echo "$(basename "$0"): unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

bash "$here/install-cluster-deps.sh" "${deps_args[@]}"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e "${repo}[${extras}]"
echo "install: fluxmpi $(python3 -c 'import fluxmpi; print(fluxmpi.__version__)') ready ($(command -v fluxmpi))"
