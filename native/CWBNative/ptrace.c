// ptrace and wait wrappers: glibc's ptrace() is variadic and the wait status accessors are
// macros, neither of which Swift can call.
#define _GNU_SOURCE
#include "wb_native.h"
#include <errno.h>
#include <elf.h>
#include <signal.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <sched.h>
#include <time.h>

_Static_assert(sizeof(wb_regs) == sizeof(struct user_regs_struct), "wb_regs mirrors user_regs_struct");
_Static_assert(offsetof(wb_regs, rip) == offsetof(struct user_regs_struct, rip), "rip offset");
_Static_assert(offsetof(wb_regs, fs_base) == offsetof(struct user_regs_struct, fs_base), "fs_base offset");
_Static_assert(offsetof(wb_regs, gs) == offsetof(struct user_regs_struct, gs), "gs offset");
_Static_assert(sizeof(wb_rseq_config) == 24, "struct ptrace_rseq_configuration is 24 bytes");

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif
#ifndef PTRACE_PEEKSIGINFO_SHARED
#define PTRACE_PEEKSIGINFO_SHARED 1
#endif

int wb_ptrace(long request, pid_t pid, uint64_t addr, uint64_t data, long *result) {
    errno = 0;
    long r = ptrace((enum __ptrace_request)request, pid, (void *)addr, (void *)data);
    int e = errno;
    if (result) *result = r;
    // PEEK requests return data that may be -1; errno tells the truth for them.
    if (r == -1 && e != 0) return e;
    return 0;
}

int wb_ptrace_getregs(pid_t tid, wb_regs *regs) {
    return wb_ptrace(PTRACE_GETREGS, tid, 0, (uint64_t)(uintptr_t)regs, NULL);
}

int wb_ptrace_setregs(pid_t tid, const wb_regs *regs) {
    return wb_ptrace(PTRACE_SETREGS, tid, 0, (uint64_t)(uintptr_t)regs, NULL);
}

int wb_ptrace_getregset(pid_t tid, int note, void *buf, size_t *len) {
    struct iovec iov = { buf, *len };
    int e = wb_ptrace(PTRACE_GETREGSET, tid, (uint64_t)note, (uint64_t)(uintptr_t)&iov, NULL);
    if (e == 0) *len = iov.iov_len;
    return e;
}

int wb_ptrace_setregset(pid_t tid, int note, const void *buf, size_t len) {
    struct iovec iov = { (void *)buf, len };
    return wb_ptrace(PTRACE_SETREGSET, tid, (uint64_t)note, (uint64_t)(uintptr_t)&iov, NULL);
}

int wb_ptrace_getsigmask(pid_t tid, uint64_t *mask) {
    return wb_ptrace(PTRACE_GETSIGMASK, tid, sizeof(uint64_t), (uint64_t)(uintptr_t)mask, NULL);
}

int wb_ptrace_setsigmask(pid_t tid, uint64_t mask) {
    return wb_ptrace(PTRACE_SETSIGMASK, tid, sizeof(uint64_t), (uint64_t)(uintptr_t)&mask, NULL);
}

int wb_ptrace_peeksiginfo(pid_t tid, int shared, uint64_t offset, void *buf, int max, int *count) {
    struct { uint64_t off; uint32_t flags; int32_t nr; } args = {
        offset, shared ? PTRACE_PEEKSIGINFO_SHARED : 0, max };
    long r = 0;
    int e = wb_ptrace(PTRACE_PEEKSIGINFO, tid, (uint64_t)(uintptr_t)&args, (uint64_t)(uintptr_t)buf, &r);
    if (e == 0) *count = (int)r;
    return e;
}

int wb_ptrace_getsiginfo(pid_t tid, void *siginfo128) {
    return wb_ptrace(PTRACE_GETSIGINFO, tid, 0, (uint64_t)(uintptr_t)siginfo128, NULL);
}

int wb_ptrace_get_rseq_config(pid_t tid, wb_rseq_config *config) {
    memset(config, 0, sizeof *config);
    return wb_ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, sizeof *config, (uint64_t)(uintptr_t)config, NULL);
}

int wb_waitpid(pid_t pid, int *status, int options, pid_t *waited) {
    for (;;) {
        pid_t r = waitpid(pid, status, options | __WALL);
        if (r >= 0) { *waited = r; return 0; }
        if (errno != EINTR) return errno;
    }
}

int wb_wifexited(int s) { return WIFEXITED(s); }
int wb_wexitstatus(int s) { return WEXITSTATUS(s); }
int wb_wifsignaled(int s) { return WIFSIGNALED(s); }
int wb_wtermsig(int s) { return WTERMSIG(s); }
int wb_wifstopped(int s) { return WIFSTOPPED(s); }
int wb_wstopsig(int s) { return WSTOPSIG(s); }
int wb_wptrace_event(int s) { return (s >> 16) & 0xff; }

static int wait_timed_blocked(pid_t pid, long timeout_us, pid_t *waited, int *status, const sigset_t *chld) {
    struct timespec deadline, now;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_us / 1000000L;
    deadline.tv_nsec += (timeout_us % 1000000L) * 1000L;
    if (deadline.tv_nsec >= 1000000000L) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000L; }
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG | __WALL);
        if (r > 0) { *waited = r; return 0; }
        if (r < 0 && errno != EINTR) return errno;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left_ns = (deadline.tv_sec - now.tv_sec) * 1000000000L + (deadline.tv_nsec - now.tv_nsec);
        if (left_ns <= 0) return ETIMEDOUT;
        struct timespec wait = { left_ns / 1000000000L, left_ns % 1000000000L };
        sigtimedwait(chld, NULL, &wait);
    }
}

/// Waits up to `timeout_ms` for `pid` (-1: any child or tracee) to change state, sleeping in
/// sigtimedwait for SIGCHLD in between. SIGCHLD is blocked in the calling thread meanwhile,
/// so it stays pending until the wait takes it: a tracee's stop is reported to the thread
/// that traces it, which takes it at once while it waits (another thread of the process
/// that does not block SIGCHLD could take it between the waitpid and the sigtimedwait; the
/// wait then sees the change at its timeout).
static int wait_timed(pid_t pid, long timeout_us, pid_t *waited, int *status) {
    sigset_t chld, old;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &chld, &old);
    int e = wait_timed_blocked(pid, timeout_us, waited, status, &chld);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return e;
}

int wb_wait_any(int timeout_ms, pid_t *pid, int *status) { return wait_timed(-1, timeout_ms * 1000L, pid, status); }

int wb_wait_any_us(long timeout_us, pid_t *pid, int *status) { return wait_timed(-1, timeout_us, pid, status); }

int wb_wait_tid(pid_t tid, int timeout_ms, int *status) {
    pid_t waited = 0;
    return wait_timed(tid, timeout_ms * 1000L, &waited, status);
}

int wb_pin_cpu(pid_t pid, int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(pid, sizeof set, &set) == 0 ? 0 : errno;
}
