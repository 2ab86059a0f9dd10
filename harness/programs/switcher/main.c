// harness-switcher PROGRAM ARGS...
//
// Fills 64 MiB of memory, prints "ready", then watches its own /proc/self/smaps and, as soon
// as any mapping is tracked by a userfaultfd write-protection (VmFlags "uw": a checkpoint is
// copying its memory while it runs), runs PROGRAM with exec. Lets a test start another
// program in the middle of a checkpoint.
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int tracked(void) {
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f) return 0;
    char line[512];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " uw")) found = 1;
    }
    fclose(f);
    return found;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: harness-switcher PROGRAM ARGS...\n"); return 2; }
    size_t size = 64 << 20;
    unsigned char *heap = malloc(size);
    harness_require(heap != NULL, "malloc");
    harness_fill(heap, size, 7);
    harness_say("ready sum=%016llx", (unsigned long long)harness_checksum(heap, size));
    struct timespec ts = { 0, 200000 };
    while (!tracked()) nanosleep(&ts, NULL);
    execv(argv[1], argv + 1);
    perror("execv");
    return 1;
}
