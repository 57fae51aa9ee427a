# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source this file
# Shared helpers for install_scripts/spack-*.sh (sourced, never run): the pins, the prefix layout,
# argument checks, and a command runner that --dry-run turns into a printer.
#
# Prefix layout (one directory holds everything, so it can be tarred and redeployed as a unit):
#   PREFIX/spack              the Spack clone (its install tree: PREFIX/spack/opt/spack)
#   PREFIX/env                the Spack environment (spack.yaml, spack.lock, activate.sh, view/)
#   PREFIX/parsl-venv         venv made from PREFIX/env/view/bin/python3, parsl pip-installed
#   PREFIX/fluxmpi-env.sh     the env file workers source (fluxmpi/spackenv.py finds it here)
#   PREFIX/.fluxmpi-prefix    the absolute path a tarball of PREFIX was packed at

FM_SPACK_VERSION=v1.1.0
FM_SPACK_GIT_URL=https://github.com/spack/spack.git
FM_PARSL_VERSION=2026.10.26
FM_ENV_DIR_NAME='env'
FM_VENV_DIR_NAME=parsl-venv
FM_ENV_FILE_NAME=fluxmpi-env.sh # same name as ENV_FILE_NAME in fluxmpi/spackenv.py
FM_PREFIX_RECORD=.fluxmpi-prefix
FM_MIRROR_NAME=fluxmpi-buildcache
FM_LOCK_DIR_NAME=fluxmpi-env # inside a build cache mirror: copies of spack.yaml and spack.lock
# PATH of the shell that runs `spack env activate --sh`: Spack writes the whole resulting PATH into
# the activate script, so it must hold only system directories that exist on every node.
FM_CLEAN_PATH=/usr/local/bin:/usr/bin:/bin

FM_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FM_REPO_ROOT=$(dirname "$FM_SCRIPTS_DIR")
FM_PROG=$(basename "$0")
FM_DRY_RUN=0
FM_PREFIX=
FM_SPACK=

fm_err() { printf '%s: error: %s\n' "$FM_PROG" "$*" >&2; }
fm_die() {
	fm_err "$*"
	exit 1
}
# Bad arguments: exit 2, like most command-line tools.
fm_usage_die() {
	fm_err "$*"
	printf 'Run %s --help for usage.\n' "$FM_PROG" >&2
	exit 2
}
fm_note() { printf '%s: %s\n' "$FM_PROG" "$*" >&2; }
fm_skip() { printf '%s: skip: %s\n' "$FM_PROG" "$*" >&2; }
# Closing line: what is now in place, or that a dry run changed nothing.
fm_done() {
	if [ "$FM_DRY_RUN" = 1 ]; then
		fm_note "dry run: nothing was run"
	else
		fm_note "done: $*"
	fi
}

# The command as a shell would need it typed: "+ word word ...".
fm_show() {
	local out="+" word
	for word in "$@"; do
		out+=" $(printf '%q' "$word")"
	done
	printf '%s\n' "$out"
}

# Print a command, then run it unless --dry-run.
fm_run() {
	fm_show "$@"
	[ "$FM_DRY_RUN" = 1 ] && return 0
	"$@"
}

# Print "+ command > FILE", then run it unless --dry-run, replacing FILE only when the command
# succeeds (a failed run must not leave a truncated file behind).
fm_run_to() {
	local dest=$1
	shift
	printf '%s > %s\n' "$(fm_show "$@")" "$(printf '%q' "$dest")"
	[ "$FM_DRY_RUN" = 1 ] && return 0
	if "$@" >"$dest.tmp.$$"; then
		mv -f "$dest.tmp.$$" "$dest"
	else
		rm -f "$dest.tmp.$$"
		return 1
	fi
}

