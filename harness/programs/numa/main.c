// harness-numa
//
// NUMA memory policies as a checkpoint must keep them (what `numactl --interleave` or a
// program's own set_mempolicy and mbind leave): the main thread interleaves over node 0, a
// worker thread binds to node 0 (MPOL_F_STATIC_NODES), one mapping prefers node 0 and another
// is bound to it (MPOL_F_RELATIVE_NODES), and a third has no policy of its own. Prints
// "READY pid=N". Each SIGUSR1 is answered with "VERIFY OK" when get_mempolicy tells each
// thread's and each mapping's policy as set (the third mapping none: MPOL_DEFAULT) and the
// mappings hold their data; else "VERIFY FAIL <what>". Without NUMA policies in the kernel
// it prints "UNSUPPORTED" and exits 3.
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MPOL_PREFERRED 1
#define MPOL_BIND 2
#define MPOL_INTERLEAVE 3
#define MPOL_F_STATIC_NODES (1 << 15)
#define MPOL_F_RELATIVE_NODES (1 << 14)
#define MPOL_F_ADDR (1 << 1)
#define MAXNODE 1024

enum { PAGES = 8, PAGE = 4096 };
static char *preferred, *bound, *plain;
static uint64_t sums[3];
static int ask[2], answer[2];

static long get_policy(int *mode, unsigned long *mask, void *addr, unsigned long flags) {
    memset(mask, 0, MAXNODE / 8);
    return syscall(SYS_get_mempolicy, mode, mask, MAXNODE, addr, flags);
}

static int is(int mode, const unsigned long *mask, int want) { return mode == want && mask[0] == 1; }

// The worker answers each byte on `ask` with whether its policy is still its own.
static void *worker(void *arg) {
    (void)arg;
    unsigned long node0 = 1;
    harness_require(syscall(SYS_set_mempolicy, MPOL_BIND | MPOL_F_STATIC_NODES, &node0, 64) == 0, "set_mempolicy(worker)");
    char c;
    while (read(ask[0], &c, 1) == 1) {
        int mode;
        unsigned long mask[MAXNODE / 64];
        char ok = get_policy(&mode, mask, NULL, 0) == 0 && is(mode, mask, MPOL_BIND | MPOL_F_STATIC_NODES);
        if (write(answer[1], &ok, 1) != 1) break;
    }
    return NULL;
}

static char *mapped(uint64_t seed, uint64_t *sum) {
    char *p = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    harness_require(p != MAP_FAILED, "mmap");
    harness_fill(p, PAGES * PAGE, seed);
    *sum = harness_checksum(p, PAGES * PAGE);
    return p;
}

static void append(char *bad, size_t size, const char *what) {
    strncat(bad, " ", size - strlen(bad) - 1);
    strncat(bad, what, size - strlen(bad) - 1);
}

int main(void) {
    int mode;
    unsigned long mask[MAXNODE / 64];
    if (get_policy(&mode, mask, NULL, 0) != 0) { harness_say("UNSUPPORTED get_mempolicy: %s", strerror(errno)); return 3; }
    unsigned long node0 = 1;
    harness_require(syscall(SYS_set_mempolicy, MPOL_INTERLEAVE, &node0, 64) == 0, "set_mempolicy");
    preferred = mapped(1, &sums[0]);
    bound = mapped(2, &sums[1]);
    plain = mapped(3, &sums[2]);
    harness_require(syscall(SYS_mbind, preferred, PAGES * PAGE, MPOL_PREFERRED, &node0, 64, 0) == 0, "mbind(preferred)");
    harness_require(syscall(SYS_mbind, bound, PAGES * PAGE, MPOL_BIND | MPOL_F_RELATIVE_NODES, &node0, 64, 0) == 0, "mbind(bound)");
    harness_require(pipe(ask) == 0 && pipe(answer) == 0, "pipe");
    pthread_t t;
    harness_require(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        char bad[256] = "", ok = 0;
        if (get_policy(&mode, mask, NULL, 0) != 0 || !is(mode, mask, MPOL_INTERLEAVE)) append(bad, sizeof bad, "main-thread");
        if (write(ask[1], "?", 1) != 1 || read(answer[0], &ok, 1) != 1 || !ok) append(bad, sizeof bad, "worker-thread");
        if (get_policy(&mode, mask, preferred, MPOL_F_ADDR) != 0 || !is(mode, mask, MPOL_PREFERRED)) append(bad, sizeof bad, "preferred-mapping");
        if (get_policy(&mode, mask, bound, MPOL_F_ADDR) != 0 || !is(mode, mask, MPOL_BIND | MPOL_F_RELATIVE_NODES)) append(bad, sizeof bad, "bound-mapping");
        if (get_policy(&mode, mask, plain, MPOL_F_ADDR) != 0 || mode != 0) append(bad, sizeof bad, "plain-mapping");
        if (harness_checksum(preferred, PAGES * PAGE) != sums[0] || harness_checksum(bound, PAGES * PAGE) != sums[1]
            || harness_checksum(plain, PAGES * PAGE) != sums[2]) append(bad, sizeof bad, "data");
        if (bad[0]) harness_say("VERIFY FAIL%s", bad); else harness_say("VERIFY OK");
    }
}
