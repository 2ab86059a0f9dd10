// harness-hugetlb
//
// Holds two mappings of 2 MiB huge pages from the hugetlb pool (MAP_HUGETLB): one private,
// one shared, each filled with its own pattern (the caller makes sure
// /proc/sys/vm/nr_hugepages has two free). Prints "READY pid=N"; each SIGUSR1 is answered
// with "VERIFY OK" when both still hold their bytes and are of 2 MiB pages (smaps'
// KernelPageSize), else "VERIFY FAIL <what>" ("bytes", "huge-pages").
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SIZE (2UL << 20)

/// The KernelPageSize (kB) smaps shows for the mapping at `at`.
static long page_kb(void *at) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int inside = 0;
    long kb = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long start;
        if (sscanf(line, "%lx-", &start) == 1 && strchr(line, '-') && strchr(line, ' ') < strchr(line, '\n') && line[0] != 'K') inside = start == (unsigned long)at;
        if (inside && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1) break;
    }
    fclose(f);
    return kb;
}

static int holds(const unsigned char *p, uint64_t seed) {
    for (size_t i = 0; i < SIZE; i += 4096) if (p[i] != (unsigned char)(seed + i / 4096) || p[i + 17] != 0x5a) return 0;
    return 1;
}

static void fill(unsigned char *p, uint64_t seed) {
    for (size_t i = 0; i < SIZE; i += 4096) { p[i] = (unsigned char)(seed + i / 4096); p[i + 17] = 0x5a; }
}

int main(void) {
    unsigned char *priv = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    unsigned char *shared = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    harness_require(priv != MAP_FAILED && shared != MAP_FAILED, "mmap MAP_HUGETLB (needs free huge pages)");
    fill(priv, 3);
    fill(shared, 101);
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        char failures[128] = "";
        if (!holds(priv, 3) || !holds(shared, 101)) strcat(failures, " bytes");
        if (page_kb(priv) != 2048 || page_kb(shared) != 2048) strcat(failures, " huge-pages");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
