#!/bin/sh
# fluxmpi rank wrapper: runs in front of any MPI program, one copy per rank, and proves where the rank ran.
#
#   srun ... sh _rank_wrapper.sh --task T --out DIR [--] PROGRAM [ARGS...]
#   (also under mpirun, mpiexec.mpich and flux run)
#
# Each rank writes DIR/<task>.<rank>.json: one JSON line in the record format of mpi_apps/README.md
# (fluxmpi/placement.py reads it) with app "wrapper", task, host, rank, size, pid (the wrapper's), cpus (its
# affinity, which PROGRAM inherits), gpus (the GPU visibility variables that are set), t_start = t_init (before
# PROGRAM starts), t_end (after it ended), exit (its status), argv0 (PROGRAM), child_pid (PROGRAM's pid, to pair
# the record with one PROGRAM writes itself) and rank_from (the variable the rank was read from).
#
# PROGRAM runs unchanged as a child, with the wrapper's stdin; TERM, INT, HUP, USR1 and USR2 sent to the wrapper
# are passed on to it. The wrapper exits with PROGRAM's status (128+N when signal N killed it); bad usage, or no
# rank variable set, exits 2 before PROGRAM runs.
#
# POSIX sh (dash), one copy per rank on every launch: only builtins, except PROGRAM, the two `date`s and `mv`
# (plus `mkdir` when DIR is missing).

me=_rank_wrapper.sh
usage="usage: $me [--task ID] --out DIR [--] PROGRAM [ARGS...]
  --task ID   task id in the record and file name (default: \$FLUXMPI_TASK_ID, else 0):
              letters, digits, _ . -, not starting with . or -, at most 128 characters
  --out DIR   write DIR/<task>.<rank>.json (DIR is created)
The rank and size come from the first pair that is set of PMIX_RANK/PMIX_SIZE,
OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE, PMI_RANK/PMI_SIZE, FLUX_TASK_RANK/FLUX_JOB_SIZE,
SLURM_PROCID/SLURM_STEP_NUM_TASKS (else SLURM_NTASKS)."

bad_usage() {
    printf '%s: %s\n%s\n' "$me" "$1" "$usage" >&2
    exit 2
}

die() {
    printf '%s: %s\n' "$me" "$1" >&2
    exit 2
}

# JSON string of $1 in $j. Only \ " and control characters need escaping; the loop runs once per such
# character, and only a control character costs a fork (printf for its code).
json_str() {
    _s=$1 j=''
    while :; do
        case $_s in
            *[\\\"[:cntrl:]]*) ;;
            *) j="\"$j$_s\""; return ;;
        esac
        _head=${_s%%[\\\"[:cntrl:]]*}
        _rest=${_s#"$_head"?}
        _c=${_s#"$_head"}
        _c=${_c%"$_rest"}
        case $_c in
            \\) j="$j$_head\\\\" ;;
            \") j="$j$_head\\\"" ;;
            *) j="$j$_head$(printf '\\u%04x' "'$_c")" ;;
        esac
        _s=$_rest
    done
}

# A whole number from launcher variable $1 (value $2) in $n, without leading zeros (JSON has none).
whole() {
    case $2 in
        '' | *[!0-9]*) die "$1='$2' is not a whole number" ;;
    esac
    n=$2
    while :; do
        case $n in
            0?*) n=${n#0} ;;
            *) break ;;
        esac
    done
    [ ${#n} -le 9 ] || die "$1='$2' is out of range"
}

# ---- arguments -----------------------------------------------------------------------------------------------
task='' task_from='' out=''
while [ $# -gt 0 ]; do
    case $1 in
        --task) [ $# -ge 2 ] || bad_usage "--task needs a value"; task=$2 task_from=--task; shift 2 ;;
        --task=*) task=${1#--task=} task_from=--task; shift ;;
        --out) [ $# -ge 2 ] || bad_usage "--out needs a value"; out=$2; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        -h | --help) printf '%s\n' "$usage"; exit 0 ;;
        --) shift; break ;;
        -*) bad_usage "unknown option '$1' (put -- before a PROGRAM whose name starts with -)" ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || bad_usage "no PROGRAM to run"
[ -n "$out" ] || bad_usage "--out DIR is required"
if [ -z "$task_from" ]; then
    task=${FLUXMPI_TASK_ID:-0} task_from=FLUXMPI_TASK_ID
fi
# The id becomes part of a file name: the same safe, short alphabet as the C app.
case $task in
    '' | [!A-Za-z0-9_]* | *[!A-Za-z0-9_.-]*) bad_usage "invalid $task_from '$task'" ;;
