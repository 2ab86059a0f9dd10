// harness-dispatch
//
// A thread with syscall user dispatch on (PR_SET_SYSCALL_USER_DISPATCH, as Wine runs Windows
// code): it spins with its selector on "block", where any system call it made would raise
// SIGSYS, and makes none. Prints "READY". Each SIGUSR1 to the process is a check: the thread
// makes one system call on "block" and must get exactly one SIGSYS for it (dispatch still
// on), and no other SIGSYS may have come (a system call injected into the thread by a
// debugger or checkpointer while the selector said "block" would raise one). Answers
// "VERIFY OK", or "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#endif
#define DISPATCH_ON 1
#define ALLOW 0
#define BLOCK 1

static volatile char selector = ALLOW;
static atomic_int sigsys;
static atomic_int asked, answered;

static void on_sigsys(int sig, siginfo_t *info, void *context) {
    (void)sig; (void)info; (void)context;
    atomic_fetch_add(&sigsys, 1);
    selector = ALLOW;   // the handler's return is a system call too
}

static void *spinner(void *unused) {
    (void)unused;
    harness_require(prctl(PR_SET_SYSCALL_USER_DISPATCH, DISPATCH_ON, 0, 0, &selector) == 0, "PR_SET_SYSCALL_USER_DISPATCH");
    for (;;) {
        selector = BLOCK;
        while (atomic_load(&asked) == abs(atomic_load(&answered))) __builtin_ia32_pause();
        // A check: one system call on "block".
        int before = atomic_load(&sigsys);
        syscall(SYS_getppid);
        selector = ALLOW;
        atomic_store(&answered, atomic_load(&sigsys) == before + 1 ? atomic_load(&asked) : -atomic_load(&asked));
    }
    return NULL;
}

int main(void) {
    struct sigaction sa = { 0 };
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSYS, &sa, NULL);
    harness_verify_requests();
    pthread_t t;
    harness_require(pthread_create(&t, NULL, spinner, NULL) == 0, "pthread_create");
    harness_say("READY");
    for (int round = 1;; round++) {
        harness_wait_for_request();
        int extra = atomic_load(&sigsys) - (round - 1);
        atomic_store(&asked, round);
        while (atomic_load(&answered) != round && atomic_load(&answered) != -round) usleep(1000);
        if (extra != 0) harness_say("VERIFY FAIL %d SIGSYS the thread did not ask for", extra);
        else if (atomic_load(&answered) != round) harness_say("VERIFY FAIL a system call on block raised no SIGSYS: dispatch is off");
        else harness_say("VERIFY OK");
    }
}