# An option's value must be present and must not be the next option.
fm_need_value() {
	if [ $# -lt 2 ] || [ -z "$2" ] || [ "${2#--}" != "$2" ]; then
		fm_usage_die "option $1 needs a value"
	fi
}

# Paths the scripts write into Spack configs, shebangs and RPATHs: plain characters only.
fm_check_path_chars() {
	local what=$1 path=$2
	if ! [[ $path =~ ^[A-Za-z0-9._+@/-]+$ ]]; then
		fm_usage_die "$what '$path' contains characters other than letters, digits and ._+@-/ (spaces or quotes break shebangs and Spack paths): choose another path"
	fi
}

# Validate --prefix and set FM_PREFIX (absolute, canonical, not /, not an existing non-directory).
fm_set_prefix() {
	local prefix=$1
	[ -n "$prefix" ] || fm_usage_die "--prefix is required (an absolute path such as /opt/fluxmpi)"
	case $prefix in
	/*) ;;
	*) fm_usage_die "prefix '$prefix' is not an absolute path: a Spack tree only works at the absolute path it was installed at, so give one (e.g. --prefix $PWD/$prefix)" ;;
	esac
	fm_check_path_chars prefix "$prefix"
	while [ "${prefix%/}" != "$prefix" ]; do prefix=${prefix%/}; done
	[ -n "$prefix" ] || fm_usage_die "prefix '/' is not allowed: give a directory of its own, e.g. /opt/fluxmpi"
	case "$prefix/" in
	*//* | */./* | */../*) fm_usage_die "prefix '$prefix' is not canonical (has //, /./ or /../): give the plain absolute path" ;;
	esac
	if [ -e "$prefix" ] && [ ! -d "$prefix" ]; then
		fm_usage_die "prefix '$prefix' exists and is not a directory"
	fi
	FM_PREFIX=$prefix
}

# Absolute form of a path argument (relative ones are taken from the current directory).
fm_abspath() {
	local what=$1 path=$2
	case $path in
	/*) ;;
	*) path="$PWD/$path" ;;
	esac
	fm_check_path_chars "$what" "$path"
	printf '%s\n' "${path%/}"
}

# Set FM_SPACK: --spack if given, else PREFIX/spack/bin/spack. No PATH lookup on purpose: a Spack
# elsewhere would install outside PREFIX, breaking the one-directory layout.
fm_find_spack() {
	local explicit=${1:-}
	if [ -n "$explicit" ]; then
		[ -x "$explicit" ] || fm_usage_die "--spack '$explicit' is not an executable spack (give .../bin/spack)"
		FM_SPACK=$explicit
		return 0
	fi
	FM_SPACK="$FM_PREFIX/spack/bin/spack"
	[ -x "$FM_SPACK" ] && return 0
	if [ "$FM_DRY_RUN" = 1 ]; then
		fm_note "spack not found at $FM_SPACK; the commands below assume it (install_scripts/spack-install.sh --prefix $FM_PREFIX creates it)"
		return 0
	fi
	fm_die "spack not found at $FM_SPACK: install it first with install_scripts/spack-install.sh --prefix $FM_PREFIX (or pass --spack /path/to/bin/spack)"
}

# PREFIX/env/activate.sh: the shell code `spack env activate --sh` prints, run in a bare
# environment so the PATH it records holds only the view and FM_CLEAN_PATH.
fm_write_activate_script() {
	local env_dir=$1
	local activate="$env_dir/activate.sh" lock="$env_dir/spack.lock"
	if [ -s "$activate" ] && [ -e "$lock" ] && [ "$activate" -nt "$lock" ]; then
		fm_skip "$activate is newer than $lock"
		return 0
	fi
	# A clean environment, so the activation records only the view, but Spack's own configuration
	# variables kept: without them Spack reads another configuration (and, offline, a builtin
	# repository it cannot clone), and the activation loses the packages' run-time variables.
	local keep=() var
	for var in SPACK_USER_CONFIG_PATH SPACK_SYSTEM_CONFIG_PATH SPACK_USER_CACHE_PATH SPACK_DISABLE_LOCAL_CONFIG; do
		[ -n "${!var:-}" ] && keep+=("$var=${!var}")
	done
	fm_run_to "$activate" env -i "HOME=$HOME" "PATH=$FM_CLEAN_PATH" "${keep[@]}" "$FM_SPACK" env activate --sh -d "$env_dir"
}

# PREFIX/parsl-venv from the environment's python, with parsl pinned (Spack's py-parsl is years old).
# --system-site-packages: the venv must see the view's mpi4py and Flux bindings.
fm_make_parsl_venv() {
	local env_dir=$1 venv=$2
	local python="$env_dir/view/bin/python3"
	if [ -x "$venv/bin/python" ]; then
		fm_skip "venv $venv exists"
	else
		if [ "$FM_DRY_RUN" != 1 ] && [ ! -x "$python" ]; then
			fm_die "the environment's python $python is missing: did the Spack install finish? (rerun install_scripts/spack-env-install.sh --prefix $FM_PREFIX)"
		fi
		fm_run "$python" -m venv --system-site-packages "$venv"
	fi
	if [ -x "$venv/bin/python" ] &&
		"$venv/bin/python" -c "import sys, parsl; sys.exit(parsl.__version__ != '$FM_PARSL_VERSION')" 2>/dev/null; then
		fm_skip "parsl $FM_PARSL_VERSION already in $venv"
		return 0
	fi
	fm_run "$venv/bin/python" -m pip install "parsl==$FM_PARSL_VERSION"
}

# The env file, by spack-envfile.sh (which skips it when nothing changed).
fm_write_env_file() {
	fm_run "$FM_SCRIPTS_DIR/spack-envfile.sh" --activate "$FM_PREFIX/$FM_ENV_DIR_NAME/activate.sh" \
		--venv "$FM_PREFIX/$FM_VENV_DIR_NAME" --out "$FM_PREFIX/$FM_ENV_FILE_NAME"
}
