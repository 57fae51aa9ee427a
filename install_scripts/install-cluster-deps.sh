#!/usr/bin/env bash
# Install the Debian packages the local multi-node cluster and the MPI apps need. Idempotent: packages
# already installed are left alone, and apt is not touched at all when nothing is missing.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev mpich libmpich-dev
          iproute2 openssh-server openssh-client util-linux gcc make)
# What the test suite checks with, beyond the cluster itself (--test): shellcheck, and Charliecloud with
# mmdebstrap, which build and run the image the container tests use.
TEST_PACKAGES=(shellcheck charliecloud-runtime mmdebstrap)

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--test] [--dry-run] [--help]
Installs with apt-get (as root): ${PACKAGES[*]}
  --test     also what the test suite needs: ${TEST_PACKAGES[*]}
  --dry-run  print the apt-get commands instead of running them
USAGE
}

dry_run=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --test) PACKAGES+=("${TEST_PACKAGES[@]}") ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$(basename "$0"): unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-cluster-deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

run() { if [ "$dry_run" = 1 ]; then echo "$*"; else "$@"; fi; }

if [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install-cluster-deps: must run as root to install: ${missing[*]}" >&2
  exit 1
fi
echo "install-cluster-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
run apt-get update -qq
run apt-get install -y -qq --no-install-recommends "${missing[@]}"
