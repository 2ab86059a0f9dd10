// harness-clocks
//
// Timestamps of CLOCK_MONOTONIC and CLOCK_BOOTTIME a program keeps (deadlines, timeouts)
// stay meaningful only if the clocks go on from where they were. Reads both at start, and a
// thread sleeps in clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) until 1.5 s after start,
// then prints "WOKE monotonic=S" (seconds since start when it woke). Prints "READY pid=N".
// Each SIGUSR1 is answered with "VERIFY OK monotonic=S boottime=S" (seconds since start)
// when both have advanced by less than LIMIT seconds (the first argument, default 2) and not
// gone backwards; else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static struct timespec start_mono, start_boot;

static double since(clockid_t clock, const struct timespec *start) {
    struct timespec now;
    clock_gettime(clock, &now);
    return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

static void *sleeper(void *arg) {
    (void)arg;
    struct timespec deadline = start_mono;
    deadline.tv_nsec += 500000000;
    deadline.tv_sec += 1 + deadline.tv_nsec / 1000000000;
    deadline.tv_nsec %= 1000000000;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) != 0) {}
    harness_say("WOKE monotonic=%.3f", since(CLOCK_MONOTONIC, &start_mono));
    return NULL;
}

int main(int argc, char **argv) {
    double limit = argc > 1 ? atof(argv[1]) : 2.0;
    clock_gettime(CLOCK_MONOTONIC, &start_mono);
    clock_gettime(CLOCK_BOOTTIME, &start_boot);
    pthread_t t;
    harness_require(pthread_create(&t, NULL, sleeper, NULL) == 0, "pthread_create");
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        double mono = since(CLOCK_MONOTONIC, &start_mono), boot = since(CLOCK_BOOTTIME, &start_boot);
        if (mono < 0 || boot < 0 || mono > limit || boot > limit) harness_say("VERIFY FAIL clock-jump monotonic=%.3f boottime=%.3f", mono, boot);
        else harness_say("VERIFY OK monotonic=%.3f boottime=%.3f", mono, boot);
    }
}
