#!/usr/bin/env bash
# On a fresh cluster: install PREFIX from a build cache made by spack-pack.sh, or unpack a
# spack-pack.sh tarball at the same absolute path; then write the env file.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

usage() {
	cat <<EOF
Usage: $FM_PROG --prefix PREFIX (--mirror DIR | --tarball FILE) [--spack PATH] [--dry-run]

From a build cache (--mirror DIR, made by spack-pack.sh --mirror; PREFIX may differ from the
build's):
  1. install_scripts/spack-install.sh --prefix PREFIX      (only when PREFIX/spack is missing)
  2. spack env create --with-view PREFIX/env/view -d PREFIX/env DIR/$FM_LOCK_DIR_NAME/spack.lock
     (the packed specs, same hashes)
  3. spack -e PREFIX/env mirror add --unsigned $FM_MIRROR_NAME DIR
  4. spack -e PREFIX/env install --use-buildcache only --fail-fast   (binaries only, no builds)
  5. spack env activate --sh -d PREFIX/env > PREFIX/env/activate.sh
  6. the Parsl venv and parsl==$FM_PARSL_VERSION, as spack-env-install.sh does
  7. install_scripts/spack-envfile.sh ... --out PREFIX/$FM_ENV_FILE_NAME
  Externals (the cluster's Slurm, PMIx) are not in the cache: the lockfile names their prefixes, so
  the new cluster must have them there too.

From a tarball (--tarball FILE, made by spack-pack.sh --tarball):
  The tarball records the absolute path it was packed at; it is unpacked only when that equals
  PREFIX (RPATHs, shebangs and view links hold that path), and never over a non-empty directory:
  1. mkdir -p \$(dirname PREFIX)
  2. tar -C \$(dirname PREFIX) -xzf FILE
  3. install_scripts/spack-envfile.sh ... --out PREFIX/$FM_ENV_FILE_NAME

Steps already done are skipped and reported.

Options:
  --prefix PREFIX   absolute install prefix (required)
  --mirror DIR      build cache directory (from spack-pack.sh --mirror)
  --tarball FILE    tarball (from spack-pack.sh --tarball)
  --spack PATH      spack executable (default PREFIX/spack/bin/spack)
  --dry-run         print the commands that would run, run none of them
  -h, --help        this help
EOF
}

prefix='' mirror='' tarball='' spack_opt=''
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) fm_need_value "$@"; prefix=$2; shift 2 ;;
	--mirror) fm_need_value "$@"; mirror=$2; shift 2 ;;
	--tarball) fm_need_value "$@"; tarball=$2; shift 2 ;;
	--spack) fm_need_value "$@"; spack_opt=$2; shift 2 ;;
	--dry-run) FM_DRY_RUN=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) fm_usage_die "unknown argument '$1'" ;;
	esac
done
fm_set_prefix "$prefix"
if [ -n "$mirror" ] && [ -n "$tarball" ]; then
	fm_usage_die "give --mirror or --tarball, not both"
fi
[ -n "$mirror" ] || [ -n "$tarball" ] || fm_usage_die "give --mirror DIR or --tarball FILE"

env_dir="$FM_PREFIX/$FM_ENV_DIR_NAME"

