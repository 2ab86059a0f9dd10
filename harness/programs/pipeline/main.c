// harness-pipeline produce | harness-pipeline filter | harness-pipeline consume
//
// The three stages of a shell pipeline whose data must keep flowing, unchanged, across a
// checkpoint of the whole tree (sh and its three children) and a restore:
//   produce  writes "N\n" for N = 1, 2, 3, ... one line every 2 ms
//   filter   turns each line into "N H\n", H a hash of N
//   consume  checks every line follows the last one with the right hash, and prints
//            "ok N" every 100 lines, or "ERROR ..." and exits 1
// Each stage ends when its parent (the shell) is gone, so nothing outlives a test.
#define _GNU_SOURCE
#include "harness.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t hash(uint64_t n) { return (n * 0x9E3779B97F4A7C15ULL) >> 40; }

static pid_t parent;
static void check_parent(void) { if (getppid() != parent) exit(0); }

int main(int argc, char **argv) {
    harness_require(argc >= 2, "usage: harness-pipeline produce|filter|consume");
    parent = getppid();
    setvbuf(stdout, NULL, _IOLBF, 0);
    char line[256];
    if (strcmp(argv[1], "produce") == 0) {
        struct timespec ts = { 0, 2 * 1000 * 1000 };
        for (uint64_t n = 1;; n++) {
            printf("%" PRIu64 "\n", n);
            nanosleep(&ts, NULL);
            if (n % 64 == 0) check_parent();
        }
    }
    if (strcmp(argv[1], "filter") == 0) {
        while (fgets(line, sizeof line, stdin)) {
            uint64_t n = strtoull(line, NULL, 10);
            printf("%" PRIu64 " %" PRIu64 "\n", n, hash(n));
            if (n % 64 == 0) check_parent();
        }
        return 0;
    }
    if (strcmp(argv[1], "consume") == 0) {
        uint64_t last = 0;
        while (fgets(line, sizeof line, stdin)) {
            uint64_t n = 0, h = 0;
            if (sscanf(line, "%" SCNu64 " %" SCNu64, &n, &h) != 2 || n != last + 1 || h != hash(n)) {
                printf("ERROR after %" PRIu64 ": got '%.40s'\n", last, line);
                return 1;
            }
            last = n;
            if (n % 100 == 0) { printf("ok %" PRIu64 "\n", n); check_parent(); }
        }
        return 0;
    }
    harness_require(0, "unknown stage");
    return 2;
}
