// harness-service [--accounts N] [--interval-ms MS]
//
// The demo's "production" program: a small ledger service that moves money between accounts
// in an in-memory table, forever, and prints a status line at every interval:
//
//     service pid=1234 tick=7 transfers=350000 total=100000000 ok
//
// The total never changes while the ledger is healthy. After a checkpoint and restore the
// ticks and transfers continue from where they were, not from zero.
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct account { uint64_t id; int64_t balance; uint64_t transfers; };

struct ledger {
    size_t count;
    struct account *accounts;
    uint64_t transfers;
    uint64_t tick;
    int64_t expected_total;
} ledger;

static int64_t total(void) {
    int64_t t = 0;
    for (size_t i = 0; i < ledger.count; i++) t += ledger.accounts[i].balance;
    return t;
}

static void transfer(size_t from, size_t to, int64_t amount) {
    if (ledger.accounts[from].balance < amount) return;
    ledger.accounts[from].balance -= amount;
    ledger.accounts[to].balance += amount;
    ledger.accounts[from].transfers++;
    ledger.transfers++;
}

int main(int argc, char **argv) {
    size_t accounts = 1 << 20;
    int interval_ms = 500;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--accounts")) accounts = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--interval-ms")) interval_ms = atoi(argv[++i]);
    }
    ledger.count = accounts;
    ledger.accounts = calloc(accounts, sizeof *ledger.accounts);
    harness_require(ledger.accounts != NULL, "calloc");
    for (size_t i = 0; i < accounts; i++) { ledger.accounts[i].id = 1000000 + i; ledger.accounts[i].balance = 100; }
    ledger.expected_total = total();
    uint64_t rng = 7;
    harness_say("READY pid=%d accounts=%zu", getpid(), accounts);
    uint64_t next = harness_now_ns() + (uint64_t)interval_ms * 1000000ULL;
    for (;;) {
        for (int i = 0; i < 1000; i++) {
            uint64_t r = harness_next(&rng);
            transfer(r % accounts, (r >> 24) % accounts, (int64_t)((r >> 48) % 50));
        }
        if (harness_now_ns() >= next) {
            ledger.tick++;
            int64_t t = total();
            harness_say("service pid=%d tick=%llu transfers=%llu total=%lld %s", getpid(),
                        (unsigned long long)ledger.tick, (unsigned long long)ledger.transfers, (long long)t,
                        t == ledger.expected_total ? "ok" : "CORRUPTED");
            next += (uint64_t)interval_ms * 1000000ULL;
            usleep(1000);
        }
    }
}
