// libwbrecord.so: preloaded into a program `wb run --record` starts, it makes the calls whose
// results come from outside (reads, receives, time, random, ...) itself and keeps what they
// returned in a buffer per thread, so that they need not stop at wb's controller. Its calls
// go through one `syscall` instruction at a fixed address (WB_RECORD_GADGET) that wb's seccomp
// filter lets through; every other such call in the process stops at wb, which records it.
// wb reads the buffers while the program is stopped (a checkpoint, a full buffer, a fault).
#define _GNU_SOURCE
#include <wb_record.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define BUFFER_BYTES (1u << 20)
#define MAX_REGIONS 64

static uint64_t gadget;            // address of `syscall; ret`, 0 when not set up
static int recording;              // wb took the first buffer
static __thread wb_record_buffer *buffer;
static __thread int unavailable;   // this thread could not get a buffer
static __thread uint32_t thread_id;
static __thread int busy;          // inside keep(): a signal handler's calls go the slow way

static long gadget_call(long nr, const uint64_t a[6]) {
    register uint64_t r10 __asm__("r10") = a[3];
    register uint64_t r8 __asm__("r8") = a[4];
    register uint64_t r9 __asm__("r9") = a[5];
    long ret;
    __asm__ volatile("call *%[g]"
                     : "=a"(ret)
                     : "0"(nr), "D"(a[0]), "S"(a[1]), "d"(a[2]), "r"(r10), "r"(r8), "r"(r9), [g] "r"(gadget)
                     : "rcx", "r11", "memory");
    return ret;
}

static int direct_read(void *ctx, uint64_t address, void *out, size_t len) {
    (void)ctx;
    memcpy(out, (const void *)address, len);
    return 0;
}

static void after_fork_in_child(void) {
    // A child is not recorded: it keeps the fast path for its calls and logs nothing.
    recording = 0;
    buffer = NULL;
    thread_id = 0;
}

