// harness-events
//
// An event loop of the kind servers run: epoll over an eventfd, a periodic timerfd and a
// signalfd (SIGUSR2), plus a second eventfd holding a count nobody reads, a periodic POSIX
// timer (SIGRTMIN+1 with a value) whose handler runs on an alternate signal stack, and
// SIGUSR1 as the verify request. Each verification prints "VERIFY OK" or "VERIFY FAIL ...":
// timerfd expirations keep arriving through epoll, an eventfd write and a SIGUSR2 come back
// through epoll, the held count is intact, the POSIX timer keeps firing with its value on the
// alternate stack, and the timers keep their periods. A second timerfd is armed for a moment
// of the wall clock an hour ahead (CLOCK_REALTIME, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET):
// its time left must always be that moment minus now (within 250 ms), however long the process
// was away between checkpoint and restore.
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define TIMER_SIG (SIGRTMIN + 1)
#define TIMER_VALUE 77
#define HELD_COUNT 41

static int ep, efd, held, tfd, sfd, wall_tfd;
static time_t wall_target;
static timer_t posix_timer;
static char *alt_stack;
static size_t alt_size = 64 * 1024;
static _Atomic int timer_fires, timer_off_stack, timer_bad_value;
static uint64_t timerfd_ticks, eventfd_total, signalfd_count;
static char failures[512];

static void failed(const char *what) {
    if (strlen(failures) + strlen(what) + 3 < sizeof failures) {
        if (failures[0]) strcat(failures, "; ");
        strcat(failures, what);
    }
}

static void on_timer(int sig, siginfo_t *info, void *ctx) {
    (void)sig; (void)ctx;
    char here;
    if (&here < alt_stack || &here >= alt_stack + alt_size) timer_off_stack++;
    if (info->si_value.sival_int != TIMER_VALUE || info->si_code != SI_TIMER) timer_bad_value++;
    timer_fires++;
}

/// Runs the loop until `until_ns`, collecting events.
// A pipe watched through an fd that was then closed: the watch lives on (the kernel keys it
// by file and fd number) while the duplicate `watched_twin` keeps the pipe open.
static int watched_twin = -1, watched_writer = -1;
static int closed_watch_bytes;

static void loop_for(uint64_t ms) {
    uint64_t until = harness_now_ns() + ms * 1000000ULL;
    while (harness_now_ns() < until) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, 10);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == 1) {
                uint64_t v;
                if (read(tfd, &v, 8) == 8) timerfd_ticks += v;
            } else if (evs[i].data.u64 == 2) {
                uint64_t v;
                if (read(efd, &v, 8) == 8) eventfd_total += v;
            } else if (evs[i].data.u64 == 4) {
                char c;
                if (read(watched_twin, &c, 1) == 1) closed_watch_bytes++;
            } else if (evs[i].data.u64 == 3) {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR2) signalfd_count++;
            }
        }
    }
}

// A SIGEV_THREAD timer: glibc runs its function on a helper thread the kernel signals
// (SIGEV_THREAD_ID, signal 32); restored wrongly, that signal kills the process.
static atomic_int thread_timer_runs;
static void on_thread_timer(union sigval v) { (void)v; thread_timer_runs++; }