redeploy_from_tarball() {
	local file=$1 parent base recorded
	[ -r "$file" ] || fm_usage_die "--tarball '$file' is not a readable file"
	parent=$(dirname "$FM_PREFIX")
	base=$(basename "$FM_PREFIX")
	# Reading one member changes nothing, so this check runs in --dry-run too.
	recorded=$(tar -xzOf "$file" "$base/$FM_PREFIX_RECORD" 2>/dev/null) || recorded=
	if [ -z "$recorded" ]; then
		fm_die "$file has no $base/$FM_PREFIX_RECORD: it was not packed from a prefix named $base (spack-pack.sh --tarball records the path); a Spack tree only works at its original absolute path, so unpack it there, or use the build cache route (--mirror)"
	fi
	if [ "$recorded" != "$FM_PREFIX" ]; then
		fm_die "$file was packed at $recorded and works only there (RPATHs, shebangs, view links): rerun with --prefix $recorded, or use the build cache route (spack-pack.sh --mirror, then --mirror here)"
	fi
	if [ -f "$FM_PREFIX/$FM_PREFIX_RECORD" ] && [ "$(cat "$FM_PREFIX/$FM_PREFIX_RECORD")" = "$FM_PREFIX" ]; then
		fm_skip "$FM_PREFIX already holds an unpacked deployment"
	elif [ -d "$FM_PREFIX" ] && [ -n "$(ls -A "$FM_PREFIX")" ]; then
		fm_die "$FM_PREFIX exists and is not empty: refusing to unpack over it; remove it or choose an empty prefix"
	else
		fm_run mkdir -p "$parent"
		fm_run tar -C "$parent" -xzf "$file"
	fi
	fm_write_env_file
}

redeploy_from_mirror() {
	local dir=$1 lock="$1/$FM_LOCK_DIR_NAME/spack.lock"
	[ -d "$dir" ] || fm_usage_die "--mirror '$dir' is not a directory"
	[ -r "$lock" ] || fm_usage_die "--mirror '$dir' has no $FM_LOCK_DIR_NAME/spack.lock: make it with install_scripts/spack-pack.sh --mirror $dir"
	if [ -z "$spack_opt" ] && [ ! -x "$FM_PREFIX/spack/bin/spack" ]; then
		local dry=()
		[ "$FM_DRY_RUN" = 1 ] && dry=(--dry-run)
		fm_show "$FM_SCRIPTS_DIR/spack-install.sh" --prefix "$FM_PREFIX"
		# In --dry-run the installer prints its own commands below this line.
		"$FM_SCRIPTS_DIR/spack-install.sh" --prefix "$FM_PREFIX" "${dry[@]}"
		FM_SPACK="$FM_PREFIX/spack/bin/spack"
	else
		fm_find_spack "$spack_opt"
	fi
	# Spack rewrites the lockfile it is given, so remember the source's checksum to recognise it.
	local stamp="$env_dir/.fluxmpi-source-lock.sha256"
	if [ -f "$stamp" ] && [ "$(sha256sum "$lock")" = "$(cat "$stamp")" ]; then
		fm_skip "environment $env_dir already made from $lock"
	elif [ -e "$env_dir" ]; then
		fm_die "$env_dir exists but was not made from $lock: remove it, or choose another prefix"
	else
		# A manifest made from a lockfile says `view: true` (DIR/.spack-env/view); name the view
		# PREFIX/env/view, where the venv and env file expect it. --with-view must precede -d:
		# after the directory, argparse no longer takes the lockfile as the second positional.
		fm_run "$FM_SPACK" env create --with-view "$env_dir/view" -d "$env_dir" "$lock"
		fm_run_to "$stamp" sha256sum "$lock"
	fi
	if [ -x "$FM_SPACK" ] && "$FM_SPACK" -e "$env_dir" mirror list 2>/dev/null | grep -q "^${FM_MIRROR_NAME}[[:space:]]"; then
		fm_skip "mirror $FM_MIRROR_NAME is already configured in $env_dir"
	else
		fm_run "$FM_SPACK" -e "$env_dir" mirror add --unsigned "$FM_MIRROR_NAME" "$dir"
	fi
	# Installed specs are skipped by Spack itself.
	fm_run "$FM_SPACK" -e "$env_dir" install --use-buildcache only --fail-fast
	fm_write_activate_script "$env_dir"
	fm_make_parsl_venv "$env_dir" "$FM_PREFIX/$FM_VENV_DIR_NAME"
	fm_write_env_file
}

if [ -n "$tarball" ]; then
	redeploy_from_tarball "$(fm_abspath --tarball "$tarball")"
else
	redeploy_from_mirror "$(fm_abspath --mirror "$mirror")"
fi
fm_done "workers source $FM_PREFIX/$FM_ENV_FILE_NAME"
