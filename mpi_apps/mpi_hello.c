/*
 * mpi_hello: every MPI rank reports where it ran as one JSON line (a "record").
 *
 * The record says which host, rank and CPUs (the affinity mask) the rank had,
 * which GPU visibility variables it saw and when it started, finished MPI_Init
 * and ended. fluxmpi/placement.py reads these records to check that a launcher
 * placed a task the way it was asked to. See README.md for the options.
 *
 * Each rank writes only its own record and nothing waits on rank 0, so the
 * output is complete also when a launcher runs the command once per rank.
 */
#define _GNU_SOURCE
#include <mpi.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef HOST_NAME_MAX
#define HOST_NAME_MAX 255
#endif

#define PROG "mpi_hello"
#define TASK_ID_MAX 128
/* Exit code of a rank failed on purpose with --fail-mode exit (fluxmpi.rankfault.FAIL_EXIT_CODE). */
#define FAIL_EXIT_CODE 3

static const char *const GPU_VARS[] = {
    "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",     "GPU_DEVICE_ORDINAL",
};

enum work_kind { WORK_NONE, WORK_BUSY, WORK_SLEEP };
static const char *const WORK_NAMES[] = {"none", "busy", "sleep"};

enum fail_mode { FAIL_EXIT, FAIL_SEGV };

struct options {
    const char *task;
    const char *out_dir;
    int affinity_only;
    enum work_kind work;
    double seconds;
    long fail_rank; /* -1: no rank fails */
    enum fail_mode fail_mode;
    const char *fail_once_marker;
    int fail_mode_given;
};

/* ---- small helpers ------------------------------------------------------ */

static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, PROG ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Work durations use the monotonic clock so a clock step cannot stretch them. */
static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A growable text buffer: the whole record is built first and then written
 * with as few writes as possible, so lines from different ranks that share
 * one output stream do not interleave. */
struct buf {
    char *data;
    size_t len, cap;
};

static void buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 512;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data)
        die("out of memory building the record");
    b->data = data;
    b->cap = cap;
}

static void buf_append(struct buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        die("cannot format the record");
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void buf_json_string(struct buf *b, const char *s)
{
    buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': buf_append(b, "\\\"", 2); break;
        case '\\': buf_append(b, "\\\\", 2); break;
        case '\n': buf_append(b, "\\n", 2); break;
        case '\r': buf_append(b, "\\r", 2); break;
        case '\t': buf_append(b, "\\t", 2); break;
        default:
            if (*p < 0x20)
                buf_printf(b, "\\u%04x", *p);
            else
                buf_append(b, (const char *)p, 1);
        }
    }
    buf_append(b, "\"", 1);
}

/* ---- options ------------------------------------------------------------ */

static void usage(FILE *to)
{
    fprintf(to,
            "usage: " PROG " [--task ID] [--affinity] [--busy SECONDS | --sleep SECONDS] [--out DIR]\n"
            "       [--fail-rank R [--fail-mode exit|segv] [--fail-once-marker PATH]]\n"
            "  --task ID         task id in the record (default: $FLUXMPI_TASK_ID, else 0);\n"
            "                    letters, digits, '_', '.', '-', not starting with '.' or '-'\n"
            "  --affinity        report only app, task, host, rank, size, pid, cpus\n"
            "  --busy SECONDS    spin the CPU for SECONDS before finishing\n"
            "  --sleep SECONDS   sleep for SECONDS before finishing\n"
            "  --out DIR         write DIR/<task>.<rank>.json instead of a line on stdout\n"
            "  --fail-rank R     rank R fails right after MPI_Init (fault injection)\n"
            "  --fail-mode MODE  how it fails: exit (code 3, default) or segv (a real segfault)\n"
            "  --fail-once-marker PATH\n"
            "                    fail only if PATH does not exist, creating it (a retry then succeeds)\n");
}

static void bad_usage(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, PROG ": error: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    usage(stderr);
    exit(2);
}

