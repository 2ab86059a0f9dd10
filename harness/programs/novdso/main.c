// harness-novdso
//
// A process without a vdso: it unmaps its [vdso] and [vvar*] mappings (as sandboxes and some
// runtimes do), prints "READY pid=N", and answers each SIGUSR1 with "VERIFY OK" when it still
// has none and its clock calls (now real system calls) work, else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

static int has_vdso(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    while (f && fgets(line, sizeof line, f)) if (strstr(line, "[vdso]") || strstr(line, "[vvar")) found = 1;
    if (f) fclose(f);
    return found;
}

int main(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long ranges[8][2];
    int n = 0;
    while (f && n < 8 && fgets(line, sizeof line, f)) {
        if (strstr(line, "[vdso]") || strstr(line, "[vvar")) {
            harness_require(sscanf(line, "%lx-%lx", &ranges[n][0], &ranges[n][1]) == 2, "maps");
            n++;
        }
    }
    if (f) fclose(f);
    // glibc finds no vdso functions after this only if it never looked them up: it has, at
    // start-up, so its clock calls would jump into the unmapped vdso. Use the system call.
    for (int i = 0; i < n; i++) harness_require(munmap((void *)ranges[i][0], ranges[i][1] - ranges[i][0]) == 0, "munmap");
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        struct timespec ts;
        if (has_vdso()) harness_say("VERIFY FAIL a vdso is mapped");
        else if (syscall(228 /* clock_gettime */, CLOCK_MONOTONIC, &ts) != 0) harness_say("VERIFY FAIL clock_gettime");
        else harness_say("VERIFY OK");
    }
}
