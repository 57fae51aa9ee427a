#!/usr/bin/env bash
# Write the env file workers source: Spack's activate script + the Parsl venv + FLUXMPI_ENV_FILE.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

usage() {
	cat <<EOF
Usage: $FM_PROG (--prefix PREFIX | --activate FILE --venv DIR --out FILE) [--dry-run]

Write the fluxmpi env file: a bash file that needs no Spack and holds, in order,
  - the output of \`spack env activate --sh -d ENV\` (FILE given by --activate), copied in;
  - the activation of the Parsl venv (VIRTUAL_ENV, its bin/ first on PATH);
  - export FLUXMPI_ENV_FILE=<the file itself>.
Workers source it (Parsl worker_init "source OUT"); fluxmpi env --check OUT validates it.

The file is written to a temporary name, checked with bash -n, and moved into place only when its
content changed (otherwise the step is skipped and reported).

Options:
  --prefix PREFIX   the standard layout: --activate PREFIX/$FM_ENV_DIR_NAME/activate.sh
                    --venv PREFIX/$FM_VENV_DIR_NAME --out PREFIX/$FM_ENV_FILE_NAME
  --activate FILE   a saved \`spack env activate --sh -d ENV\` output
  --venv DIR        the Parsl venv (must hold bin/python)
  --out FILE        the env file to write (absolute or relative; stored absolute)
  --dry-run         say what would be written, write nothing
  -h, --help        this help
EOF
}

prefix='' activate='' venv='' out=''
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) fm_need_value "$@"; prefix=$2; shift 2 ;;
	--activate) fm_need_value "$@"; activate=$2; shift 2 ;;
	--venv) fm_need_value "$@"; venv=$2; shift 2 ;;
	--out) fm_need_value "$@"; out=$2; shift 2 ;;
	--dry-run) FM_DRY_RUN=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) fm_usage_die "unknown argument '$1'" ;;
	esac
done
if [ -n "$prefix" ]; then
	fm_set_prefix "$prefix"
	: "${activate:=$FM_PREFIX/$FM_ENV_DIR_NAME/activate.sh}"
	: "${venv:=$FM_PREFIX/$FM_VENV_DIR_NAME}"
	: "${out:=$FM_PREFIX/$FM_ENV_FILE_NAME}"
fi
[ -n "$activate" ] || fm_usage_die "--activate is required (or --prefix)"
[ -n "$venv" ] || fm_usage_die "--venv is required (or --prefix)"
[ -n "$out" ] || fm_usage_die "--out is required (or --prefix)"
activate=$(fm_abspath --activate "$activate")
venv=$(fm_abspath --venv "$venv")
out=$(fm_abspath --out "$out")

if [ "$FM_DRY_RUN" = 1 ]; then
	printf 'would write %s from %s and the venv %s\n' "$out" "$activate" "$venv"
	exit 0
fi

[ -r "$activate" ] || fm_die "activate script $activate is missing: create it with spack env activate --sh -d ENV > $activate"
bash -n "$activate" || fm_die "activate script $activate has a shell syntax error: regenerate it with spack env activate --sh -d ENV"
[ -x "$venv/bin/python" ] || fm_die "$venv is not a venv (no bin/python): create it with ENV/view/bin/python3 -m venv --system-site-packages $venv"
[ -d "$(dirname "$out")" ] || fm_die "directory $(dirname "$out") for --out does not exist"

tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
{
	printf '# shellcheck shell=bash\n'
	printf '# fluxmpi env file: source it in bash to get the Spack environment and the Parsl venv.\n'
	printf '# It needs no Spack. Written by install_scripts/spack-envfile.sh: regenerate, do not edit.\n'
	printf '\n# --- begin: spack env activate --sh output (%s) ---\n' "$activate"
	cat "$activate"
	printf '\n# --- end: spack env activate --sh output ---\n\n'
	printf '# Parsl venv, made from the environment python (it also sees the view site-packages).\n'
	printf 'export VIRTUAL_ENV=%q\n' "$venv"
	# shellcheck disable=SC2016 # ${PATH...} must expand when the env file is sourced, not now
	printf 'export PATH=%q"${PATH:+:$PATH}"\n' "$venv/bin"
	printf 'unset PYTHONHOME\n'
	printf 'export FLUXMPI_ENV_FILE=%q\n' "$out"
} >"$tmp"
bash -n "$tmp" || fm_die "the generated env file failed bash -n (kept nothing); check $activate"

if [ -f "$out" ] && cmp -s "$tmp" "$out"; then
	fm_skip "$out is up to date"
	exit 0
fi
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
fm_note "wrote $out"