esac
[ ${#task} -le 128 ] || bad_usage "invalid $task_from '$task' (more than 128 characters)"

# ---- rank and size -------------------------------------------------------------------------------------------
# Only a complete pair counts: srun --mpi=pmix sets PMIX_RANK but no size. Flux comes before Slurm because a Flux
# instance runs inside a Slurm allocation and its jobs can inherit the SLURM_PROCID of whoever submitted them.
if [ -n "${PMIX_RANK-}" ] && [ -n "${PMIX_SIZE-}" ]; then
    rank_from=PMIX_RANK rank=$PMIX_RANK size_from=PMIX_SIZE size=$PMIX_SIZE
elif [ -n "${OMPI_COMM_WORLD_RANK-}" ] && [ -n "${OMPI_COMM_WORLD_SIZE-}" ]; then
    rank_from=OMPI_COMM_WORLD_RANK rank=$OMPI_COMM_WORLD_RANK
    size_from=OMPI_COMM_WORLD_SIZE size=$OMPI_COMM_WORLD_SIZE
elif [ -n "${PMI_RANK-}" ] && [ -n "${PMI_SIZE-}" ]; then
    rank_from=PMI_RANK rank=$PMI_RANK size_from=PMI_SIZE size=$PMI_SIZE
elif [ -n "${FLUX_TASK_RANK-}" ] && [ -n "${FLUX_JOB_SIZE-}" ]; then
    rank_from=FLUX_TASK_RANK rank=$FLUX_TASK_RANK size_from=FLUX_JOB_SIZE size=$FLUX_JOB_SIZE
elif [ -n "${SLURM_PROCID-}" ] && [ -n "${SLURM_STEP_NUM_TASKS-}" ]; then
    rank_from=SLURM_PROCID rank=$SLURM_PROCID size_from=SLURM_STEP_NUM_TASKS size=$SLURM_STEP_NUM_TASKS
elif [ -n "${SLURM_PROCID-}" ] && [ -n "${SLURM_NTASKS-}" ]; then
    rank_from=SLURM_PROCID rank=$SLURM_PROCID size_from=SLURM_NTASKS size=$SLURM_NTASKS
else
    half=
    for v in PMIX_RANK OMPI_COMM_WORLD_RANK PMI_RANK FLUX_TASK_RANK SLURM_PROCID; do
        eval "[ -z \"\${$v-}\" ]" || half="$half $v"
    done
    die "cannot tell this process's MPI rank: none of PMIX_RANK+PMIX_SIZE, OMPI_COMM_WORLD_RANK+OMPI_COMM_WORLD_SIZE,\
 PMI_RANK+PMI_SIZE, FLUX_TASK_RANK+FLUX_JOB_SIZE, SLURM_PROCID+SLURM_STEP_NUM_TASKS|SLURM_NTASKS is set\
${half:+ (only a rank, no size:$half)}; run it as each rank under srun, mpirun, mpiexec or flux run"
fi
whole "$rank_from" "$rank"; rank=$n
whole "$size_from" "$size"; size=$n
[ "$size" -ge 1 ] || die "$size_from=$size: an MPI size is at least 1"
[ "$rank" -lt "$size" ] || die "$rank_from=$rank is not below $size_from=$size"

# ---- where it runs -------------------------------------------------------------------------------------------
host=
{ read -r host </proc/sys/kernel/hostname; } 2>/dev/null
[ -n "$host" ] || host=$(uname -n)
json_str "$host"; host_json=$j
json_str "$1"; argv0_json=$j
json_str "$task"; task_json=$j

# The affinity PROGRAM inherits, e.g. "0-3,8", expanded to [0, 1, 2, 3, 8].
cpulist=
{
    while read -r key val; do
        case $key in
            Cpus_allowed_list:) cpulist=$val; break ;;
        esac
    done </proc/self/status
} 2>/dev/null
cpus='' rest=$cpulist
while [ -n "$rest" ]; do
    part=${rest%%,*}
    case $rest in
        *,*) rest=${rest#*,} ;;
        *) rest= ;;
    esac
    lo=${part%-*} hi=${part#*-}
    case $lo$hi in
        '' | *[!0-9]*) die "cannot read the CPU list '$cpulist' of /proc/self/status" ;;
    esac
    # Ten at a time where the range covers a whole decade: a node's 256 CPUs are 26 appends, not 256.
    while [ "$lo" -le "$hi" ]; do
        case $lo in
            *0)
                if [ $((lo + 9)) -le "$hi" ]; then
                    d=${lo%0}
                    cpus="$cpus, ${d}0, ${d}1, ${d}2, ${d}3, ${d}4, ${d}5, ${d}6, ${d}7, ${d}8, ${d}9"
                    lo=$((lo + 10))
                    continue
                fi
                ;;
        esac
        cpus="$cpus, $lo"
        lo=$((lo + 1))
    done
