// harness-heap MIB [--busy [--rate MB_PER_S]] [--seed N]
//
// Fills MIB mebibytes of anonymous memory with pseudo-random data. On SIGUSR1 it verifies
// the memory against checksums it keeps and prints "VERIFY OK ..." or "VERIFY FAIL ...".
// Idle by default (blocked in sigsuspend); with --busy it rewrites random 64 KiB blocks
// continuously (as fast as it can, or at --rate megabytes per second), updating each block's
// checksum, and records the longest gap between two iterations of its loop (the pause a
// checkpoint imposes, as the workload sees it). Every eighth block it gives back to the
// kernel instead (MADV_DONTNEED: the block reads as zeros afterwards), so checkpoints see
// memory disappear too.
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BLOCK (64 * 1024)

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: harness-heap MIB [--busy] [--seed N]\n"); return 2; }
    size_t mib = strtoull(argv[1], NULL, 10);
    int busy = 0;
    uint64_t seed = 42;
    double rate = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--busy")) busy = 1;
        else if (!strcmp(argv[i], "--rate") && i + 1 < argc) rate = atof(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
    }
    size_t size = mib << 20, blocks = size / BLOCK;
    uint8_t *heap = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    harness_require(heap != MAP_FAILED, "mmap");
    uint64_t *sums = calloc(blocks, sizeof *sums);
    uint64_t *gens = calloc(blocks, sizeof *gens);
    for (size_t b = 0; b < blocks; b++) {
        harness_fill(heap + b * BLOCK, BLOCK, seed * 1000003 + b);
        sums[b] = harness_checksum(heap + b * BLOCK, BLOCK);
    }
    volatile sig_atomic_t *requests = harness_verify_requests();
    uint64_t total = harness_checksum(heap, size);
    uint8_t *zeros = calloc(1, BLOCK);
    uint64_t zero_sum = harness_checksum(zeros, BLOCK);
    harness_say("READY pid=%d mib=%zu sum=%016llx", getpid(), mib, (unsigned long long)total);

    uint64_t rng = seed | 1, iterations = 0, max_gap = 0, max_gap_at = 0, last = harness_now_ns();
    // With a rate, block writes are spread out in time; between them the loop still ticks.
    uint64_t block_ns = rate > 0 ? (uint64_t)(BLOCK / (rate * 1e6) * 1e9) : 0, next_write = last;
    for (;;) {
        if (!busy) {
            harness_wait_for_request();
        } else {
            if (*requests == 0) {
                if (block_ns) {
                    uint64_t now = harness_now_ns();
                    if (now - last > max_gap) { max_gap = now - last; max_gap_at = last; }
                    last = now;
                    if (now < next_write) continue;
                    next_write += block_ns;
                    if (next_write < now - 100000000ULL) next_write = now;
                }
                size_t b = harness_next(&rng) % blocks;
                gens[b]++;
                if (gens[b] % 8 == 0) {
                    madvise(heap + b * BLOCK, BLOCK, MADV_DONTNEED);
                    sums[b] = zero_sum;
                } else {
                    harness_fill(heap + b * BLOCK, BLOCK, (seed * 1000003 + b) ^ (gens[b] << 32));
                    sums[b] = harness_checksum(heap + b * BLOCK, BLOCK);
                }
                iterations++;
                uint64_t now = harness_now_ns();
                if (now - last > max_gap) { max_gap = now - last; max_gap_at = last; }
                last = now;
                continue;
            }
            (*requests)--;
        }
        size_t bad = 0;
        for (size_t b = 0; b < blocks; b++) {
            uint64_t expect = harness_checksum(heap + b * BLOCK, BLOCK);
            if (expect != sums[b]) bad++;
            // Regenerate from the seed too: catches a table and memory both wrong alike.
            if (!busy && gens[b] == 0) {
                uint64_t s = (seed * 1000003 + b) | 1;
                uint64_t *w = (uint64_t *)(heap + b * BLOCK);
                if (w[0] != harness_next(&s)) bad++;
            }
        }
        uint64_t now = harness_now_ns();
        if (bad) harness_say("VERIFY FAIL bad_blocks=%zu of %zu", bad, blocks);
        else harness_say("VERIFY OK pid=%d mib=%zu sum=%016llx iterations=%llu max_gap_us=%llu max_gap_at=%llu", getpid(), mib,
                         (unsigned long long)harness_checksum(heap, size), (unsigned long long)iterations,
                         (unsigned long long)(max_gap / 1000), (unsigned long long)max_gap_at);
        max_gap = 0;
        last = harness_now_ns();
        (void)now;
    }
}
