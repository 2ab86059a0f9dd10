// harness-sigio
//
// Signal-driven I/O as a checkpoint must keep it: pipe A's read end is O_ASYNC, owned by the
// process (F_SETOWN_EX F_OWNER_PID) with signal SIGRTMIN+2 (F_SETSIG, so the handler gets the
// fd in si_fd); pipe B's read end is O_ASYNC, owned by the main thread (F_OWNER_TID) with the
// default SIGIO. Prints "READY pid=N". Each SIGUSR1 is answered with "VERIFY OK" when both
// fds keep their owner and signal (F_GETOWN_EX, F_GETSIG) and a byte written into each pipe
// brings its signal (SIGRTMIN+2 with si_fd = A's read end, POLL_IN; SIGIO); else
// "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int a[2], b[2];
static volatile sig_atomic_t rt_count, rt_fd = -1, rt_code, io_count;

static void on_rt(int sig, siginfo_t *si, void *ctx) { (void)sig; (void)ctx; rt_count++; rt_fd = si->si_fd; rt_code = si->si_code; }
static void on_io(int sig) { (void)sig; io_count++; }

static void append(char *bad, size_t size, const char *what) {
    strncat(bad, " ", size - strlen(bad) - 1);
    strncat(bad, what, size - strlen(bad) - 1);
}

static void own(int fd, int type, pid_t who, int sig) {
    struct f_owner_ex o = { .type = type, .pid = who };
    harness_require(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC | O_NONBLOCK) == 0, "F_SETFL");
    harness_require(fcntl(fd, F_SETOWN_EX, &o) == 0, "F_SETOWN_EX");
    if (sig) harness_require(fcntl(fd, F_SETSIG, sig) == 0, "F_SETSIG");
}

static int owned_by(int fd, int type, pid_t who, int sig) {
    struct f_owner_ex o;
    return fcntl(fd, F_GETOWN_EX, &o) == 0 && o.type == type && o.pid == who && fcntl(fd, F_GETSIG) == sig
        && (fcntl(fd, F_GETFL) & O_ASYNC);
}

// Waits up to a second for `count` to reach `want`.
static int arrives(volatile sig_atomic_t *count, int want) {
    for (int i = 0; i < 1000 && *count < want; i++) { struct timespec t = { 0, 1000000 }; nanosleep(&t, NULL); }
    return *count >= want;
}

int main(void) {
    struct sigaction rt = { .sa_sigaction = on_rt, .sa_flags = SA_SIGINFO | SA_RESTART };
    sigaction(SIGRTMIN + 2, &rt, NULL);
    struct sigaction io = { .sa_handler = on_io, .sa_flags = SA_RESTART };
    sigaction(SIGIO, &io, NULL);
    harness_require(pipe(a) == 0 && pipe(b) == 0, "pipe");
    own(a[0], F_OWNER_PID, getpid(), SIGRTMIN + 2);
    own(b[0], F_OWNER_TID, gettid(), 0);
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        char bad[256] = "", byte;
        if (!owned_by(a[0], F_OWNER_PID, getpid(), SIGRTMIN + 2)) append(bad, sizeof bad, "a-owner");
        if (!owned_by(b[0], F_OWNER_TID, gettid(), 0)) append(bad, sizeof bad, "b-owner");
        int rt_before = rt_count, io_before = io_count;
        if (write(a[1], "x", 1) != 1 || !arrives(&rt_count, rt_before + 1)) append(bad, sizeof bad, "a-no-signal");
        else if (rt_fd != a[0] || rt_code != POLL_IN) append(bad, sizeof bad, "a-siginfo");
        if (read(a[0], &byte, 1) != 1) append(bad, sizeof bad, "a-read");
        if (write(b[1], "y", 1) != 1 || !arrives(&io_count, io_before + 1)) append(bad, sizeof bad, "b-no-signal");
        if (read(b[0], &byte, 1) != 1) append(bad, sizeof bad, "b-read");
        if (bad[0]) harness_say("VERIFY FAIL%s", bad); else harness_say("VERIFY OK");
    }
}