done
cpus=${cpus#, }

gpus=
gpu() {
    [ -n "$2" ] || return 0
    json_str "$3"
    gpus="$gpus${gpus:+, }\"$1\": $j"
}
gpu CUDA_VISIBLE_DEVICES "${CUDA_VISIBLE_DEVICES+set}" "${CUDA_VISIBLE_DEVICES-}"
gpu ROCR_VISIBLE_DEVICES "${ROCR_VISIBLE_DEVICES+set}" "${ROCR_VISIBLE_DEVICES-}"
gpu HIP_VISIBLE_DEVICES "${HIP_VISIBLE_DEVICES+set}" "${HIP_VISIBLE_DEVICES-}"
gpu ZE_AFFINITY_MASK "${ZE_AFFINITY_MASK+set}" "${ZE_AFFINITY_MASK-}"
gpu GPU_DEVICE_ORDINAL "${GPU_DEVICE_ORDINAL+set}" "${GPU_DEVICE_ORDINAL-}"

# Fail before PROGRAM runs rather than lose the record after it ran.
[ -d "$out" ] || mkdir -p -- "$out" || die "cannot create --out directory '$out'"
[ -w "$out" ] || die "cannot write to --out directory '$out'"
final=$out/$task.$rank.json
tmp=$out/.$task.$rank.json.tmp.$$

# Epoch seconds in $t, with nanoseconds. A fork, but the only exact clock sh can read: /proc/uptime ticks in
# 10 ms and /proc/stat's btime in whole seconds, which would put records of different hosts up to 1 s apart.
now() {
    t=$(date +%s.%N)
    case $t in
        [0-9]*.[0-9]*) ;;
        *) t=$(date +%s) ;;  # a date without %N (not GNU): whole seconds
    esac
}

# ---- run PROGRAM ---------------------------------------------------------------------------------------------
child='' caught=''
# Signals the wrapper gets go on to PROGRAM (which usually got them too, from the launcher's process-group or
# cgroup kill); without a trap the default action would kill the wrapper and leave PROGRAM running unrecorded.
forward() {
    caught=$1
    [ -n "$child" ] || return 0
    sig=$1
    if [ "$1" = INT ]; then
        # sh starts a background command with SIGINT ignored (POSIX), and nothing but PROGRAM itself can undo
        # that; while it still ignores SIGINT the interrupt is passed as SIGTERM, so it is not lost.
        ign=0
        {
            while read -r key val; do
                case $key in
                    SigIgn:) ign=$val; break ;;
                esac
            done <"/proc/$child/status"
        } 2>/dev/null
        case $ign in
            *[!0-9a-fA-F]*) ign=0 ;;
        esac
        [ $((0x$ign & 2)) -eq 0 ] || sig=TERM
    fi
    kill -s "$sig" "$child" 2>/dev/null
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP
trap 'forward USR1' USR1
trap 'forward USR2' USR2

now
t_start=$t
# sh gives a background command /dev/null as stdin; hand it the real one through a free descriptor (one that
# no launcher passed down, such as PMI_FD). `exec` runs PROGRAM itself, never a shell function or builtin.
fd=9
while [ "$fd" -ge 3 ] && [ -L "/proc/self/fd/$fd" ]; do
    fd=$((fd - 1))
done
if [ "$fd" -ge 3 ] && [ -L /proc/self/fd/0 ]; then
    eval "exec $fd<&0"
    eval "exec \"\$@\" 0<&$fd $fd<&- &"
    child=$!
    eval "exec $fd<&-"
else
    exec "$@" &
    child=$!
fi
[ -z "$caught" ] || forward "$caught"

# A trapped signal ends `wait` early (status 128+N); wait again until PROGRAM itself has ended.
wait "$child"
status=$?
while [ -n "$caught" ]; do
    caught=
    wait "$child"
    s=$?
    if [ "$s" -eq 127 ] && ! kill -0 "$child" 2>/dev/null; then
        break  # the first wait had its status already
    fi
    status=$s
done
now
t_end=$t

# ---- record --------------------------------------------------------------------------------------------------
# Written under a hidden name, then renamed: a reader sees no file or the whole record.
if printf '{"app": "wrapper", "task": %s, "host": %s, "rank": %s, "size": %s, "pid": %s, "cpus": [%s], "gpus": {%s}, "t_start": %s, "t_init": %s, "t_end": %s, "exit": %s, "argv0": %s, "child_pid": %s, "rank_from": "%s"}\n' \
    "$task_json" "$host_json" "$rank" "$size" "$$" "$cpus" "$gpus" "$t_start" "$t_start" "$t_end" "$status" \
    "$argv0_json" "$child" "$rank_from" >"$tmp" && mv -f -- "$tmp" "$final"; then
    :
else
    printf '%s: could not write the record %s\n' "$me" "$final" >&2
    rm -f -- "$tmp"
fi
exit "$status"
