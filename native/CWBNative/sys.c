// Raw syscalls glibc does not wrap, and variadic calls pinned to one signature.
#define _GNU_SOURCE
#include "wb_native.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cpuid.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <sys/wait.h>

int wb_get_robust_list(pid_t tid, uint64_t *head, uint64_t *len) {
    void *h = NULL; size_t l = 0;
    if (syscall(SYS_get_robust_list, tid, &h, &l) != 0) return errno;
    *head = (uint64_t)(uintptr_t)h; *len = l;
    return 0;
}

int wb_prlimit(pid_t pid, int resource, const uint64_t *new_cur_max, uint64_t *old_cur_max) {
    struct rlimit64 n, o;
    if (new_cur_max) { n.rlim_cur = new_cur_max[0]; n.rlim_max = new_cur_max[1]; }
    if (prlimit64(pid, (enum __rlimit_resource)resource, new_cur_max ? &n : NULL, old_cur_max ? &o : NULL) != 0) return errno;
    if (old_cur_max) { old_cur_max[0] = o.rlim_cur; old_cur_max[1] = o.rlim_max; }
    return 0;
}

int wb_tgkill(pid_t tgid, pid_t tid, int sig) {
    return syscall(SYS_tgkill, tgid, tid, sig) == 0 ? 0 : errno;
}

int wb_set_parent_death_signal(int sig) { return prctl(PR_SET_PDEATHSIG, sig) == 0 ? 0 : errno; }

int wb_pipe2(int fds[2], int flags) { return pipe2(fds, flags) == 0 ? 0 : errno; }

int wb_session_keyring(int32_t *id) {
    long r = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* KEY_SPEC_SESSION_KEYRING */, 0);
    if (r < 0) return errno;
    *id = (int32_t)r;
    return 0;
}

int wb_filesystem_magic(const char *path, uint64_t *magic) {
    struct statfs s;
    if (statfs(path, &s) != 0) return errno;
    *magic = (uint64_t)(unsigned long)s.f_type;
    return 0;
}

int wb_fcntl_int(int fd, int cmd, int arg, int *result) {
    int r = fcntl(fd, cmd, arg);
    if (r < 0) return errno;
    if (result) *result = r;
    return 0;
}

int wb_process_vm_readv(pid_t pid, void *local, uint64_t remote, size_t len, size_t *done) {
    struct iovec l = { local, len }, r = { (void *)(uintptr_t)remote, len };
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n < 0) return errno;
    *done = (size_t)n;
    return 0;
}

int wb_process_vm_writev(pid_t pid, const void *local, uint64_t remote, size_t len, size_t *done) {
    struct iovec l = { (void *)local, len }, r = { (void *)(uintptr_t)remote, len };
    ssize_t n = process_vm_writev(pid, &l, 1, &r, 1, 0);
    if (n < 0) return errno;
    *done = (size_t)n;
    return 0;
}

// The kernel takes at most IOV_MAX (1024) remote iovecs per call.
#define WB_IOV_MAX 1024

static int vm_many(pid_t pid, void *local, const uint64_t *remote, int count, size_t *done, int write) {
    struct iovec riov[WB_IOV_MAX];
    size_t total = 0;
    char *cursor = local;
    for (int base = 0; base < count; base += WB_IOV_MAX) {
        int n = count - base < WB_IOV_MAX ? count - base : WB_IOV_MAX;
        size_t want = 0;
        for (int i = 0; i < n; i++) {
            riov[i].iov_base = (void *)(uintptr_t)remote[2 * (base + i)];
            riov[i].iov_len = remote[2 * (base + i) + 1];
            want += riov[i].iov_len;
        }
        struct iovec liov = { cursor, want };
        ssize_t got = write ? process_vm_writev(pid, &liov, 1, riov, n, 0)
                            : process_vm_readv(pid, &liov, 1, riov, n, 0);
        if (got < 0) { *done = total; return errno; }
        total += (size_t)got;
        cursor += got;
        if ((size_t)got != want) { *done = total; return EFAULT; }
    }
    *done = total;
    return 0;
}

int wb_process_vm_readv_many(pid_t pid, void *local, const uint64_t *remote, int count, size_t *done) {
    return vm_many(pid, local, remote, count, done, 0);
}

int wb_process_vm_writev_many(pid_t pid, const void *local, const uint64_t *remote, int count, size_t *done) {
    return vm_many(pid, (void *)local, remote, count, done, 1);
}

