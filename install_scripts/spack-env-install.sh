#!/usr/bin/env bash
# Create and install fluxmpi's Spack environment in PREFIX/env, make the Parsl venv from its python,
# and write the env file workers source.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

usage() {
	cat <<EOF
Usage: $FM_PROG --prefix PREFIX [--site-packages FILE] [--jobs N] [--spack PATH] [--dry-run]

With Spack in PREFIX/spack (install_scripts/spack-install.sh), run:
  1. cp FILE PREFIX/spack/etc/spack/packages.yaml     (only with --site-packages: the cluster's
     externals, e.g. Slurm with PMIx; see spack/examples/)
  2. spack env create -d PREFIX/env spack/spack.yaml
  3. spack -e PREFIX/env concretize
  4. spack -e PREFIX/env install --fail-fast [-j N]
  5. spack env activate --sh -d PREFIX/env > PREFIX/env/activate.sh
  6. PREFIX/env/view/bin/python3 -m venv --system-site-packages PREFIX/parsl-venv
  7. PREFIX/parsl-venv/bin/python -m pip install parsl==$FM_PARSL_VERSION
  8. install_scripts/spack-envfile.sh ... --out PREFIX/$FM_ENV_FILE_NAME

Idempotent: an existing environment is kept (a spack.yaml that differs from the repository's is
reported, not overwritten), concretize and install redo nothing that is done, the activate script
is regenerated only when spack.lock is newer, the venv and parsl are skipped when present, and the
env file is rewritten only when its content changes.

Options:
  --prefix PREFIX       absolute install prefix (required)
  --site-packages FILE  a packages.yaml with the cluster's externals, copied into Spack's site scope
  --jobs N              build jobs per package (spack install -j N)
  --spack PATH          spack executable to use (default PREFIX/spack/bin/spack)
  --dry-run             print the commands that would run, run none of them
  -h, --help            this help
EOF
}

prefix='' site_packages='' jobs='' spack_opt=''
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) fm_need_value "$@"; prefix=$2; shift 2 ;;
	--site-packages) fm_need_value "$@"; site_packages=$2; shift 2 ;;
	--jobs) fm_need_value "$@"; jobs=$2; shift 2 ;;
	--spack) fm_need_value "$@"; spack_opt=$2; shift 2 ;;
	--dry-run) FM_DRY_RUN=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) fm_usage_die "unknown argument '$1'" ;;
	esac
done
fm_set_prefix "$prefix"
if [ -n "$jobs" ] && ! [[ $jobs =~ ^[1-9][0-9]*$ ]]; then
	fm_usage_die "--jobs '$jobs' is not a positive integer"
fi
if [ -n "$site_packages" ]; then
	site_packages=$(fm_abspath --site-packages "$site_packages")
	[ -r "$site_packages" ] || fm_usage_die "--site-packages '$site_packages' is not a readable file"
fi
fm_find_spack "$spack_opt"

env_dir="$FM_PREFIX/$FM_ENV_DIR_NAME"
recipe="$FM_REPO_ROOT/spack/spack.yaml"
[ -r "$recipe" ] || fm_die "$recipe is missing: run this script from a fluxmpi checkout"

if [ -n "$site_packages" ]; then
	site_dst="$(dirname "$(dirname "$FM_SPACK")")/etc/spack/packages.yaml"
	if [ -f "$site_dst" ] && cmp -s "$site_packages" "$site_dst"; then
		fm_skip "$site_dst already holds $site_packages"
	else
		fm_run cp "$site_packages" "$site_dst"
	fi
fi

if [ -f "$env_dir/spack.yaml" ]; then
	if cmp -s "$recipe" "$env_dir/spack.yaml"; then
		fm_skip "environment $env_dir exists"
	else
		fm_note "keeping $env_dir/spack.yaml, which differs from $recipe (remove $env_dir to start from the repository's recipe)"
	fi
else
	fm_run "$FM_SPACK" env create -d "$env_dir" "$recipe"
fi

# Both are idempotent in Spack: concretize keeps an up-to-date lock, install skips installed specs.
fm_run "$FM_SPACK" -e "$env_dir" concretize
install_args=(install --fail-fast)
[ -n "$jobs" ] && install_args+=(-j "$jobs")
fm_run "$FM_SPACK" -e "$env_dir" "${install_args[@]}"

fm_write_activate_script "$env_dir"
fm_make_parsl_venv "$env_dir" "$FM_PREFIX/$FM_VENV_DIR_NAME"
fm_write_env_file
fm_done "workers source $FM_PREFIX/$FM_ENV_FILE_NAME (check it: fluxmpi env --check $FM_PREFIX/$FM_ENV_FILE_NAME)"