static int valid_task_id(const char *id)
{
    size_t n = strlen(id);
    /* The id becomes part of a file name: keep it to a safe, short alphabet. */
    if (n == 0 || n > TASK_ID_MAX || !(isalnum((unsigned char)id[0]) || id[0] == '_'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!(isalnum(c) || c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

static double parse_seconds(const char *opt, const char *text)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v))
        bad_usage("%s needs a number of seconds, got '%s'", opt, text);
    if (v < 0)
        bad_usage("%s must not be negative, got '%s'", opt, text);
    return v;
}

static long parse_rank(const char *opt, const char *text)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || errno == ERANGE || v < 0 || v > INT_MAX)
        bad_usage("%s needs a rank (a whole number from 0), got '%s'", opt, text);
    return v;
}

/* Matches "--name VALUE" and "--name=VALUE"; returns the value or NULL. */
static const char *option_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);
    const char *arg = argv[*i];
    if (strcmp(arg, name) == 0) {
        if (*i + 1 >= argc)
            bad_usage("%s needs a value", name);
        return argv[++*i];
    }
    if (strncmp(arg, name, n) == 0 && arg[n] == '=')
        return arg + n + 1;
    return NULL;
}

static void parse_args(int argc, char **argv, struct options *opt)
{
    const char *v;
    memset(opt, 0, sizeof *opt);
    opt->work = WORK_NONE;
    opt->fail_rank = -1;
    opt->fail_mode = FAIL_EXIT;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(arg, "--affinity") == 0) {
            opt->affinity_only = 1;
        } else if ((v = option_value(argc, argv, &i, "--task"))) {
            opt->task = v;
        } else if ((v = option_value(argc, argv, &i, "--out"))) {
            if (*v == '\0')
                bad_usage("--out needs a directory, got ''");
            opt->out_dir = v;
        } else if ((v = option_value(argc, argv, &i, "--busy"))) {
            if (opt->work == WORK_SLEEP)
                bad_usage("--busy and --sleep exclude each other");
            opt->work = WORK_BUSY;
            opt->seconds = parse_seconds("--busy", v);
        } else if ((v = option_value(argc, argv, &i, "--sleep"))) {
            if (opt->work == WORK_BUSY)
                bad_usage("--busy and --sleep exclude each other");
            opt->work = WORK_SLEEP;
            opt->seconds = parse_seconds("--sleep", v);
        } else if ((v = option_value(argc, argv, &i, "--fail-rank"))) {
            opt->fail_rank = parse_rank("--fail-rank", v);
        } else if ((v = option_value(argc, argv, &i, "--fail-mode"))) {
            if (strcmp(v, "exit") == 0)
                opt->fail_mode = FAIL_EXIT;
            else if (strcmp(v, "segv") == 0)
                opt->fail_mode = FAIL_SEGV;
            else
                bad_usage("--fail-mode must be exit or segv, got '%s'", v);
            opt->fail_mode_given = 1;
        } else if ((v = option_value(argc, argv, &i, "--fail-once-marker"))) {
            if (*v == '\0')
                bad_usage("--fail-once-marker needs a file path, got ''");
            opt->fail_once_marker = v;
        } else {
            bad_usage("unknown argument '%s'", arg);
        }
    }
    if (opt->fail_rank < 0 && (opt->fail_mode_given || opt->fail_once_marker))
        bad_usage("--fail-mode and --fail-once-marker need --fail-rank");
    if (opt->task) {
        if (!valid_task_id(opt->task))
            bad_usage("invalid --task '%s'", opt->task);
    } else {
        const char *env = getenv("FLUXMPI_TASK_ID");
        if (env && *env) {
            if (!valid_task_id(env))
                bad_usage("invalid FLUXMPI_TASK_ID '%s' (set a valid id or pass --task)", env);
            opt->task = env;
        } else {
            opt->task = "0";
        }
    }
}

/* ---- facts about this rank ---------------------------------------------- */

/* Appends the sorted ids of all CPUs this process may run on as a JSON list.
 * The mask size grows until the kernel accepts it (hosts with >1024 CPUs). */
