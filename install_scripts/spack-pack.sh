#!/usr/bin/env bash
# Pack an installed PREFIX for another cluster: a Spack build cache (any path) and/or a tarball
# (only valid when unpacked at the very same absolute path).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

usage() {
	cat <<EOF
Usage: $FM_PROG --prefix PREFIX [--mirror DIR] [--tarball FILE] [--force] [--spack PATH] [--dry-run]

Build cache route (--mirror DIR; installs anywhere, Spack relocates the binaries):
  1. mkdir -p DIR
  2. spack -e PREFIX/env buildcache push --unsigned --update-index DIR
     (all environment specs and their link/run dependencies; specs already in DIR are skipped)
  3. copy PREFIX/env/spack.yaml and spack.lock to DIR/$FM_LOCK_DIR_NAME/ (spack-redeploy.sh
     recreates the environment from that lockfile: the same hashes, so every spec comes from DIR)
  Unsigned because DIR is a filesystem path you control; to sign, push by hand with --key.

Tarball route (--tarball FILE; works ONLY unpacked at PREFIX itself: RPATHs, shebangs and view
symlinks hold absolute paths):
  1. echo PREFIX > PREFIX/$FM_PREFIX_RECORD   (the path spack-redeploy.sh insists on)
  2. tar -C \$(dirname PREFIX) -czf FILE \$(basename PREFIX)
  An existing FILE is kept unless --force.

Options:
  --prefix PREFIX   the installed prefix (required)
  --mirror DIR      filesystem build cache to push to
  --tarball FILE    tarball to write (outside PREFIX)
  --force           rewrite an existing tarball
  --spack PATH      spack executable (default PREFIX/spack/bin/spack)
  --dry-run         print the commands that would run, run none of them
  -h, --help        this help
At least one of --mirror and --tarball is required.
EOF
}

prefix='' mirror='' tarball='' force=0 spack_opt=''
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) fm_need_value "$@"; prefix=$2; shift 2 ;;
	--mirror) fm_need_value "$@"; mirror=$2; shift 2 ;;
	--tarball) fm_need_value "$@"; tarball=$2; shift 2 ;;
	--force) force=1; shift ;;
	--spack) fm_need_value "$@"; spack_opt=$2; shift 2 ;;
	--dry-run) FM_DRY_RUN=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) fm_usage_die "unknown argument '$1'" ;;
	esac
done
fm_set_prefix "$prefix"
[ -n "$mirror" ] || [ -n "$tarball" ] || fm_usage_die "give --mirror DIR, --tarball FILE, or both"
[ -n "$mirror" ] && mirror=$(fm_abspath --mirror "$mirror")
if [ -n "$tarball" ]; then
	tarball=$(fm_abspath --tarball "$tarball")
	case "$tarball/" in
	"$FM_PREFIX"/*) fm_usage_die "--tarball '$tarball' is inside the prefix it packs: put it elsewhere" ;;
	esac
fi

env_dir="$FM_PREFIX/$FM_ENV_DIR_NAME"
if [ ! -f "$env_dir/spack.lock" ]; then
	[ "$FM_DRY_RUN" = 1 ] ||
		fm_die "$env_dir/spack.lock is missing: nothing installed to pack; run install_scripts/spack-env-install.sh --prefix $FM_PREFIX"
	fm_note "$env_dir/spack.lock is missing (the commands below assume an installed environment)"
fi

if [ -n "$mirror" ]; then
	fm_find_spack "$spack_opt"
	fm_run mkdir -p "$mirror"
	fm_run "$FM_SPACK" -e "$env_dir" buildcache push --unsigned --update-index "$mirror"
	lock_copy="$mirror/$FM_LOCK_DIR_NAME"
	if [ -f "$lock_copy/spack.lock" ] && cmp -s "$env_dir/spack.lock" "$lock_copy/spack.lock"; then
		fm_skip "$lock_copy already holds this spack.lock"
	else
		fm_run mkdir -p "$lock_copy"
		fm_run cp "$env_dir/spack.yaml" "$env_dir/spack.lock" "$lock_copy/"
	fi
fi

if [ -n "$tarball" ]; then
	if [ "$FM_DRY_RUN" != 1 ] && [ ! -f "$FM_PREFIX/$FM_ENV_FILE_NAME" ]; then
		fm_die "$FM_PREFIX/$FM_ENV_FILE_NAME is missing: a tarball must carry a working env file; finish install_scripts/spack-env-install.sh first"
	fi
	if [ -e "$tarball" ] && [ "$force" != 1 ]; then
		fm_skip "$tarball exists (pass --force to repack)"
	else
		record="$FM_PREFIX/$FM_PREFIX_RECORD"
		if [ -f "$record" ] && [ "$(cat "$record")" = "$FM_PREFIX" ]; then
			fm_skip "$record already records $FM_PREFIX"
		else
			fm_run_to "$record" echo "$FM_PREFIX"
		fi
		fm_run mkdir -p "$(dirname "$tarball")"
		fm_run tar -C "$(dirname "$FM_PREFIX")" -czf "$tarball" "$(basename "$FM_PREFIX")"
		fm_note "the tarball works only unpacked at $FM_PREFIX (spack-redeploy.sh --tarball enforces it)"
	fi
fi
fm_done "packed $FM_PREFIX"
