/* The power-cut recorder: an LD_PRELOAD library that logs what a process does to the files
 * of a few directories, so that tests/test_powercut_model.py can rebuild those directories
 * as a power cut at any moment of the log would have left them.
 *
 * Logged (each record one write(2) to $POWERCUT_LOG, opened O_APPEND, so the records of the
 * daemon's threads and of its forked snapshot child interleave whole):
 *   N  a file created (open with O_CREAT where the path did not exist)     ino, path
 *   M  a directory created                                                 ino, path
 *   O  a file truncated by open(O_TRUNC)                                   ino, path
 *   W  bytes written at an offset                                          ino, offset, data
 *   T  ftruncate                                                           ino, length
 *   A  posix_fallocate (mode 0: the file grows to at least offset+len)     ino, offset+len
 *   S  fsync/fdatasync of a file, logged once it returned                  ino, start (ns,
 *      CLOCK_MONOTONIC: Python's time.monotonic)
 *   D  fsync of a directory: its entries, listed before the call           ino, path, entries
 *   R  rename                                                              old, new
 *   U  unlink                                                              path
 *   K  the cut: written just before the shim kills the daemon ($POWERCUT_KILL)
 * A record: "OP INO A B PATHLEN DATALEN\n" then PATHLEN bytes of path, DATALEN of data.
 *
 * Only paths whose parent (or which themselves) are in $POWERCUT_DIRS (absolute, joined with
 * ':') are followed. $POWERCUT_KILL = "OP:SUFFIX:N" kills the process that loaded the shim
 * (the daemon, also when its snapshot child makes the call) right after the N-th OP on a
 * path ending in SUFFIX ("*" for any OP; SUFFIX may be empty).
 * $POWERCUT_SYNC_DELAY_US makes each fsync/fdatasync of a followed file that much slower
 * (a slow disk: the time a writer spends waiting on one is when other requests race it).
 * The shim removes LD_PRELOAD from the environment, so the daemon's jobs run without it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 4096
#define MAXDIRS 16

static char *dirs[MAXDIRS];
static int ndirs;
static const char *log_path;
static int log_fd = -1;
static pid_t log_pid, daemon_pid;
static char kill_op;
static char kill_suffix[256];
static long kill_nth, kill_count;
static int killing;
static useconds_t sync_delay;

struct tracked { ino_t ino; int is_dir; char *path; };
static struct tracked fds[MAXFD];

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_posix_fallocate)(int, off_t, off_t);
static int (*real_posix_fallocate64)(int, off_t, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_close)(int);
static int (*real_mkdir)(const char *, mode_t);
static int (*real_rename)(const char *, const char *);
static int (*real_unlink)(const char *);

__attribute__((constructor)) static void init(void) {
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_posix_fallocate = dlsym(RTLD_NEXT, "posix_fallocate");
    real_posix_fallocate64 = dlsym(RTLD_NEXT, "posix_fallocate64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_close = dlsym(RTLD_NEXT, "close");
    real_mkdir = dlsym(RTLD_NEXT, "mkdir");
    real_rename = dlsym(RTLD_NEXT, "rename");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    log_path = getenv("POWERCUT_LOG");
    const char *d = getenv("POWERCUT_DIRS");
    if (d) {
        char *copy = strdup(d), *save = NULL;
        for (char *t = strtok_r(copy, ":", &save); t && ndirs < MAXDIRS; t = strtok_r(NULL, ":", &save))
            dirs[ndirs++] = t;
    }
    const char *k = getenv("POWERCUT_KILL");
    if (k && strlen(k) > 2 && k[1] == ':') {
        kill_op = k[0];
        const char *colon = strrchr(k + 2, ':');
        if (colon) {
            size_t n = (size_t)(colon - (k + 2));
            if (n >= sizeof kill_suffix) n = sizeof kill_suffix - 1;
            memcpy(kill_suffix, k + 2, n);
            kill_nth = atol(colon + 1);
        }
    }
    const char *delay = getenv("POWERCUT_SYNC_DELAY_US");
    if (delay) sync_delay = (useconds_t)atol(delay);
    daemon_pid = getpid();
    unsetenv("LD_PRELOAD");
}

static int in_dirs(const char *path) {
    for (int i = 0; i < ndirs; i++)
        if (strcmp(dirs[i], path) == 0) return 1;
    return 0;
}

/* Is `path` (absolute) one of the directories, or directly inside one? */
static int followed(const char *path) {
    if (!log_path || !path || path[0] != '/') return 0;
    if (in_dirs(path)) return 1;
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return 0;
    char parent[4096];
    size_t n = (size_t)(slash - path);
    if (n >= sizeof parent) return 0;
    memcpy(parent, path, n);
    parent[n] = 0;
    return in_dirs(parent);
}