int wb_tee(int in, int out, size_t len, unsigned flags, ssize_t *copied) {
    ssize_t n = tee(in, out, len, flags);
    if (n < 0) return errno;
    *copied = n;
    return 0;
}

static sigset_t mask_from_bits(uint64_t bits) {
    sigset_t set;
    sigemptyset(&set);
    for (int s = 1; s <= 64; s++)
        if (bits & (1ULL << (s - 1))) sigaddset(&set, s);
    return set;
}

int wb_sigmask_block_all_except(const int *keep, int count, uint64_t *old_mask) {
    sigset_t all, old;
    sigfillset(&all);
    for (int i = 0; i < count; i++) sigdelset(&all, keep[i]);
    int e = pthread_sigmask(SIG_SETMASK, &all, &old);
    if (e) return e;
    if (old_mask) memcpy(old_mask, &old, sizeof(uint64_t));
    return 0;
}

int wb_sigmask_set(uint64_t mask) {
    sigset_t set = mask_from_bits(mask);
    return pthread_sigmask(SIG_SETMASK, &set, NULL);
}

int wb_sigwaitinfo(uint64_t mask, int *sig, int *code, pid_t *sender) {
    sigset_t set = mask_from_bits(mask);
    siginfo_t info;
    for (;;) {
        int s = sigwaitinfo(&set, &info);
        if (s > 0) { *sig = s; *code = info.si_code; *sender = info.si_pid; return 0; }
        if (errno != EINTR) return errno;
    }
}

uint64_t wb_xgetbv0(void) {
    uint32_t a[4];
    __cpuid(1, a[0], a[1], a[2], a[3]);
    if (!(a[2] & (1u << 27))) return 0;   // no OSXSAVE
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

void wb_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

// In a forked child before exec (async-signal-safe only): fds 0-2 from the given ones
// (/dev/null for -1), every signal at its default, none blocked. 0, or -1 with errno.
static int child_stdio(int fd0, int fd1, int fd2) {
    int fds[3] = { fd0, fd1, fd2 };
    for (int i = 0; i < 3; i++) {
        int src = fds[i] >= 0 ? fds[i] : open("/dev/null", O_RDWR);
        // Move sources that sit on a lower target number out of the way first.
        if (src >= 0 && src < 3 && src != i) src = fcntl(src, F_DUPFD, 10);
        fds[i] = src;
    }
    for (int i = 0; i < 3; i++) if (fds[i] != i && dup2(fds[i], i) < 0) return -1;
    for (int s = 1; s < 65; s++) signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    return 0;
}

// Keeps fd `keep` (the status pipe, close-on-exec) and 0-2, closes every other inherited fd.
static void child_close_fds_but(int keep) {
    for (int fd = 3; fd < keep; fd++) close(fd);
    syscall(SYS_close_range, keep + 1, ~0U, 0);
}

/// In a child that could not exec: errno to the parent through `status_w`, then exit.
__attribute__((noreturn)) static void child_fail(int status_w) {
    int e = errno;
    if (write(status_w, &e, sizeof e) < 0) { /* parent sees EOF */ }
    _exit(127);
}

int wb_spawn_process(const char *path, char *const argv[], char *const envp[], int fd0, int fd1, int fd2, pid_t *pid) {
    int status_pipe[2];
    if (pipe2(status_pipe, O_CLOEXEC) != 0) return errno;
    pid_t child = fork();
    if (child < 0) { int e = errno; close(status_pipe[0]); close(status_pipe[1]); return e; }
    if (child == 0) {
        // Only async-signal-safe calls from here to execve.
        if (child_stdio(fd0, fd1, fd2) != 0) goto fail;
        child_close_fds_but(status_pipe[1]);
        execve(path, argv, envp);
    fail:
        child_fail(status_pipe[1]);
    }
    close(status_pipe[1]);
    int err = 0;
    ssize_t n;
    do { n = read(status_pipe[0], &err, sizeof err); } while (n < 0 && errno == EINTR);
    close(status_pipe[0]);
    if (n == (ssize_t)sizeof err) { int st; waitpid(child, &st, 0); return err; }
    *pid = child;
    return 0;
}

int wb_spawn_held(const char *path, char *const argv[], char *const envp[], int fd0, int fd1, int fd2,
                  const void *filter, int filter_len, pid_t *pid, int *release_fd, int *status_fd) {
    int status_pipe[2], go_pipe[2];
    if (pipe2(status_pipe, O_CLOEXEC) != 0) return errno;
    if (pipe2(go_pipe, O_CLOEXEC) != 0) { int e = errno; close(status_pipe[0]); close(status_pipe[1]); return e; }
    pid_t child = fork();
    if (child < 0) {
        int e = errno;
        close(status_pipe[0]); close(status_pipe[1]); close(go_pipe[0]); close(go_pipe[1]);
        return e;
    }
    if (child == 0) {
        // Only async-signal-safe calls from here to execve.
        if (child_stdio(fd0, fd1, fd2) != 0) goto fail;
        close(go_pipe[1]);
        char go;
        ssize_t n;
        do { n = read(go_pipe[0], &go, 1); } while (n < 0 && errno == EINTR);
        if (n != 1) _exit(127);
        close(go_pipe[0]);
        child_close_fds_but(status_pipe[1]);
        if (filter_len > 0) {
            struct { unsigned short len; const void *filter; } prog = { (unsigned short)filter_len, filter };
            if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) goto fail;
            if (syscall(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, 0, &prog) != 0) goto fail;
        }
        execve(path, argv, envp);
    fail:
        child_fail(status_pipe[1]);
    }
    close(status_pipe[1]);
    close(go_pipe[0]);
    *pid = child;
    *release_fd = go_pipe[1];
    *status_fd = status_pipe[0];
    return 0;
}

