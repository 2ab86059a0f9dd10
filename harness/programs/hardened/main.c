// harness-hardened
//
// Memory hardening a checkpoint must keep: 4 pages of data sealed with mseal (Linux 6.10+:
// the mapping can no longer be unmapped, moved or re-protected), and memory-deny-write-execute
// (PR_SET_MDWE with PR_MDWE_REFUSE_EXEC_GAIN, as systemd's MemoryDenyWriteExecute= sets:
// no mapping may be made writable and executable, or become executable). Prints
// "READY pid=N sealed=0x...". Without mseal or MDWE it prints "UNSUPPORTED <what>" and exits
// 3. Each SIGUSR1 is answered with "VERIFY OK" when the sealed pages hold their data, are
// still sealed (munmap and mprotect fail with EPERM; smaps shows "sl") and MDWE still holds
// (PR_GET_MDWE; a writable-executable mmap and making a page executable fail with EACCES);
// else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif
#ifndef SYS_mseal
#define SYS_mseal 462
#endif

enum { PAGES = 4, PAGE = 4096 };
static char *sealed;
static uint64_t sum;

static void append(char *bad, size_t size, const char *what) {
    strncat(bad, " ", size - strlen(bad) - 1);
    strncat(bad, what, size - strlen(bad) - 1);
}

// The VmFlags line of the mapping at `at` in /proc/self/smaps contains " sl".
static int smaps_sealed(const void *at) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[512], want[32];
    snprintf(want, sizeof want, "%lx-", (unsigned long)at);
    int in = 0, found = 0;
    while (fgets(line, sizeof line, f)) {
        if (strchr(line, '-') && strncmp(line, want, strlen(want)) == 0) in = 1;
        else if (in && strncmp(line, "VmFlags:", 8) == 0) { found = strstr(line, " sl") != NULL; break; }
    }
    fclose(f);
    return found;
}

int main(void) {
    sealed = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    harness_require(sealed != MAP_FAILED, "mmap");
    harness_fill(sealed, PAGES * PAGE, 77);
    sum = harness_checksum(sealed, PAGES * PAGE);
    if (syscall(SYS_mseal, sealed, PAGES * PAGE, 0) != 0) { harness_say("UNSUPPORTED mseal: %s", strerror(errno)); return 3; }
    if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0) { harness_say("UNSUPPORTED PR_SET_MDWE: %s", strerror(errno)); return 3; }
    harness_verify_requests();
    harness_say("READY pid=%d sealed=%p", getpid(), (void *)sealed);
    for (;;) {
        harness_wait_for_request();
        char bad[256] = "";
        if (harness_checksum(sealed, PAGES * PAGE) != sum) append(bad, sizeof bad, "sealed-data");
        if (munmap(sealed, PAGE) == 0 || errno != EPERM) append(bad, sizeof bad, "sealed-munmap");
        if (mprotect(sealed, PAGE, PROT_READ) == 0 || errno != EPERM) append(bad, sizeof bad, "sealed-mprotect");
        if (!smaps_sealed(sealed)) append(bad, sizeof bad, "sealed-smaps");
        if (prctl(PR_GET_MDWE, 0, 0, 0, 0) != PR_MDWE_REFUSE_EXEC_GAIN) append(bad, sizeof bad, "mdwe-flags");
        void *wx = mmap(NULL, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (wx != MAP_FAILED) { append(bad, sizeof bad, "mdwe-wx-mmap"); munmap(wx, PAGE); }
        char *rw = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (rw == MAP_FAILED) append(bad, sizeof bad, "mmap");
        else {
            if (mprotect(rw, PAGE, PROT_READ | PROT_EXEC) == 0 || errno != EACCES) append(bad, sizeof bad, "mdwe-exec-gain");
            munmap(rw, PAGE);
        }
        if (bad[0]) harness_say("VERIFY FAIL%s", bad); else harness_say("VERIFY OK");
    }
}
