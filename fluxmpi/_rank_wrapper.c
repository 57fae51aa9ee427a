/*
 * fluxmpi rank wrapper, in C: the same wrapper as _rank_wrapper.sh, without the forks that one pays for
 * (date, mv). fluxmpi/rank_wrapper.py builds it on demand and falls back to the sh one when it cannot.
 *
 *   srun ... fluxmpi-rank --task T --out DIR [--] PROGRAM [ARGS...]
 *   (also under mpirun, mpiexec.mpich and flux run)
 *
 * Each rank writes DIR/<task>.<rank>.json: one JSON line in the record format of mpi_apps/README.md
 * (fluxmpi/placement.py reads it) with app "wrapper", task, host, rank, size, pid (the wrapper's), cpus (its
 * affinity, which PROGRAM inherits), gpus (the GPU visibility variables that are set), t_start = t_init (before
 * PROGRAM starts), t_end (after it ended), exit (its status), argv0 (PROGRAM), child_pid (PROGRAM's pid, to pair
 * the record with one PROGRAM writes itself) and rank_from (the variable the rank was read from).
 *
 * PROGRAM runs unchanged as a child (fork + execvp, searched on PATH), with the wrapper's stdin and every
 * descriptor it inherited (MPICH's PMI_FD among them); TERM, INT, HUP, USR1 and USR2 sent to the wrapper are
 * passed on to it. The wrapper exits with PROGRAM's status (128+N when signal N killed it; 127 when PROGRAM is
 * not found, 126 when it cannot be run); bad usage, or no rank variable set, exits 2 before PROGRAM runs.
 *
 * Unlike the sh wrapper, PROGRAM starts with SIGINT at its default action (sh has to start it with SIGINT
 * ignored, and so turns an INT into a TERM for it); a signal ignored when the wrapper started stays ignored, as
 * in sh.
 *
 * C99 + POSIX (and Linux's sched_getaffinity), no dependencies: cc -O2 -o fluxmpi-rank _rank_wrapper.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ME "fluxmpi-rank"
#define TASK_ID_MAX 128

static const char USAGE[] =
    "usage: " ME " [--task ID] --out DIR [--] PROGRAM [ARGS...]\n"
    "  --task ID   task id in the record and file name (default: $FLUXMPI_TASK_ID, else 0):\n"
    "              letters, digits, _ . -, not starting with . or -, at most 128 characters\n"
    "  --out DIR   write DIR/<task>.<rank>.json (DIR is created)\n"
    "The rank and size come from the first pair that is set of PMIX_RANK/PMIX_SIZE,\n"
    "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE, PMI_RANK/PMI_SIZE, FLUX_TASK_RANK/FLUX_JOB_SIZE,\n"
    "SLURM_PROCID/SLURM_STEP_NUM_TASKS (else SLURM_NTASKS).";

/* The rank/size pairs in the order they are tried (the same as the sh wrapper's). Only a complete pair counts:
 * srun --mpi=pmix sets PMIX_RANK but no size. Flux comes before Slurm because a Flux instance runs inside a
 * Slurm allocation and its jobs can inherit the SLURM_PROCID of whoever submitted them. */
static const char *const RANK_PAIRS[][2] = {
    {"PMIX_RANK", "PMIX_SIZE"},
    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
    {"PMI_RANK", "PMI_SIZE"},
    {"FLUX_TASK_RANK", "FLUX_JOB_SIZE"},
    {"SLURM_PROCID", "SLURM_STEP_NUM_TASKS"},
    {"SLURM_PROCID", "SLURM_NTASKS"},
};
static const char *const RANK_VARS[] = {"PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "FLUX_TASK_RANK",
                                        "SLURM_PROCID"};