__attribute__((constructor)) static void wb_record_start(void) {
    const char *where = getenv(WB_RECORD_GADGET_ENV);
    if (!where) return;
    uint64_t at = strtoull(where, NULL, 16);
    void *page = mmap((void *)at, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (page == MAP_FAILED || (uint64_t)page != at) return;
    static const uint8_t code[] = { 0x0f, 0x05, 0xc3 };  // syscall; ret
    memcpy(page, code, sizeof code);
    if (mprotect(page, 4096, PROT_READ | PROT_EXEC) != 0) return;
    gadget = at;
    recording = 1;
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

/// The thread's buffer, made and handed to wb on first use.
static wb_record_buffer *thread_buffer(void) {
    if (buffer || unavailable || !recording) return buffer;
    void *p = mmap(NULL, BUFFER_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { unavailable = 1; return NULL; }
    wb_record_buffer *b = p;
    b->magic = WB_RECORD_BUFFER_MAGIC;
    b->used = 0;
    b->inflight = 0;
    b->capacity = BUFFER_BYTES - sizeof *b;
    // Not through the gadget: this call must stop at wb, which learns where the buffer is.
    if (syscall(WB_RECORD_MARKER, WB_RECORD_OP_REGISTER, p, (long)b->capacity) != 0) {
        munmap(p, BUFFER_BYTES);
        unavailable = 1;
        recording = 0;
        return NULL;
    }
    buffer = b;
    return b;
}

static void keep(uint32_t nr, const uint64_t a[6], long result) {
    wb_record_buffer *b = thread_buffer();
    if (!b) return;
    uint64_t addr[MAX_REGIONS], len[MAX_REGIONS];
    int n = wb_record_regions(nr, a, result, direct_read, NULL, addr, len, MAX_REGIONS);
    uint64_t size = wb_record_size(n, len);
    if (size > b->capacity / 2) {
        // Too big for the buffer: wb reads it from the process itself.
        uint64_t args[7] = { a[0], a[1], a[2], a[3], a[4], a[5], (uint64_t)result };
        syscall(WB_RECORD_MARKER, WB_RECORD_OP_LARGE, b, nr, args);
        return;
    }
    if (b->used + size > b->capacity) {
        syscall(WB_RECORD_MARKER, WB_RECORD_OP_FLUSH, b, 0, 0);
        if (b->used + size > b->capacity) b->used = 0;  // wb is gone: keep going unrecorded
    }
    uint8_t *out = (uint8_t *)(b + 1) + b->used;
    uint64_t written = wb_record_encode(out, thread_id ? thread_id : (thread_id = (uint32_t)syscall(SYS_gettid)), nr, a, result, n, addr, len, direct_read, NULL);
    b->used += written;
    b->calls++;
}

/// Makes call `nr` through the gadget and keeps what it returned; errno as libc sets it.
static long call(uint32_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5) {
    uint64_t a[6] = { a0, a1, a2, a3, a4, a5 };
    long r;
    if (!gadget || (busy && recording)) return syscall(nr, a0, a1, a2, a3, a4, a5);
    wb_record_buffer *b = recording ? thread_buffer() : NULL;
    if (b) b->inflight = 1;
    r = gadget_call(nr, a);
    if (b) {
        busy = 1;
        keep(nr, a, r);
        busy = 0;
        b->inflight = 0;
    }
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return -1;
    }
    return r;
}

#define U(x) ((uint64_t)(uintptr_t)(x))
#define EXPORT __attribute__((visibility("default")))

EXPORT ssize_t read(int fd, void *buf, size_t n) { return call(0, U(fd), U(buf), n, 0, 0, 0); }
EXPORT ssize_t __read_chk(int fd, void *buf, size_t n, size_t cap) { (void)cap; return call(0, U(fd), U(buf), n, 0, 0, 0); }
EXPORT ssize_t write(int fd, const void *buf, size_t n) { return call(1, U(fd), U(buf), n, 0, 0, 0); }
EXPORT ssize_t pread(int fd, void *buf, size_t n, off_t off) { return call(17, U(fd), U(buf), n, U(off), 0, 0); }
EXPORT ssize_t pread64(int fd, void *buf, size_t n, off_t off) { return call(17, U(fd), U(buf), n, U(off), 0, 0); }
EXPORT ssize_t readv(int fd, const struct iovec *iov, int n) { return call(19, U(fd), U(iov), U(n), 0, 0, 0); }
EXPORT ssize_t writev(int fd, const struct iovec *iov, int n) { return call(20, U(fd), U(iov), U(n), 0, 0, 0); }
EXPORT ssize_t recv(int fd, void *buf, size_t n, int flags) { return call(45, U(fd), U(buf), n, U(flags), 0, 0); }
EXPORT ssize_t __recv_chk(int fd, void *buf, size_t n, size_t cap, int flags) { (void)cap; return call(45, U(fd), U(buf), n, U(flags), 0, 0); }
EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *from, socklen_t *fromlen) {
    return call(45, U(fd), U(buf), n, U(flags), U(from), U(fromlen));
}
EXPORT ssize_t recvmsg(int fd, struct msghdr *m, int flags) { return call(47, U(fd), U(m), U(flags), 0, 0, 0); }
EXPORT ssize_t send(int fd, const void *buf, size_t n, int flags) { return call(44, U(fd), U(buf), n, U(flags), 0, 0); }
EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to, socklen_t tolen) {
    return call(44, U(fd), U(buf), n, U(flags), U(to), U(tolen));
}
EXPORT ssize_t sendmsg(int fd, const struct msghdr *m, int flags) { return call(46, U(fd), U(m), U(flags), 0, 0, 0); }
EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len) { return (int)call(43, U(fd), U(addr), U(len), 0, 0, 0); }
EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) { return (int)call(288, U(fd), U(addr), U(len), U(flags), 0, 0); }
EXPORT ssize_t getrandom(void *buf, size_t n, unsigned flags) { return call(318, U(buf), n, flags, 0, 0, 0); }
EXPORT int poll(struct pollfd *fds, nfds_t n, int timeout) { return (int)call(7, U(fds), n, U(timeout), 0, 0, 0); }
EXPORT int epoll_wait(int ep, struct epoll_event *ev, int n, int timeout) { return (int)call(232, U(ep), U(ev), U(n), U(timeout), 0, 0); }
EXPORT int clock_gettime(clockid_t clock, struct timespec *ts) { return (int)call(228, U(clock), U(ts), 0, 0, 0, 0); }
EXPORT int gettimeofday(struct timeval *tv, void *tz) { return (int)call(96, U(tv), U(tz), 0, 0, 0, 0); }
EXPORT time_t time(time_t *t) { return (time_t)call(201, U(t), 0, 0, 0, 0, 0); }
