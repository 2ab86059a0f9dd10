// harness-cow
//
// A parent and a forked child sharing private memory copy-on-write, as every fork leaves
// them: a 16 MiB region the parent filled before the fork, of which the child has since
// written the first 64 pages (those are its own now); the rest is still one physical page
// per address for both. Prints "READY child=PID". Each SIGUSR1 to the parent is a round:
// the child checks its view of the region and then writes one more page of the shared part
// (copy-on-write must give it its own), the parent checks its own view is untouched, and
// that the pages the child never wrote are still the same physical pages in both
// (/proc/PID/pagemap: needs root to see page frame numbers), and the written ones are not.
// Answers "VERIFY OK", or "VERIFY FAIL <what>". The child exits when the parent is gone.
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define PAGES 4096
#define OWN 64
#define PAGE 4096

static uint8_t *region;

/// The byte the parent wrote at `i`, and the one the child wrote in its own pages.
static uint8_t parents(size_t i) { return (uint8_t)(i * 31 + i / PAGE); }
static uint8_t childs(size_t i) { return (uint8_t)(i * 7 + 3); }

/// The page frame numbers of the region's pages in process `pid` (0 where not present).
static int frames(pid_t pid, uint64_t *out) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/pagemap", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    uint64_t entries[PAGES];
    ssize_t n = pread(fd, entries, sizeof entries, (off_t)((uintptr_t)region / PAGE * 8));
    close(fd);
    if (n != (ssize_t)sizeof entries) return -1;
    for (int i = 0; i < PAGES; i++) out[i] = (entries[i] >> 63) ? (entries[i] & ((1ull << 55) - 1)) : 0;
    return 0;
}

/// The child: round r checks pages [0, OWN) hold its bytes, [OWN, OWN + r) its marks and
/// the rest the parent's, then marks page OWN + r.
static void child(int in, int out) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int r;
    while (read(in, &r, sizeof r) == (ssize_t)sizeof r) {
        char ok = 'Y';
        for (size_t i = 0; i < (size_t)PAGES * PAGE && ok == 'Y'; i++) {
            size_t page = i / PAGE;
            uint8_t want = page < OWN ? childs(i) : page < (size_t)(OWN + r) ? (uint8_t)(0xA0 + page % 64) : parents(i);
            if (region[i] != want) ok = 'N';
        }
        memset(region + (size_t)(OWN + r) * PAGE, 0xA0 + (OWN + r) % 64, PAGE);
        if (write(out, &ok, 1) != 1) break;
    }
    _exit(0);
}

int main(void) {
    region = mmap(NULL, (size_t)PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    harness_require(region != MAP_FAILED, "mmap");
    for (size_t i = 0; i < (size_t)PAGES * PAGE; i++) region[i] = parents(i);
    int down[2], up[2];
    harness_require(pipe(down) == 0 && pipe(up) == 0, "pipe");
    volatile sig_atomic_t *requests = harness_verify_requests();
    (void)requests;
    pid_t pid = fork();
    harness_require(pid >= 0, "fork");
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        for (size_t i = 0; i < (size_t)OWN * PAGE; i++) region[i] = childs(i);
        child(down[0], up[1]);
    }
    close(down[0]);
    close(up[1]);
    harness_say("READY child=%d", (int)pid);
    static uint64_t mine[PAGES], its[PAGES];
    for (int round = 0;; round++) {
        harness_wait_for_request();
        char why[160] = "";
        char answer = 0;
        if (write(down[1], &round, sizeof round) != (ssize_t)sizeof round || read(up[0], &answer, 1) != 1)
            snprintf(why, sizeof why, "the child did not answer");
        else if (answer != 'Y')
            snprintf(why, sizeof why, "the child's view of the region is wrong");
        for (size_t i = 0; i < (size_t)PAGES * PAGE && !why[0]; i++)
            if (region[i] != parents(i)) snprintf(why, sizeof why, "the parent's byte %zu changed", i);
        if (!why[0] && (frames(getpid(), mine) < 0 || frames(pid, its) < 0))
            snprintf(why, sizeof why, "pagemap unreadable");
        int written = OWN + round + 1, shared = 0, apart = 0;
        for (int p = 0; p < PAGES && !why[0]; p++) {
            if (!mine[p] || !its[p]) { snprintf(why, sizeof why, "page %d is not present", p); break; }
            if (p < written && mine[p] == its[p]) apart++;
            if (p >= written && mine[p] == its[p]) shared++;
        }
        if (!why[0] && apart) snprintf(why, sizeof why, "%d pages the child wrote are the parent's", apart);
        if (!why[0] && shared != PAGES - written)
            snprintf(why, sizeof why, "only %d of %d pages are shared copy-on-write", shared, PAGES - written);
        harness_say(why[0] ? "VERIFY FAIL %s" : "VERIFY OK", why);
    }
}