static void buf_cpu_list(struct buf *b)
{
    for (int ncpu = 1024;; ncpu *= 2) {
        cpu_set_t *set = CPU_ALLOC(ncpu);
        size_t size = CPU_ALLOC_SIZE(ncpu);
        if (!set)
            die("out of memory for a CPU mask");
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) == 0) {
            int first = 1;
            buf_append(b, "[", 1);
            for (int c = 0; c < ncpu; c++) {
                if (CPU_ISSET_S(c, size, set)) {
                    buf_printf(b, first ? "%d" : ", %d", c);
                    first = 0;
                }
            }
            buf_append(b, "]", 1);
            CPU_FREE(set);
            return;
        }
        int err = errno;
        CPU_FREE(set);
        if (err != EINVAL || ncpu >= (1 << 22))
            die("sched_getaffinity failed: %s", strerror(err));
    }
}

static void buf_gpu_vars(struct buf *b)
{
    int first = 1;
    buf_append(b, "{", 1);
    for (size_t i = 0; i < sizeof GPU_VARS / sizeof GPU_VARS[0]; i++) {
        const char *v = getenv(GPU_VARS[i]);
        if (!v)
            continue;
        if (!first)
            buf_append(b, ", ", 2);
        buf_json_string(b, GPU_VARS[i]);
        buf_append(b, ": ", 2);
        buf_json_string(b, v);
        first = 0;
    }
    buf_append(b, "}", 1);
}

/* First line of MPI_Get_library_version, without surrounding blanks. */
static void library_first_line(char *out, size_t cap)
{
    char text[MPI_MAX_LIBRARY_VERSION_STRING + 1];
    int len = 0;
    MPI_Get_library_version(text, &len);
    text[len < 0 ? 0 : (len > MPI_MAX_LIBRARY_VERSION_STRING ? MPI_MAX_LIBRARY_VERSION_STRING : len)] = '\0';
    char *start = text;
    while (*start && isspace((unsigned char)*start))
        start++;
    size_t n = strcspn(start, "\r\n");
    while (n > 0 && isspace((unsigned char)start[n - 1]))
        n--;
    if (n >= cap)
        n = cap - 1;
    memcpy(out, start, n);
    out[n] = '\0';
}

/* ---- work --------------------------------------------------------------- */

static void do_work(enum work_kind kind, double seconds)
{
    double deadline = mono_now() + seconds;
    if (kind == WORK_BUSY) {
        volatile double sink = 0.0;
        while (mono_now() < deadline)
            for (int k = 0; k < 10000; k++)
                sink += k * 0.5;
    } else if (kind == WORK_SLEEP) {
        double left;
        while ((left = deadline - mono_now()) > 0) {
            struct timespec ts;
            ts.tv_sec = (time_t)left;
            ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
            nanosleep(&ts, NULL); /* an interrupted sleep just loops again */
        }
    }
}

/* ---- fault injection ---------------------------------------------------- */

/* The chosen rank fails on purpose, as a crashing application would: no record, no MPI_Finalize. With a
 * marker file it fails only the first time (the file is created atomically, so exactly one attempt fails). */
static void maybe_fail(const struct options *opt, int rank, const char *host)
{
    if (opt->fail_rank != rank)
        return;
    if (opt->fail_once_marker) {
        int fd = open(opt->fail_once_marker, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) {
            if (errno == EEXIST)
                return; /* failed once already: this attempt runs normally */
            die("cannot create --fail-once-marker '%s': %s", opt->fail_once_marker, strerror(errno));
        }
        close(fd);
    }
    fprintf(stderr, PROG ": rank %d on %s fails on purpose (--fail-rank %ld --fail-mode %s)\n", rank, host,
            opt->fail_rank, opt->fail_mode == FAIL_SEGV ? "segv" : "exit");
    fflush(stderr);
    if (opt->fail_mode == FAIL_SEGV) {
        *(volatile int *)NULL = 1; /* a real invalid access, not a raised signal */
        raise(SIGSEGV);
    }
    exit(FAIL_EXIT_CODE);
}

/* ---- output ------------------------------------------------------------- */

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* mkdir -p; ranks of one task race to create the same directory, so an
 * existing directory is success. */
