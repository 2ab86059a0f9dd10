// harness-threads [N]
//
// N worker threads (default 4) each keep a thread-specific pattern live in AVX registers
// (ymm0-ymm8; with AVX-512 also zmm16-zmm17) across long assembly loops, count rounds in a
// TLS variable, and cache their tid at start. Every round checks that the registers still
// hold their pattern, that the TLS counter matches the shared copy (fs_base intact), that
// gettid() and getpid() still return the cached values, and that glibc's own cached tid
// works (pthread_kill(self, 0)). On SIGUSR1 the main thread waits until every worker has
// made progress and prints "VERIFY OK ..." or "VERIFY FAIL ...".
#define _GNU_SOURCE
#include "harness.h"
#include <cpuid.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAXT 16
#define SPIN 2000000

static int nthreads = 4;
static pid_t cached_pid;
static pid_t tids[MAXT];
static _Atomic uint64_t rounds[MAXT];
static _Atomic int failures;
static char first_failure[256];
static int have_avx512;
static __thread uint64_t tls_rounds;
static __thread pid_t tls_tid;

static void fail(int idx, const char *what) {
    if (atomic_fetch_add(&failures, 1) == 0)
        snprintf(first_failure, sizeof first_failure, "thread %d: %s", idx, what);
}

// Loads a pattern into ymm0-ymm7, spins SPIN times adding ymm7 into ymm8 (the lane
// counters), then stores everything back. If anything changes the registers mid-loop the
// stored values no longer match what the C code expects.
static void avx_round(uint64_t base, uint64_t out[9][4]) {
    uint64_t pattern[8][4], inc[4] = { 1, 1, 1, 1 };
    for (int r = 0; r < 7; r++)
        for (int l = 0; l < 4; l++) pattern[r][l] = base * 0x9E3779B97F4A7C15ULL + (uint64_t)(r * 4 + l);
    memcpy(pattern[7], inc, sizeof inc);
    __asm__ volatile(
        "vmovdqu 0(%[p]), %%ymm0\n vmovdqu 32(%[p]), %%ymm1\n vmovdqu 64(%[p]), %%ymm2\n"
        "vmovdqu 96(%[p]), %%ymm3\n vmovdqu 128(%[p]), %%ymm4\n vmovdqu 160(%[p]), %%ymm5\n"
        "vmovdqu 192(%[p]), %%ymm6\n vmovdqu 224(%[p]), %%ymm7\n vpxor %%ymm8, %%ymm8, %%ymm8\n"
        "mov %[n], %%rcx\n"
        "1: vpaddq %%ymm7, %%ymm8, %%ymm8\n dec %%rcx\n jnz 1b\n"
        "vmovdqu %%ymm0, 0(%[o])\n vmovdqu %%ymm1, 32(%[o])\n vmovdqu %%ymm2, 64(%[o])\n"
        "vmovdqu %%ymm3, 96(%[o])\n vmovdqu %%ymm4, 128(%[o])\n vmovdqu %%ymm5, 160(%[o])\n"
        "vmovdqu %%ymm6, 192(%[o])\n vmovdqu %%ymm7, 224(%[o])\n vmovdqu %%ymm8, 256(%[o])\n"
        "vzeroupper\n"
        :
        : [p] "r"(pattern), [o] "r"(out), [n] "r"((uint64_t)SPIN)
        : "rcx", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8");
    for (int r = 0; r < 8; r++)
        if (memcmp(out[r], pattern[r], 32) != 0) { out[0][0] = ~out[0][0]; return; }
}

// The same with the AVX-512-only registers zmm16/zmm17 (full 512 bits).
__attribute__((target("avx512f")))
static int avx512_round(uint64_t base) {
    uint64_t pattern[8], out[2][8];
    for (int l = 0; l < 8; l++) pattern[l] = base ^ (0xA5A5A5A5ULL << l);
    __asm__ volatile(
        "vmovdqu64 (%[p]), %%zmm16\n vpxorq %%zmm17, %%zmm17, %%zmm17\n"
        "mov %[n], %%rcx\n"
        "1: vpaddq %%zmm16, %%zmm17, %%zmm17\n dec %%rcx\n jnz 1b\n"
        "vmovdqu64 %%zmm16, (%[o])\n vmovdqu64 %%zmm17, 64(%[o])\n"
        :
        : [p] "r"(pattern), [o] "r"(out), [n] "r"((uint64_t)SPIN)
        : "rcx", "memory", "xmm16", "xmm17");
    for (int l = 0; l < 8; l++) {
        if (out[0][l] != pattern[l]) return 0;
        if (out[1][l] != pattern[l] * (uint64_t)SPIN) return 0;
    }
    return 1;
}

static void *worker(void *arg) {
    int idx = (int)(intptr_t)arg;
    tls_tid = (pid_t)syscall(SYS_gettid);
    tids[idx] = tls_tid;
    uint64_t out[9][4];
    for (;;) {
        uint64_t base = (uint64_t)tls_tid * 1000 + tls_rounds;
        avx_round(base, out);
        for (int l = 0; l < 4; l++)
            if (out[8][l] != SPIN) { fail(idx, "ymm8 lane counter lost (AVX state not restored)"); break; }
        if (out[0][0] != base * 0x9E3779B97F4A7C15ULL) fail(idx, "ymm0-ymm7 pattern lost (AVX state not restored)");
        if (have_avx512 && !avx512_round(base)) fail(idx, "zmm16/zmm17 lost (AVX-512 state not restored)");
        if ((pid_t)syscall(SYS_gettid) != tls_tid) fail(idx, "gettid() differs from the cached tid");
        if (getpid() != cached_pid) fail(idx, "getpid() differs from the cached pid");
        int e = pthread_kill(pthread_self(), 0);
        if (e != 0) fail(idx, "pthread_kill(self, 0) failed: glibc's cached tid is stale");
        if (tls_rounds != atomic_load(&rounds[idx])) fail(idx, "TLS counter differs from the shared copy (fs_base?)");
        tls_rounds++;
        atomic_store(&rounds[idx], tls_rounds);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) nthreads = atoi(argv[1]);
    if (nthreads < 1 || nthreads > MAXT) nthreads = 4;
    unsigned a, b, c, d;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) have_avx512 = (b >> 16) & 1;
    cached_pid = getpid();
    volatile sig_atomic_t *requests = harness_verify_requests();
    (void)requests;
    // Workers inherit SIGUSR1 blocked, so the request always wakes the main thread.
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    pthread_t th[MAXT];
    for (int i = 0; i < nthreads; i++)
        harness_require(pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i) == 0, "pthread_create");
    for (int i = 0; i < nthreads; i++)
        while (atomic_load(&rounds[i]) < 2) usleep(1000);
    char line[256] = "";
    for (int i = 0; i < nthreads; i++) {
        char t[16];
        snprintf(t, sizeof t, i ? ",%d" : "%d", tids[i]);
        strcat(line, t);
    }
    harness_say("READY pid=%d threads=%d tids=%s avx512=%d", getpid(), nthreads, line, have_avx512);
    for (;;) {
        harness_wait_for_request();
        uint64_t start[MAXT];
        for (int i = 0; i < nthreads; i++) start[i] = atomic_load(&rounds[i]);
        uint64_t deadline = harness_now_ns() + 20ULL * 1000000000ULL;
        int stuck = -1;
        for (int i = 0; i < nthreads; i++) {
            while (atomic_load(&rounds[i]) < start[i] + 2 && harness_now_ns() < deadline) usleep(2000);
            if (atomic_load(&rounds[i]) < start[i] + 2) stuck = i;
        }
        if (atomic_load(&failures)) harness_say("VERIFY FAIL %s", first_failure);
        else if (stuck >= 0) harness_say("VERIFY FAIL thread %d made no progress", stuck);
        else harness_say("VERIFY OK pid=%d threads=%d tids=%s rounds=%llu", getpid(), nthreads, line,
                         (unsigned long long)atomic_load(&rounds[0]));
    }
}