static const char *const GPU_VARS[] = {"CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                                       "ZE_AFFINITY_MASK", "GPU_DEVICE_ORDINAL"};
static const int FORWARDED[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2};
#define NFORWARDED ((int)(sizeof FORWARDED / sizeof FORWARDED[0]))

/* ---- messages ------------------------------------------------------------------------------------------------ */

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs(ME ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void bad_usage(const char *fmt, ...)
{
    va_list ap;
    fputs(ME ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%s\n", USAGE);
    exit(2);
}

/* ---- a growable text buffer ------------------------------------------------------------------------------------ */

struct buf {
    char *data;
    size_t len, cap;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *data = realloc(b->data, cap);
        if (!data)
            die("out of memory");
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char small[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        die("cannot format the record");
    if ((size_t)n < sizeof small) {
        buf_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big)
        die("out of memory");
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf_add(b, big, (size_t)n);
    free(big);
}

/* A JSON string: only \ " and control characters (as the sh wrapper's [:cntrl:]: 0-31 and 127) are escaped;
 * other bytes pass as they are. */
static void buf_json(struct buf *b, const char *s)
{
    buf_add(b, "\"", 1);
    const char *run = s;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c != '\\' && c != '"' && c >= 0x20 && c != 0x7f)
            continue;
        buf_add(b, run, (size_t)(p - run));
        if (c == '\\')
            buf_add(b, "\\\\", 2);
        else if (c == '"')
            buf_add(b, "\\\"", 2);
        else
            buf_printf(b, "\\u%04x", c);
        run = p + 1;
    }
    buf_str(b, run);
    buf_add(b, "\"", 1);
}

/* ---- the pieces of the record ----------------------------------------------------------------------------------- */

static int valid_task(const char *t)
{
    if (!((*t >= 'A' && *t <= 'Z') || (*t >= 'a' && *t <= 'z') || (*t >= '0' && *t <= '9') || *t == '_'))
        return 0;
    for (const char *p = t + 1; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              *p == '.' || *p == '-'))
            return 0;
    return 1;
}

/* A whole number from launcher variable `name`, without leading zeros, at most 9 digits. */
static long whole(const char *name, const char *value)
{
    if (!*value || strspn(value, "0123456789") != strlen(value))
        die("%s='%s' is not a whole number", name, value);
    const char *p = value;
    while (p[0] == '0' && p[1])
        p++;
    if (strlen(p) > 9)
        die("%s='%s' is out of range", name, value);
    return strtol(p, NULL, 10);
}

static int set_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v;
}

/* The affinity PROGRAM inherits, as "0, 1, 2, 3, 8" (empty when it cannot be read). */
static void buf_cpus(struct buf *b)
{
    for (int ncpu = 1024; ncpu <= (1 << 22); ncpu *= 2) {
        cpu_set_t *set = CPU_ALLOC(ncpu);
        if (!set)
            die("out of memory");
        size_t size = CPU_ALLOC_SIZE(ncpu);
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) == 0) {
            const char *sep = "";
            for (int c = 0; c < ncpu; c++) {
                if (CPU_ISSET_S(c, size, set)) {
                    buf_printf(b, "%s%d", sep, c);
                    sep = ", ";
                }
            }
            CPU_FREE(set);
            return;
        }
        int err = errno;
        CPU_FREE(set);
        if (err != EINVAL)
            return;
    }
}

static void now(struct timespec *ts)
{
    if (clock_gettime(CLOCK_REALTIME, ts) != 0) {
        ts->tv_sec = time(NULL);
        ts->tv_nsec = 0;
    }
}

static void buf_time(struct buf *b, const struct timespec *ts)
{
    buf_printf(b, "%lld.%06ld", (long long)ts->tv_sec, (long)(ts->tv_nsec / 1000));
}

/* mkdir -p: every missing directory of `path`. 0, or -1 with errno (and the failing prefix in `failed`). */
static int mkdirs(const char *path, char **failed)
{
    char *p = strdup(path);
    if (!p)
        die("out of memory");
    *failed = p;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char *next = s;
        while (*next == '/')
            next++;
        int last = *next == '\0';
        char saved = *s;
        *s = '\0';
        struct stat st;
        if (mkdir(p, 0777) != 0) {
            int err = errno;
            /* Something else in the way of a parent: the next mkdir names it (ENOTDIR), as mkdir -p does. */
            if (!(err == EEXIST && (!last || (stat(p, &st) == 0 && S_ISDIR(st.st_mode))))) {
                errno = err;
                return -1;
            }
        }
        if (last)
            break;
        *s = saved;
        s = next - 1;
    }
    free(p);
    *failed = NULL;
    return 0;
}

/* ---- signals ----------------------------------------------------------------------------------------------------- */

static volatile sig_atomic_t child_pid = 0;

/* Signals the wrapper gets go on to PROGRAM (which usually got them too, from the launcher's process-group or
 * cgroup kill); with the default action they would kill the wrapper and leave PROGRAM running unrecorded. */
static void forward(int sig)
{
    int saved = errno;
    if (child_pid > 0)
        kill((pid_t)child_pid, sig);
    errno = saved;
}

