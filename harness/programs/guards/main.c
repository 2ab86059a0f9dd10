// harness-guards
//
// Maps 16 pages of private anonymous memory, fills every page with data of its own, then
// puts guard markers (madvise MADV_GUARD_INSTALL, Linux 6.13+) on pages 0, 5 and 10 and on
// the two pages 13-14, and prints "READY pid=N base=0x... pages=16 guards=0,5,10,13-14".
// Without MADV_GUARD_INSTALL it prints "UNSUPPORTED <errno text>" and exits 3. Each SIGUSR1
// is answered with "VERIFY OK" when every guard page faults on a read (SIGSEGV, caught by
// harness_faults) and every other page reads without a fault and holds its data; else
// "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

enum { PAGES = 16, PAGE = 4096 };
static const int guarded[PAGES] = { [0] = 1, [5] = 1, [10] = 1, [13] = 1, [14] = 1 };
static uint64_t sums[PAGES];
static char *base;
// Whether reading the first byte of `page` faults.
static int faults(int page) { return harness_faults(base + (size_t)page * PAGE); }

int main(void) {
    base = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    harness_require(base != MAP_FAILED, "mmap");
    for (int i = 0; i < PAGES; i++) {
        harness_fill(base + (size_t)i * PAGE, PAGE, 0x6a7561 + (uint64_t)i);
        sums[i] = harness_checksum(base + (size_t)i * PAGE, PAGE);
    }
    // The guard pages held data too: installing the guard drops it.
    for (int i = 0; i < PAGES; i++) {
        if (!guarded[i] || (i > 0 && guarded[i - 1])) continue;
        int n = 1;
        while (i + n < PAGES && guarded[i + n]) n++;
        if (madvise(base + (size_t)i * PAGE, (size_t)n * PAGE, MADV_GUARD_INSTALL) != 0) {
            harness_say("UNSUPPORTED %s", strerror(errno));
            exit(3);
        }
    }
    harness_verify_requests();
    harness_say("READY pid=%d base=%p pages=%d guards=0,5,10,13-14", getpid(), (void *)base, PAGES);
    for (;;) {
        harness_wait_for_request();
        char what[256] = "";
        size_t used = 0;
        for (int i = 0; i < PAGES && used < sizeof what - 40; i++) {
            int f = faults(i);
            if (guarded[i] && !f) used += (size_t)snprintf(what + used, sizeof what - used, " page-%d-readable", i);
            else if (!guarded[i] && f) used += (size_t)snprintf(what + used, sizeof what - used, " page-%d-faults", i);
            else if (!guarded[i] && harness_checksum(base + (size_t)i * PAGE, PAGE) != sums[i])
                used += (size_t)snprintf(what + used, sizeof what - used, " page-%d-data", i);
        }
        if (used == 0) harness_say("VERIFY OK");
        else harness_say("VERIFY FAIL%s", what);
    }
}
