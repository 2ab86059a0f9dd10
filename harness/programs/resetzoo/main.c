// harness-resetzoo: a fuzzing target whose every run undoes the state it was snapshotted
// with — it unmaps memory, shrinks its heap, changes a protection, maps over a region,
// discards pages, takes a guard page away and puts one on another page (MADV_GUARD_REMOVE and
// MADV_GUARD_INSTALL, Linux 6.13+), overwrites pages of 80 MiB it holds with a pattern (large
// enough for wb to keep in huge pages), closes and replaces fds and moves a file's position —
// and checks at the start of each run that all of it is back. Probing a guard page catches
// the SIGSEGV with a handler of its own (harness_faults), as a program that probes memory
// does. A run that finds something missing crashes in a function named
// for it, so a reset that forgets anything shows as a crash bucket. The input "h" hangs
// with signals queued but blocked (one for the thread, one for the process): the snapshot
// does not block them, so a reset that keeps them would kill the next run.
//
//   harness-resetzoo FILE    (FILE: a scratch file it writes "0123456789" to)
//   prints READY, then reads stdin; each input is one run.
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define REGION (1 << 20)
#define BIG (80 << 20)

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif

static char *region, *readonly, *overlaid, *heap, *discarded, *guarded, *big;
static int file, spare, guards;

__attribute__((noinline)) static void unmapped_memory_lost(void) { abort(); }
__attribute__((noinline)) static void protection_lost(void) { abort(); }
__attribute__((noinline)) static void overlaid_memory_lost(void) { abort(); }
__attribute__((noinline)) static void heap_lost(void) { abort(); }
__attribute__((noinline)) static void discarded_memory_lost(void) { abort(); }
__attribute__((noinline)) static void file_position_lost(void) { abort(); }
__attribute__((noinline)) static void closed_fd_lost(void) { abort(); }
__attribute__((noinline)) static void replaced_fd_lost(void) { abort(); }
__attribute__((noinline)) static void guard_lost(void) { abort(); }
__attribute__((noinline)) static void large_memory_lost(void) { abort(); }
__attribute__((noinline)) static void guarded_memory_lost(void) { abort(); }

/* The protection of the page at p, from /proc/self/maps ("r--p" ...). */
static int readable_only(const char *p) {
    FILE *m = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    while (m && fgets(line, sizeof line, m)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && (unsigned long)p >= lo && (unsigned long)p < hi) {
            found = strncmp(perms, "r--", 3) == 0;
            break;
        }
    }
    if (m) fclose(m);
    return found;
}

static void check(void) {
    for (size_t i = 0; i < REGION; i += 4096) if (region[i] != 'r') unmapped_memory_lost();
    if (!readable_only(readonly) || readonly[0] != 'o') protection_lost();
    if (overlaid[0] != 'v' || overlaid[8191] != 'v') overlaid_memory_lost();
    for (size_t i = 0; i < 256 * 1024; i += 4096) if (heap[i] != 'h') heap_lost();
    for (size_t i = 0; i < 65536; i += 4096) if (discarded[i] != 'd') discarded_memory_lost();
    if (lseek(file, 0, SEEK_CUR) != 3) file_position_lost();
    char c = 0;
    if (pread(file, &c, 1, 0) != 1 || c != '0') closed_fd_lost();
    if (fcntl(spare, F_GETFD) < 0 || lseek(spare, 0, SEEK_CUR) < 0) replaced_fd_lost();
    for (size_t i = 0; i < BIG; i += 4096) if (big[i] != (char)(i >> 12) || big[i + 4095] != 'b') large_memory_lost();
    if (guards && !harness_faults(guarded)) guard_lost();
    if (guards && (harness_faults(guarded + 4096) || guarded[4096] != 'g')) guarded_memory_lost();
}

static void ruin(void) {
    munmap(region, REGION);
    mprotect(readonly, 4096, PROT_READ | PROT_WRITE);
    readonly[0] = 'x';
    mmap(overlaid, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    sbrk(-(256 * 1024));
    char c;
    if (read(file, &c, 1) != 1) abort();
    close(file);
    int other = open("/dev/null", O_RDONLY);
    dup2(other, spare);
    close(other);
    madvise(discarded, 65536, MADV_DONTNEED);
    for (size_t i = 0; i < BIG; i += (BIG / 7) & ~(size_t)4095) big[i] = 'x', big[i + 4095] = 'y';
    if (guards) {
        madvise(guarded, 4096, MADV_GUARD_REMOVE);
        guarded[0] = 'x';
        madvise(guarded + 4096, 4096, MADV_GUARD_INSTALL);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: harness-resetzoo FILE\n"); return 2; }
    file = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (file < 0 || write(file, "0123456789", 10) != 10) { perror(argv[1]); return 1; }
    lseek(file, 3, SEEK_SET);
    spare = open(argv[1], O_RDONLY);
    region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(region, 'r', REGION);
    readonly = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    readonly[0] = 'o';
    mprotect(readonly, 4096, PROT_READ);
    overlaid = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(overlaid, 'v', 8192);
    discarded = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(discarded, 'd', 65536);
    guarded = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(guarded, 'g', 8192);
    guards = madvise(guarded, 4096, MADV_GUARD_INSTALL) == 0;
    big = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < BIG; i += 4096) memset(big + i, 'b', 4096), big[i] = (char)(i >> 12);
    heap = sbrk(256 * 1024);
    memset(heap, 'h', 256 * 1024);
    printf("READY pid=%d guards=%d\n", getpid(), guards);
    fflush(stdout);
    char buf[256];
    ssize_t n = read(0, buf, sizeof buf);
    check();
    if (n == 1 && buf[0] == 'h') {
        sigset_t queued;
        sigemptyset(&queued);
        sigaddset(&queued, SIGUSR1);
        sigaddset(&queued, SIGUSR2);
        sigprocmask(SIG_BLOCK, &queued, NULL);
        raise(SIGUSR2);
        kill(getpid(), SIGUSR1);
        for (volatile int spin = 0;; spin++) {}
    }
    ruin();
    // The input decides nothing here but the exit status.
    return n > 0 && buf[0] == 'x' ? 3 : 0;
}