static void absolute(const char *path, char *out, size_t size) {
    if (path[0] == '/') {
        snprintf(out, size, "%s", path);
    } else {
        char cwd[4096];
        if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
        snprintf(out, size, "%s/%s", cwd, path);
    }
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void emit(char op, unsigned long ino, long long a, long long b, const char *path,
                 size_t pathlen, const void *data, size_t datalen) {
    if (killing && op != 'K') return;
    pid_t me = getpid();
    if (log_fd < 0 || log_pid != me) {  /* a forked child closes what it inherited */
        log_fd = (int)syscall(SYS_openat, AT_FDCWD, log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        log_pid = me;
        if (log_fd < 0) return;
    }
    char head[160];
    int h = snprintf(head, sizeof head, "%c %lu %lld %lld %zu %zu\n", op, ino, a, b, pathlen, datalen);
    size_t total = (size_t)h + pathlen + datalen;
    char *buf = malloc(total);
    if (!buf) return;
    memcpy(buf, head, (size_t)h);
    if (pathlen) memcpy(buf + h, path, pathlen);
    if (datalen) memcpy(buf + h + pathlen, data, datalen);
    size_t done = 0;
    while (done < total) {
        ssize_t w = syscall(SYS_write, log_fd, buf + done, total - done);
        if (w <= 0) break;
        done += (size_t)w;
    }
    free(buf);
    if (op == 'K' || !kill_op) return;
    if ((kill_op == '*' || kill_op == op) && path && ends_with(path, kill_suffix)) {
        if (++kill_count == kill_nth) {
            killing = 1;
            emit('K', 0, 0, 0, path, pathlen, NULL, 0);
            kill(daemon_pid, SIGKILL);
            for (;;) pause();
        }
    }
}

static void emit_path(char op, unsigned long ino, const char *path) {
    emit(op, ino, 0, 0, path, strlen(path), NULL, 0);
}

static void track(int fd, const char *path) {
    if (fd < 0 || fd >= MAXFD) return;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    free(fds[fd].path);
    fds[fd].ino = st.st_ino;
    fds[fd].is_dir = S_ISDIR(st.st_mode);
    fds[fd].path = strdup(path);
}

static struct tracked *tracked(int fd) {
    if (fd < 0 || fd >= MAXFD || !fds[fd].path) return NULL;
    return &fds[fd];
}

static int do_open(int (*real)(int, const char *, int, ...), int (*real_path)(const char *, int, ...),
                   int dirfd, const char *path, int flags, mode_t mode) {
    char abs[4096];
    int follow = 0, existed = 1;
    if (log_path && (dirfd == AT_FDCWD || path[0] == '/')) {
        absolute(path, abs, sizeof abs);
        follow = followed(abs);
        if (follow && (flags & O_CREAT)) existed = access(abs, F_OK) == 0;
    }
    int fd = real ? real(dirfd, path, flags, mode) : real_path(path, flags, mode);
    if (fd < 0 || !follow) {
        if (fd >= 0 && fd < MAXFD && fds[fd].path) { free(fds[fd].path); fds[fd].path = NULL; }
        return fd;
    }
    int saved = errno;
    track(fd, abs);
    if (!existed) emit_path('N', fds[fd].ino, abs);
    else if ((flags & O_TRUNC) && (flags & (O_WRONLY | O_RDWR))) emit_path('O', fds[fd].ino, abs);
    errno = saved;
    return fd;
}

#define MODE_ARG(flags) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

int open(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(NULL, real_open, AT_FDCWD, path, flags, mode); }
int open64(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(NULL, real_open64, AT_FDCWD, path, flags, mode); }
int openat(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(real_openat, NULL, dirfd, path, flags, mode); }
int openat64(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(real_openat64, NULL, dirfd, path, flags, mode); }

int close(int fd) {
    if (fd >= 0 && fd < MAXFD && fds[fd].path) { free(fds[fd].path); fds[fd].path = NULL; }
    return real_close(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
    ssize_t w = real_write(fd, buf, n);
    struct tracked *t = tracked(fd);
    if (w > 0 && t && !t->is_dir) {
        int saved = errno;
        off_t end = lseek(fd, 0, SEEK_CUR);
        emit('W', t->ino, (long long)end - w, 0, t->path, strlen(t->path), buf, (size_t)w);
        errno = saved;
    }
    return w;
}

static ssize_t do_pwrite(ssize_t (*real)(int, const void *, size_t, off_t), int fd, const void *buf, size_t n, off_t off) {
    ssize_t w = real(fd, buf, n, off);
    struct tracked *t = tracked(fd);
    if (w > 0 && t && !t->is_dir) emit('W', t->ino, off, 0, t->path, strlen(t->path), buf, (size_t)w);
    return w;
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return do_pwrite(real_pwrite, fd, buf, n, off); }
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { return do_pwrite(real_pwrite64, fd, buf, n, off); }

static int do_ftruncate(int (*real)(int, off_t), int fd, off_t len) {
    int r = real(fd, len);
    struct tracked *t = tracked(fd);
    if (r == 0 && t) emit('T', t->ino, len, 0, t->path, strlen(t->path), NULL, 0);
    return r;
}
int ftruncate(int fd, off_t len) { return do_ftruncate(real_ftruncate, fd, len); }
int ftruncate64(int fd, off_t len) { return do_ftruncate(real_ftruncate64, fd, len); }

static int do_fallocate(int (*real)(int, off_t, off_t), int fd, off_t off, off_t len) {
    int r = real(fd, off, len);  /* returns the error number, errno untouched */
    struct tracked *t = tracked(fd);
    if (r == 0 && t && !t->is_dir) emit('A', t->ino, (long long)(off + len), 0, t->path, strlen(t->path), NULL, 0);
    return r;
}
int posix_fallocate(int fd, off_t off, off_t len) { return do_fallocate(real_posix_fallocate, fd, off, len); }
int posix_fallocate64(int fd, off_t off, off_t len) { return do_fallocate(real_posix_fallocate64, fd, off, len); }

/* A directory's entries as "INO TYPE NAME\n" lines (TYPE d for directories, f otherwise). */
static char *list_dir(const char *path, size_t *len) {
    size_t cap = 4096, used = 0;
    char *out = malloc(cap);
    DIR *d = opendir(path);
    if (!d || !out) { if (d) closedir(d); *len = 0; return out; }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char line[512];
        int n = snprintf(line, sizeof line, "%lu %c %s\n", (unsigned long)e->d_ino,
                         e->d_type == DT_DIR ? 'd' : 'f', e->d_name);
        if (used + (size_t)n > cap) { cap = 2 * (used + (size_t)n); out = realloc(out, cap); }
        memcpy(out + used, line, (size_t)n);
        used += (size_t)n;
    }
    closedir(d);
    *len = used;
    return out;
}

static int do_sync(int (*real)(int), int fd) {
    struct tracked *t = tracked(fd);
    if (!t) return real(fd);
    if (t->is_dir) {
        /* listed before the call: what the fsync certainly covers */
        size_t len;
        char *entries = list_dir(t->path, &len);
        int r = real(fd);
        int saved = errno;
        if (r == 0) emit('D', t->ino, 0, 0, t->path, strlen(t->path), entries, len);
        free(entries);
        errno = saved;
        return r;
    }
    struct timespec began;
    clock_gettime(CLOCK_MONOTONIC, &began);
    if (sync_delay) usleep(sync_delay);  /* a disk slower than this machine's */
    int r = real(fd);
    int saved = errno;
    if (r == 0) emit('S', t->ino, (long long)began.tv_sec * 1000000000LL + began.tv_nsec, 0, t->path, strlen(t->path), NULL, 0);
    errno = saved;
    return r;
}
int fsync(int fd) { return do_sync(real_fsync, fd); }
int fdatasync(int fd) { return do_sync(real_fdatasync, fd); }

int mkdir(const char *path, mode_t mode) {
    int r = real_mkdir(path, mode);
    char abs[4096];
    if (r == 0 && log_path) {
        int saved = errno;
        absolute(path, abs, sizeof abs);
        struct stat st;
        if (followed(abs) && stat(abs, &st) == 0) emit_path('M', st.st_ino, abs);
        errno = saved;
    }
    return r;
}

int rename(const char *old, const char *new) {
    char a[4096], b[4096];
    int r = real_rename(old, new);
    if (r == 0 && log_path) {
        int saved = errno;
        absolute(old, a, sizeof a);
        absolute(new, b, sizeof b);
        if (followed(a) || followed(b)) {
            char both[8200];
            /* the path is "OLD\nNEW": a kill suffix matches the new name */
            int n = snprintf(both, sizeof both, "%s\n%s", a, b);
            emit('R', 0, 0, 0, both, (size_t)n, NULL, 0);
        }
        errno = saved;
    }
    return r;
}

int unlink(const char *path) {
    int r = real_unlink(path);
    char abs[4096];
    if (r == 0 && log_path) {
        int saved = errno;
        absolute(path, abs, sizeof abs);
        if (followed(abs)) emit_path('U', 0, abs);
        errno = saved;
    }
    return r;
}
