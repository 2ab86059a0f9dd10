// harness-ledger [--steps S] [--break-at K] [--step-us U] [--accounts N] [--log FILE]
//
// A long job that corrupts its state at an unknown moment and fails much later. It moves
// money between N accounts (default 1000, 1000 each) for S steps (default 4000), U
// microseconds apart (default 250). `ledger.sum` is recomputed after every step and should
// always equal `ledger.expected`; at step K (default: never) a transfer credits without
// debiting, and from then on it does not. At the end the job checks the books and aborts
// if they do not balance. Prints "READY pid=N" at start and "STEP n" every 500 steps; with
// --log, also appends "step n" to FILE every 100 steps (a file it writes as it runs).
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ACCOUNTS 100000

struct ledger {
    long step;
    long expected;
    long sum;
    long accounts_n;
    long accounts[MAX_ACCOUNTS];
} ledger;

static unsigned long long lcg = 88172645463325252ULL;
static unsigned long next(void) {
    lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned long)(lcg >> 33);
}

__attribute__((noinline)) static void transfer(long from, long to, long amount, int faulty) {
    ledger.accounts[to] += amount;
    if (!faulty) ledger.accounts[from] -= amount;
}

__attribute__((noinline)) static long total(void) {
    long s = 0;
    for (long i = 0; i < ledger.accounts_n; i++) s += ledger.accounts[i];
    return s;
}

__attribute__((noinline)) static void audit(void) {
    if (ledger.sum != ledger.expected) {
        fprintf(stderr, "ledger: the books do not balance: %ld != %ld\n", ledger.sum, ledger.expected);
        abort();
    }
}

int main(int argc, char **argv) {
    long steps = 4000, break_at = -1, step_us = 250, n = 1000;
    int log = -1;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--steps")) steps = atol(argv[++i]);
        else if (!strcmp(argv[i], "--break-at")) break_at = atol(argv[++i]);
        else if (!strcmp(argv[i], "--step-us")) step_us = atol(argv[++i]);
        else if (!strcmp(argv[i], "--accounts")) n = atol(argv[++i]);
        else if (!strcmp(argv[i], "--log")) log = open(argv[++i], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    }
    if (n < 2 || n > MAX_ACCOUNTS) n = 1000;
    ledger.accounts_n = n;
    for (long i = 0; i < n; i++) ledger.accounts[i] = 1000;
    ledger.expected = ledger.sum = total();
    harness_say("READY pid=%d", getpid());
    for (ledger.step = 1; ledger.step <= steps; ledger.step++) {
        long from = (long)(next() % (unsigned long)n), to = (long)(next() % (unsigned long)n);
        transfer(from, to, (long)(next() % 50) + 1, ledger.step == break_at);
        ledger.sum = total();
        if (ledger.step % 500 == 0) harness_say("STEP %ld", ledger.step);
        if (log >= 0 && ledger.step % 100 == 0) dprintf(log, "step %ld\n", ledger.step);
        if (step_us > 0) usleep((useconds_t)step_us);
    }
    audit();
    harness_say("DONE steps=%ld", steps);
    return 0;
}
