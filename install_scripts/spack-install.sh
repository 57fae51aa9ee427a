#!/usr/bin/env bash
# Install Spack at a pinned release into PREFIX/spack, pin its package repository, bootstrap it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

usage() {
	cat <<EOF
Usage: $FM_PROG --prefix PREFIX [--spack-version TAG] [--method git|tarball] [--dry-run]

Install Spack $FM_SPACK_VERSION (a release tag) into PREFIX/spack:
  1. mkdir -p PREFIX
  2. git clone --depth=2 --branch=TAG $FM_SPACK_GIT_URL PREFIX/spack
     (--method tarball: download the tag's source tarball with curl and unpack it instead)
  3. copy spack/repos.yaml to PREFIX/spack/etc/spack/repos.yaml (pins the builtin package
     repository to one spack-packages release, so the recipe versions spack/spack.yaml pins exist)
  4. PREFIX/spack/bin/spack bootstrap now   (clingo, gnupg; a no-op once done)

Steps already done are skipped and reported (a Spack of the same version in PREFIX/spack, an
identical repos.yaml). A Spack of another version there is an error, not overwritten.

Options:
  --prefix PREFIX       absolute install prefix (required); the same one for every script
  --spack-version TAG   Spack release tag (default $FM_SPACK_VERSION)
  --method git|tarball  how to fetch Spack (default git)
  --dry-run             print the commands that would run, run none of them
  -h, --help            this help
EOF
}

prefix='' method=git version=$FM_SPACK_VERSION
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) fm_need_value "$@"; prefix=$2; shift 2 ;;
	--spack-version) fm_need_value "$@"; version=$2; shift 2 ;;
	--method) fm_need_value "$@"; method=$2; shift 2 ;;
	--dry-run) FM_DRY_RUN=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) fm_usage_die "unknown argument '$1'" ;;
	esac
done
fm_set_prefix "$prefix"
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
	fm_usage_die "--spack-version '$version' is not a release tag like $FM_SPACK_VERSION"
case $method in
git | tarball) ;;
*) fm_usage_die "--method '$method' is not git or tarball" ;;
esac

spack_root="$FM_PREFIX/spack"
spack="$spack_root/bin/spack"
repos_src="$FM_REPO_ROOT/spack/repos.yaml"
repos_dst="$spack_root/etc/spack/repos.yaml"
[ -r "$repos_src" ] || fm_die "$repos_src is missing: run this script from a fluxmpi checkout"

fm_run mkdir -p "$FM_PREFIX"

if [ -x "$spack" ]; then
	# `spack --version` prints e.g. "1.2.2" (a git checkout may add " (commit)").
	have=$("$spack" --version 2>/dev/null | awk '{print $1; exit}') ||
		fm_die "$spack exists but does not run (spack --version failed): remove $spack_root and rerun"
	[ "v$have" = "$version" ] ||
		fm_die "$spack_root holds Spack $have, not ${version#v}: remove $spack_root, or pass --spack-version v$have"
	fm_skip "Spack ${version#v} is already installed at $spack_root"
elif [ -e "$spack_root" ]; then
	fm_die "$spack_root exists but has no bin/spack (an interrupted install?): remove it and rerun"
elif [ "$method" = git ]; then
	fm_run git clone --depth=2 "--branch=$version" "$FM_SPACK_GIT_URL" "$spack_root"
else
	tarball="$FM_PREFIX/spack-$version.tar.gz"
	fm_run curl -fsSL -o "$tarball" "https://github.com/spack/spack/archive/refs/tags/$version.tar.gz"
	fm_run mkdir -p "$spack_root"
	fm_run tar -xzf "$tarball" -C "$spack_root" --strip-components=1
	fm_run rm -f "$tarball"
fi

if [ -f "$repos_dst" ] && cmp -s "$repos_src" "$repos_dst"; then
	fm_skip "$repos_dst already pins the package repository"
else
	fm_run cp "$repos_src" "$repos_dst"
fi

# Spack skips whatever is already bootstrapped, so this step is cheap to repeat.
fm_run "$spack" bootstrap now
fm_done "Spack at $spack_root (next: install_scripts/spack-env-install.sh --prefix $FM_PREFIX)"
