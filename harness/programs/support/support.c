#define _GNU_SOURCE
#include "harness.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <signal.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

// The programs are plain C, but swiftc links them with the Swift runtime, which installs
// its crash reporter on the fatal signals. Target programs crash the way C programs do:
// these go back to their default actions before main runs.
__attribute__((constructor)) static void harness_default_crash_signals(void) {
    const int fatal[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS };
    for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++) signal(fatal[i], SIG_DFL);
}

static sigjmp_buf probe_env;

static void harness_probe_fault(int sig) { (void)sig; siglongjmp(probe_env, 1); }

int harness_faults(const volatile void *p) {
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = harness_probe_fault;
    sigaction(SIGSEGV, &sa, &old);
    int faulted = 1;
    if (sigsetjmp(probe_env, 1) == 0) {
        (void)*(const volatile char *)p;
        faulted = 0;
    }
    sigaction(SIGSEGV, &old, NULL);
    return faulted;
}

void harness_say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

void harness_require(int ok, const char *what) {
    if (!ok) { perror(what); exit(2); }
}

void harness_fill(void *p, size_t len, uint64_t seed) {
    uint64_t s = seed | 1, *w = p;
    for (size_t i = 0; i < len / 8; i++) w[i] = harness_next(&s);
}

uint64_t harness_checksum(const void *p, size_t len) {
    const uint64_t *w = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len / 8; i++) { h ^= w[i]; h *= 0x100000001b3ULL; }
    return h;
}

static volatile sig_atomic_t requests;
static volatile pid_t request_waiter, request_process;
// SIGUSR1 is sent to the process, and the kernel hands it to any thread that does not block
// it: while the waiting thread blocks it between its check and sigsuspend, another thread
// may take it, and the waiter would sleep on. A request caught by another thread is passed
// on to the waiter, where it is counted.
static void on_usr1(int sig) {
    int saved = errno;
    if (request_process == getpid() && request_waiter != 0 && gettid() != request_waiter
        && tgkill(request_process, request_waiter, sig) == 0) { errno = saved; return; }
    requests++;
    errno = saved;
}

volatile sig_atomic_t *harness_verify_requests(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    request_process = getpid();
    request_waiter = gettid();
    sigaction(SIGUSR1, &sa, NULL);
    return &requests;
}

void harness_wait_for_request(void) {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGUSR1);
    while (requests == 0) sigsuspend(&wait_mask);
    requests--;
    sigprocmask(SIG_SETMASK, &old, NULL);
}

uint64_t harness_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void harness_parse_ipv4(const char *program, const char *text, struct sockaddr_in *a) {
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || colon - text >= (long)sizeof host) { fprintf(stderr, "%s: bad address %s\n", program, text); exit(2); }
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = 0;
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) { fprintf(stderr, "%s: bad address %s\n", program, text); exit(2); }
}

int harness_next_line(struct harness_lines *c, char *out, size_t size) {
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            snprintf(out, size, "%.*s", (int)n, c->buf);
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            return 1;
        }
        if (c->len == sizeof c->buf) return 0;
        ssize_t got = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
        if (got <= 0) return 0;
        c->len += (size_t)got;
    }
}

int harness_has_line(const struct harness_lines *c) { return memchr(c->buf, '\n', c->len) != NULL; }

int harness_listen(const char *program, const char *at, int backlog) {
    struct sockaddr_in a;
    harness_parse_ipv4(program, at, &a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    harness_require(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, backlog) == 0, "listen");
    return fd;
}

int harness_connect(const char *program, const char *at) {
    struct sockaddr_in a;
    harness_parse_ipv4(program, at, &a);
    for (int tries = 0;; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
        close(fd);
        harness_require(tries < 3000, "connect");
        usleep(10000);
    }
}

struct timespec harness_in_ms(long ms) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000;
    if (t.tv_nsec >= 1000000000) { t.tv_sec++; t.tv_nsec -= 1000000000; }
    return t;
}

void harness_sleep_until(const struct timespec *t) {
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) == EINTR) {}
}