/* ---- main -------------------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const char *task = NULL, *task_from = NULL, *out = NULL;
    int i = 1;
    while (i < argc) {
        const char *a = argv[i];
        if (strcmp(a, "--task") == 0) {
            if (i + 1 >= argc)
                bad_usage("--task needs a value");
            task = argv[i + 1];
            task_from = "--task";
            i += 2;
        } else if (strncmp(a, "--task=", 7) == 0) {
            task = a + 7;
            task_from = "--task";
            i++;
        } else if (strcmp(a, "--out") == 0) {
            if (i + 1 >= argc)
                bad_usage("--out needs a value");
            out = argv[i + 1];
            i += 2;
        } else if (strncmp(a, "--out=", 6) == 0) {
            out = a + 6;
            i++;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            printf("%s\n", USAGE);
            return 0;
        } else if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (a[0] == '-') {
            bad_usage("unknown option '%s' (put -- before a PROGRAM whose name starts with -)", a);
        } else {
            break;
        }
    }
    if (i >= argc)
        bad_usage("no PROGRAM to run");
    if (!out || !*out)
        bad_usage("--out DIR is required");
    char **program = argv + i;
    if (!task_from) {
        task = getenv("FLUXMPI_TASK_ID");
        if (!task || !*task)
            task = "0";
        task_from = "FLUXMPI_TASK_ID";
    }
    /* The id becomes part of a file name: the same safe, short alphabet as the C app. */
    if (!valid_task(task))
        bad_usage("invalid %s '%s'", task_from, task);
    if (strlen(task) > TASK_ID_MAX)
        bad_usage("invalid %s '%s' (more than 128 characters)", task_from, task);

    /* ---- rank and size ---- */
    const char *rank_from = NULL, *size_from = NULL;
    for (size_t k = 0; k < sizeof RANK_PAIRS / sizeof RANK_PAIRS[0]; k++) {
        if (set_nonempty(RANK_PAIRS[k][0]) && set_nonempty(RANK_PAIRS[k][1])) {
            rank_from = RANK_PAIRS[k][0];
            size_from = RANK_PAIRS[k][1];
            break;
        }
    }
    if (!rank_from) {
        char half[256] = "";
        for (size_t k = 0; k < sizeof RANK_VARS / sizeof RANK_VARS[0]; k++) {
            if (set_nonempty(RANK_VARS[k])) {
                strcat(half, " ");
                strcat(half, RANK_VARS[k]);
            }
        }
        die("cannot tell this process's MPI rank: none of PMIX_RANK+PMIX_SIZE, "
            "OMPI_COMM_WORLD_RANK+OMPI_COMM_WORLD_SIZE, PMI_RANK+PMI_SIZE, FLUX_TASK_RANK+FLUX_JOB_SIZE, "
            "SLURM_PROCID+SLURM_STEP_NUM_TASKS|SLURM_NTASKS is set%s%s%s; "
            "run it as each rank under srun, mpirun, mpiexec or flux run",
            *half ? " (only a rank, no size:" : "", half, *half ? ")" : "");
    }
    long rank = whole(rank_from, getenv(rank_from));
    long size = whole(size_from, getenv(size_from));
    if (size < 1)
        die("%s=%ld: an MPI size is at least 1", size_from, size);
    if (rank >= size)
        die("%s=%ld is not below %s=%ld", rank_from, rank, size_from, size);

    /* ---- where it runs ---- */
    struct utsname uts;
    const char *host = uname(&uts) == 0 ? uts.nodename : "";
    struct buf cpus = {0};
    buf_cpus(&cpus);
    if (!cpus.data)
        buf_add(&cpus, "", 0);
    struct buf gpus = {0};
    buf_add(&gpus, "", 0);
    for (size_t k = 0; k < sizeof GPU_VARS / sizeof GPU_VARS[0]; k++) {
        const char *v = getenv(GPU_VARS[k]);
        if (!v)
            continue;  /* set-but-empty counts as set */
        buf_printf(&gpus, "%s\"%s\": ", gpus.len ? ", " : "", GPU_VARS[k]);
        buf_json(&gpus, v);
    }

    /* Fail before PROGRAM runs rather than lose the record after it ran. */
    struct stat st;
    if (stat(out, &st) != 0 || !S_ISDIR(st.st_mode)) {
        char *failed;
        if (mkdirs(out, &failed) != 0) {
            fprintf(stderr, ME ": cannot create directory '%s': %s\n", failed, strerror(errno));
            die("cannot create --out directory '%s'", out);
        }
    }
    if (access(out, W_OK) != 0)
        die("cannot write to --out directory '%s'", out);
    pid_t me = getpid();
    struct buf final = {0}, tmp = {0};
    buf_printf(&final, "%s/%s.%ld.json", out, task, rank);
    buf_printf(&tmp, "%s/.%s.%ld.json.tmp.%ld", out, task, rank, (long)me);

    /* ---- run PROGRAM ---- */
    /* The forwarded signals stay blocked until the child's pid is known, so none is lost in between; a signal
     * ignored at the start stays ignored (as a shell leaves it), for the wrapper and PROGRAM alike. */
    sigset_t forwarded, old_mask;
    sigemptyset(&forwarded);
    for (int k = 0; k < NFORWARDED; k++)
        sigaddset(&forwarded, FORWARDED[k]);
    sigprocmask(SIG_BLOCK, &forwarded, &old_mask);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int k = 0; k < NFORWARDED; k++) {
        struct sigaction was;
        if (sigaction(FORWARDED[k], NULL, &was) == 0 && was.sa_handler == SIG_IGN)
            continue;
        sigaction(FORWARDED[k], &sa, NULL);
    }

    struct timespec t_start, t_end;
    fflush(stdout);
    now(&t_start);
    pid_t pid = fork();
    if (pid < 0)
        die("cannot start '%s': %s", program[0], strerror(errno));
    if (pid == 0) {
        /* The default action again for what the wrapper handles (exec would do it too, but a signal for the
         * child could come before that), then the mask it started with. */
        for (int k = 0; k < NFORWARDED; k++) {
            struct sigaction was;
            if (sigaction(FORWARDED[k], NULL, &was) == 0 && was.sa_handler == forward)
                signal(FORWARDED[k], SIG_DFL);
        }
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        execvp(program[0], program);
        int err = errno;
        fprintf(stderr, ME ": %s: %s\n", program[0], err == ENOENT ? "not found" : strerror(err));
        _exit(err == ENOENT || err == ENOTDIR ? 127 : 126);
    }
    child_pid = pid;
    sigprocmask(SIG_SETMASK, &old_mask, NULL);

    int wstatus = 0, status;
    while (waitpid(pid, &wstatus, 0) < 0) {
        if (errno != EINTR) {
            wstatus = -1;
            break;
        }
    }
    now(&t_end);
    if (wstatus == -1)
        status = 127;
    else if (WIFEXITED(wstatus))
        status = WEXITSTATUS(wstatus);
    else if (WIFSIGNALED(wstatus))
        status = 128 + WTERMSIG(wstatus);
    else
        status = 127;

    /* ---- record ---- */
    struct buf rec = {0};
    buf_str(&rec, "{\"app\": \"wrapper\", \"task\": ");
    buf_json(&rec, task);
    buf_str(&rec, ", \"host\": ");
    buf_json(&rec, host);
    buf_printf(&rec, ", \"rank\": %ld, \"size\": %ld, \"pid\": %ld, \"cpus\": [", rank, size, (long)me);
    buf_str(&rec, cpus.data);
    buf_str(&rec, "], \"gpus\": {");
    buf_str(&rec, gpus.data);
    buf_str(&rec, "}, \"t_start\": ");
    buf_time(&rec, &t_start);
    buf_str(&rec, ", \"t_init\": ");
    buf_time(&rec, &t_start);
    buf_str(&rec, ", \"t_end\": ");
    buf_time(&rec, &t_end);
    buf_printf(&rec, ", \"exit\": %d, \"argv0\": ", status);
    buf_json(&rec, program[0]);
    buf_printf(&rec, ", \"child_pid\": %ld, \"rank_from\": \"%s\"}\n", (long)pid, rank_from);

    /* Written under a hidden name, then renamed: a reader sees no file or the whole record. */
    int err = 0;
    int fd = open(tmp.data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        err = errno;
    } else {
        size_t done = 0;
        while (done < rec.len && !err) {
            ssize_t n = write(fd, rec.data + done, rec.len - done);
            if (n > 0)
                done += (size_t)n;
            else if (n == 0)
                err = EIO;
            else if (errno != EINTR)
                err = errno;
        }
        if (close(fd) != 0 && !err)
            err = errno;
        if (!err && rename(tmp.data, final.data) != 0)
            err = errno;
        if (err)
            unlink(tmp.data);
    }
    if (err)
        fprintf(stderr, ME ": could not write the record %s: %s\n", final.data, strerror(err));
    return status;
}