int wb_spawn_release(int release_fd, int status_fd) {
    char go = 1;
    ssize_t w = write(release_fd, &go, 1);
    close(release_fd);
    if (w != 1) { close(status_fd); return EPIPE; }
    int err = 0;
    ssize_t n;
    do { n = read(status_fd, &err, sizeof err); } while (n < 0 && errno == EINTR);
    close(status_fd);
    return n == (ssize_t)sizeof err ? err : 0;
}

// Scattered writes: triples of (local address, remote address, length), as many per call as
// the kernel takes. A fuzzing reset writes snapshot pages straight from the mapped image.
int wb_process_vm_writev_scatter(pid_t pid, const uint64_t *triples, int count, size_t *done) {
    struct iovec liov[WB_IOV_MAX], riov[WB_IOV_MAX];
    size_t total = 0;
    for (int base = 0; base < count; base += WB_IOV_MAX) {
        int n = count - base < WB_IOV_MAX ? count - base : WB_IOV_MAX;
        size_t want = 0;
        for (int i = 0; i < n; i++) {
            const uint64_t *t = triples + 3 * (base + i);
            liov[i].iov_base = (void *)(uintptr_t)t[0];
            liov[i].iov_len = t[2];
            riov[i].iov_base = (void *)(uintptr_t)t[1];
            riov[i].iov_len = t[2];
            want += t[2];
        }
        ssize_t got = process_vm_writev(pid, liov, n, riov, n, 0);
        if (got < 0) { *done = total; return errno; }
        total += (size_t)got;
        if ((size_t)got != want) { *done = total; return EFAULT; }
    }
    *done = total;
    return 0;
}

// Scattered writes on several threads: with O_DIRECT each pwrite waits for the disk, and
// writes in flight together finish sooner than one after another. (Linux native AIO would
// need no threads, but tearing its context down waits for an RCU grace period, ~30 ms.)
#include <pthread.h>
#include <stdatomic.h>

struct write_many {
    int fd;
    const uint64_t *triples;
    int count;
    atomic_int next;
    atomic_int err;
};

static void *write_many_worker(void *arg) {
    struct write_many *w = arg;
    for (;;) {
        int i = atomic_fetch_add(&w->next, 1);
        if (i >= w->count || atomic_load(&w->err) != 0) return NULL;
        const uint64_t *t = w->triples + 3 * i;   // buffer, length, offset
        uint64_t done = 0;
        while (done < t[1]) {
            ssize_t r = pwrite(w->fd, (const char *)(uintptr_t)t[0] + done, t[1] - done, (off_t)(t[2] + done));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                int expected = 0;
                atomic_compare_exchange_strong(&w->err, &expected, r < 0 ? errno : EIO);
                return NULL;
            }
            done += (uint64_t)r;
        }
    }
}