static void verify(void) {
    failures[0] = 0;
    uint64_t t0 = timerfd_ticks, e0 = eventfd_total, s0 = signalfd_count;
    int f0 = timer_fires, r0 = thread_timer_runs;
    uint64_t five = 5;
    if (write(efd, &five, 8) != 8) failed("eventfd write failed");
    kill(getpid(), SIGUSR2);
    loop_for(200);
    if (timerfd_ticks < t0 + 3) failed("timerfd expirations stopped");
    if (eventfd_total != e0 + 5) failed("eventfd write did not come back through epoll");
    if (signalfd_count != s0 + 1) failed("SIGUSR2 did not come back through the signalfd");
    if (timer_fires < f0 + 3) failed("POSIX timer stopped firing");
    if (timer_off_stack) failed("POSIX timer handler ran off the alternate stack");
    if (timer_bad_value) failed("POSIX timer signal lost its value or code");
    if (thread_timer_runs < r0 + 2) failed("SIGEV_THREAD timer stopped running its function");
    struct sigaction trap;
    if (sigaction(SIGTRAP, NULL, &trap) != 0 || trap.sa_handler != SIG_IGN) failed("SIGTRAP is no longer ignored");
    int c0 = closed_watch_bytes;
    if (write(watched_writer, "x", 1) != 1) failed("write to the watched pipe failed");
    loop_for(50);
    if (closed_watch_bytes != c0 + 1) failed("epoll watch through a closed fd was lost");
    uint64_t count;
    if (read(held, &count, 8) != 8 || count != HELD_COUNT) failed("held eventfd count changed");
    count = HELD_COUNT;
    if (write(held, &count, 8) != 8) failed("held eventfd write failed");
    struct itimerspec its;
    timer_gettime(posix_timer, &its);
    if (its.it_interval.tv_sec != 0 || its.it_interval.tv_nsec != 15000000) failed("POSIX timer period changed");
    timerfd_gettime(tfd, &its);
    if (its.it_interval.tv_sec != 0 || its.it_interval.tv_nsec != 10000000) failed("timerfd period changed");
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    timerfd_gettime(wall_tfd, &its);
    double left = its.it_value.tv_sec + its.it_value.tv_nsec / 1e9, want = (double)wall_target - (wall.tv_sec + wall.tv_nsec / 1e9);
    if (left < want - 0.25 || left > want + 0.25) failed("absolute wall-clock timerfd moved");
    // The clocks (served by the vdso) agree with the kernel's own time.
    struct timeval tv;
    gettimeofday(&tv, NULL);
    time_t kernel_now = (time_t)syscall(SYS_time, NULL);
    if (tv.tv_sec < kernel_now - 2 || tv.tv_sec > kernel_now + 2) failed("gettimeofday disagrees with time()");
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (b.tv_sec < a.tv_sec || (b.tv_sec == a.tv_sec && b.tv_nsec < a.tv_nsec)) failed("CLOCK_MONOTONIC went backwards");
    stack_t ss;
    sigaltstack(NULL, &ss);
    if (ss.ss_sp != alt_stack || ss.ss_size != alt_size || ss.ss_flags != 0) failed("alternate signal stack changed");
    if (failures[0]) harness_say("VERIFY FAIL %s", failures);
    else harness_say("VERIFY OK pid=%d timerfd=%llu posix=%d", getpid(), (unsigned long long)timerfd_ticks, (int)timer_fires);
}

int main(void) {
    volatile sig_atomic_t *requests = harness_verify_requests();
    alt_stack = malloc(alt_size);
    stack_t ss = { .ss_sp = alt_stack, .ss_size = alt_size, .ss_flags = 0 };
    harness_require(sigaltstack(&ss, NULL) == 0, "sigaltstack");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_timer;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigaction(TIMER_SIG, &sa, NULL);

    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, NULL);
    sfd = signalfd(-1, &usr2, SFD_NONBLOCK | SFD_CLOEXEC);
    efd = eventfd(0, EFD_NONBLOCK);
    held = eventfd(HELD_COUNT, EFD_NONBLOCK);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    harness_require(sfd >= 0 && efd >= 0 && held >= 0 && tfd >= 0, "fds");
    struct itimerspec tspec = { { 0, 10000000 }, { 0, 10000000 } };
    timerfd_settime(tfd, 0, &tspec, NULL);
    wall_tfd = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
    struct timespec wall_now;
    clock_gettime(CLOCK_REALTIME, &wall_now);
    wall_target = wall_now.tv_sec + 3600;
    struct itimerspec wall_spec = { { 0, 0 }, { wall_target, 0 } };
    harness_require(wall_tfd >= 0 && timerfd_settime(wall_tfd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &wall_spec, NULL) == 0, "wall-clock timerfd");
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 1 };
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.u64 = 2;
    ev.events = EPOLLIN | EPOLLET;
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    ev.data.u64 = 3;
    ev.events = EPOLLIN;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);

    signal(SIGTRAP, SIG_IGN);   // wb's single steps are SIGTRAPs: this must stay ignored
    int watched[2];
    harness_require(pipe2(watched, O_NONBLOCK) == 0, "pipe2");
    watched_writer = watched[1];
    watched_twin = dup(watched[0]);
    ev.data.u64 = 4;
    ev.events = EPOLLIN;
    harness_require(epoll_ctl(ep, EPOLL_CTL_ADD, watched[0], &ev) == 0, "epoll_ctl watched pipe");
    close(watched[0]);

    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = TIMER_SIG;
    sev.sigev_value.sival_int = TIMER_VALUE;
    harness_require(timer_create(CLOCK_MONOTONIC, &sev, &posix_timer) == 0, "timer_create");
    struct itimerspec pspec = { { 0, 15000000 }, { 0, 15000000 } };
    timer_settime(posix_timer, 0, &pspec, NULL);
    struct sigevent tev;
    memset(&tev, 0, sizeof tev);
    tev.sigev_notify = SIGEV_THREAD;
    tev.sigev_notify_function = on_thread_timer;
    timer_t thread_timer;
    harness_require(timer_create(CLOCK_MONOTONIC, &tev, &thread_timer) == 0, "timer_create SIGEV_THREAD");
    struct itimerspec thread_spec = { { 0, 10000000 }, { 0, 10000000 } };
    timer_settime(thread_timer, 0, &thread_spec, NULL);

    loop_for(50);
    harness_say("READY pid=%d", getpid());
    for (;;) {
        loop_for(20);
        if (*requests) { (*requests)--; verify(); }
    }
}