static int make_dirs(const char *dir)
{
    char *path = strdup(dir);
    if (!path)
        return -1;
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST) {
            free(path);
            return -1;
        }
        *p = '/';
    }
    int rc = mkdir(path, 0777);
    free(path);
    if (rc != 0 && errno != EEXIST)
        return -1;
    struct stat st;
    if (stat(dir, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Writes DIR/<task>.<rank>.json via a hidden temporary name and rename(), so
 * a reader sees either no file or the whole record. */
static int write_record_file(const char *dir, const char *task, int rank, const struct buf *rec)
{
    if (make_dirs(dir) != 0) {
        fprintf(stderr, PROG ": cannot create --out directory '%s': %s\n", dir, strerror(errno));
        return -1;
    }
    struct buf final = {0}, tmp = {0};
    buf_printf(&final, "%s/%s.%d.json", dir, task, rank);
    buf_printf(&tmp, "%s/.%s.%d.json.tmp.%ld", dir, task, rank, (long)getpid());
    int rc = -1;
    FILE *f = fopen(tmp.data, "w");
    if (!f) {
        fprintf(stderr, PROG ": cannot write '%s': %s\n", tmp.data, strerror(errno));
        goto out;
    }
    size_t wrote = fwrite(rec->data, 1, rec->len, f);
    int close_rc = fclose(f);
    if (wrote != rec->len || close_rc != 0) {
        fprintf(stderr, PROG ": cannot write '%s': %s\n", tmp.data, strerror(errno));
        unlink(tmp.data);
        goto out;
    }
    if (rename(tmp.data, final.data) != 0) {
        fprintf(stderr, PROG ": cannot rename '%s' to '%s': %s\n", tmp.data, final.data, strerror(errno));
        unlink(tmp.data);
        goto out;
    }
    rc = 0;
out:
    free(final.data);
    free(tmp.data);
    return rc;
}

int main(int argc, char **argv)
{
    double t_start = wall_now();
    struct options opt;
    parse_args(argc, argv, &opt); /* bad options stop here, before MPI starts */

    MPI_Init(&argc, &argv);
    double t_init = wall_now();

    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char library[MPI_MAX_LIBRARY_VERSION_STRING + 1];
    library_first_line(library, sizeof library);

    char host[HOST_NAME_MAX + 1];
    if (gethostname(host, sizeof host) != 0)
        die("gethostname failed: %s", strerror(errno));
    host[HOST_NAME_MAX] = '\0';
    maybe_fail(&opt, rank, host);

    struct buf rec = {0};
    buf_append(&rec, "{\"app\": \"c\", \"task\": ", 21);
    buf_json_string(&rec, opt.task);
    buf_append(&rec, ", \"host\": ", 10);
    buf_json_string(&rec, host);
    buf_printf(&rec, ", \"rank\": %d, \"size\": %d, \"pid\": %ld, \"cpus\": ", rank, size, (long)getpid());
    buf_cpu_list(&rec);

    do_work(opt.work, opt.seconds);
    /* No barrier: each rank reports its own end. MPI_Finalize comes before
     * t_end because the process holds its CPUs until it is done with MPI. */
    MPI_Finalize();
    double t_end = wall_now();

    if (!opt.affinity_only) {
        buf_append(&rec, ", \"gpus\": ", 10);
        buf_gpu_vars(&rec);
        buf_append(&rec, ", \"mpi_library\": ", 17);
        buf_json_string(&rec, library);
        buf_printf(&rec, ", \"t_start\": %.6f, \"t_init\": %.6f, \"t_end\": %.6f", t_start, t_init, t_end);
        buf_printf(&rec, ", \"work\": {\"kind\": \"%s\", \"seconds\": %.6f}", WORK_NAMES[opt.work], opt.seconds);
    }
    buf_append(&rec, "}\n", 2);

    int rc;
    if (opt.out_dir) {
        rc = write_record_file(opt.out_dir, opt.task, rank, &rec);
    } else {
        rc = write_all(STDOUT_FILENO, rec.data, rec.len);
        if (rc != 0)
            fprintf(stderr, PROG ": cannot write to stdout: %s\n", strerror(errno));
    }
    free(rec.data);
    return rc == 0 ? 0 : 1;
}