int wb_pwrite_many(int fd, const uint64_t *triples, int count, int threads) {
    struct write_many w = { .fd = fd, .triples = triples, .count = count };
    atomic_init(&w.next, 0);
    atomic_init(&w.err, 0);
    if (threads > 16) threads = 16;
    if (threads > count) threads = count;
    pthread_t helpers[16];
    int started = 0;
    for (int i = 1; i < threads; i++) {
        if (pthread_create(&helpers[started], NULL, write_many_worker, &w) == 0) started++;
    }
    write_many_worker(&w);
    for (int i = 0; i < started; i++) pthread_join(helpers[i], NULL);
    return atomic_load(&w.err);
}

int wb_semctl_getpid(int semid, int semnum) { return semctl(semid, semnum, GETPID); }

// openat2(2) has no glibc wrapper (before 2.38, and Debian's headers may lack SYS_openat2).
// Paths inside a directory of untrusted names are opened with it: RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS make the kernel refuse `..` out of the directory and every symlink,
// with no window between a check and the open.
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
struct wb_open_how { uint64_t flags, mode, resolve; };
_Static_assert(sizeof(struct wb_open_how) == 24, "struct open_how is three u64s");
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#include <stddef.h>
_Static_assert(sizeof(struct open_how) == sizeof(struct wb_open_how), "open_how size");
_Static_assert(offsetof(struct open_how, resolve) == offsetof(struct wb_open_how, resolve), "open_how layout");
_Static_assert(RESOLVE_BENEATH == WB_RESOLVE_BENEATH && RESOLVE_NO_SYMLINKS == WB_RESOLVE_NO_SYMLINKS
               && RESOLVE_NO_MAGICLINKS == WB_RESOLVE_NO_MAGICLINKS && RESOLVE_NO_XDEV == WB_RESOLVE_NO_XDEV,
               "RESOLVE_* values");
#endif
_Static_assert(O_PATH == WB_O_PATH, "O_PATH value");

int wb_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve, int *fd) {
    struct wb_open_how how = { flags, mode, resolve };
    long r;
    do { r = syscall(SYS_openat2, dirfd, path, &how, sizeof how); } while (r < 0 && errno == EINTR);
    if (r < 0) return errno;
    *fd = (int)r;
    return 0;
}

int wb_open_by_handle(int mount_fd, int type, const uint8_t *bytes, unsigned len, int *fd) {
    if (len > MAX_HANDLE_SZ) return EINVAL;
    struct { struct file_handle h; unsigned char room[MAX_HANDLE_SZ]; } buf;
    buf.h.handle_bytes = len;
    buf.h.handle_type = type;
    memcpy(buf.h.f_handle, bytes, len);
    int r = open_by_handle_at(mount_fd, &buf.h, O_PATH | O_CLOEXEC);
    if (r < 0) return errno;
    *fd = r;
    return 0;
}

int wb_send_fd(int sock, int fd) {
    char byte = 0;
    struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
    union { struct cmsghdr h; char room[CMSG_SPACE(sizeof(int))]; } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.room, .msg_controllen = sizeof control.room };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    return sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) == 1 ? 0 : errno;
}

int wb_affinity(pid_t tid, int set, uint64_t *mask, int words) {
    size_t bytes = (size_t)words * sizeof(uint64_t);
    long r = set ? syscall(SYS_sched_setaffinity, tid, bytes, mask) : syscall(SYS_sched_getaffinity, tid, bytes, mask);
    return r < 0 ? -errno : 0;
}

int wb_ioprio(pid_t tid, int set, int value) {
    // IOPRIO_WHO_PROCESS: one thread.
    long r = set ? syscall(SYS_ioprio_set, 1, tid, value) : syscall(SYS_ioprio_get, 1, tid);
    return r < 0 ? -errno : (int)r;
}

int wb_fdinfo_basic(pid_t pid, int fd, uint64_t *pos, int *flags, int *more) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", (int)pid, fd);
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) return -errno;
    ssize_t n = read(f, buf, sizeof buf - 1);
    int e = errno;
    close(f);
    if (n < 0) return -e;
    buf[n] = 0;
    *pos = 0; *flags = 0; *more = n == (ssize_t)sizeof buf - 1;
    for (char *line = buf; *line; ) {
        char *end = strchr(line, '\n');
        if (end) *end = 0;
        if (!strncmp(line, "pos:", 4)) *pos = strtoull(line + 4, NULL, 10);
        else if (!strncmp(line, "flags:", 6)) *flags = (int)strtol(line + 6, NULL, 8);
        else if (strncmp(line, "mnt_id:", 7) && strncmp(line, "ino:", 4) && *line) *more = 1;
        if (!end) break;
        line = end + 1;
    }
    return 0;
}
