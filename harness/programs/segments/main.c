// harness-segments [--child]
//
// System V shared memory as a checkpoint must keep it:
//   - segment A (key 0x57420001, 3 MiB + 100 bytes, mode 0640), attached with one page
//     unmapped in its third MiB (so it shows as two mappings); its second MiB was written
//     by a helper process that detached and exited before "ready" (this process never
//     touched those pages); its first word is a counter
//   - segment B (IPC_PRIVATE, 64 KiB), attached and then marked for removal
//   - a memfd mapped shared (its fd closed), holding a second counter this process adds to
//     at every tick together with one in its private memory: the two must be equal after a
//     restore (the memfd's contents taken at the moment of the checkpoint, not later)
//   - twin memfds with the same contents, one mapped with its fd closed, one mapped and
//     open as an fd, and two empty memfds open as fds: each must stay an object of its own
//     (a write through one must not show in its twin), and the open twin's fd and mapping
//     one object
// The counter grows by 1 every millisecond: this process adds to it, or with --child a
// forked child does (and the parent sees it grow only while the memory is shared).
// Prints "ready a=ID b=ID", then "counter=N" every 20 ms. On SIGUSR1 it checks everything
// and prints "check ok", or "check bad:" and what failed.
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KEY_A 0x57420001
#define SIZE_A ((3 << 20) + 100)
#define MIB (1 << 20)

static volatile sig_atomic_t asked;
static void on_usr1(int sig) { (void)sig; asked = 1; }

static void nap(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static unsigned char pattern(size_t i) { return (unsigned char)(i * 13 % 251); }

static int pattern_ok(const unsigned char *p) {
    for (size_t i = 0; i < MIB; i++) if (p[i] != pattern(i)) return 0;
    return 1;
}

int main(int argc, char **argv) {
    int with_child = argc > 1 && strcmp(argv[1], "--child") == 0;
    int a = shmget(KEY_A, SIZE_A, IPC_CREAT | IPC_EXCL | 0640);
    if (a < 0 && errno == EEXIST) {
        // Left by an earlier run that was killed: start afresh.
        shmctl(shmget(KEY_A, 0, 0), IPC_RMID, NULL);
        a = shmget(KEY_A, SIZE_A, IPC_CREAT | IPC_EXCL | 0640);
    }
    harness_require(a >= 0, "shmget A");
    unsigned char *pa = shmat(a, NULL, 0);
    harness_require(pa != (void *)-1, "shmat A");
    pid_t helper = fork();
    if (helper == 0) {
        unsigned char *h = shmat(a, NULL, 0);
        for (size_t i = 0; i < MIB; i++) h[MIB + i] = pattern(i);
        shmdt(h);
        _exit(0);
    }
    harness_require(waitpid(helper, NULL, 0) == helper, "waiting for the helper");
    harness_require(munmap(pa + 2 * MIB + 4096, 4096) == 0, "munmap a page of A");
    int b = shmget(IPC_PRIVATE, 65536, 0600);
    harness_require(b >= 0, "shmget B");
    char *pb = shmat(b, NULL, 0);
    harness_require(pb != (void *)-1, "shmat B");
    pb[100] = 'b';
    harness_require(shmctl(b, IPC_RMID, NULL) == 0, "removing B");

    int mfd = memfd_create("wb-shared", 0);
    harness_require(mfd >= 0 && ftruncate(mfd, 65536) == 0, "memfd");
    _Atomic long *in_memfd = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    harness_require(in_memfd != MAP_FAILED, "mmap memfd");
    close(mfd);
    static long in_private;

    int twin_fds[2], empty_fds[2];
    char *twins[2];
    for (int i = 0; i < 2; i++) {
        twin_fds[i] = memfd_create("wb-twin", 0);
        harness_require(twin_fds[i] >= 0 && ftruncate(twin_fds[i], 4096) == 0, "twin memfd");
        twins[i] = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, twin_fds[i], 0);
        harness_require(twins[i] != MAP_FAILED, "mmap twin memfd");
        strcpy(twins[i], "twin");
        empty_fds[i] = memfd_create("wb-empty", 0);
        harness_require(empty_fds[i] >= 0, "empty memfd");
    }
    close(twin_fds[0]);

    _Atomic long *counter = (_Atomic long *)pa;
    struct sigaction sa = { 0 };
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    pid_t me = getpid();
    if (with_child && fork() == 0) {
        for (;;) {
            atomic_fetch_add(counter, 1);
            nap(1);
            if (getppid() != me) return 0;
        }
    }
    harness_say("ready a=%d b=%d", a, b);
    for (int tick = 0;; tick++) {
        if (!with_child) atomic_fetch_add(counter, 1);
        atomic_fetch_add(in_memfd, 1);
        in_private++;
        nap(1);
        if (tick % 20 == 0) harness_say("counter=%ld", atomic_load(counter));
        if (!asked) continue;
        asked = 0;
        char bad[256] = "";
        struct shmid_ds ds;
        if (shmctl(a, IPC_STAT, &ds) != 0) {
            strcat(bad, " stat-a");
        } else {
            if (ds.shm_perm.__key != KEY_A) strcat(bad, " key");
            if (ds.shm_segsz != SIZE_A) strcat(bad, " size");
            if ((ds.shm_perm.mode & 0777) != 0640) strcat(bad, " mode");
        }
        if (shmget(KEY_A, 0, 0) != a) strcat(bad, " by-key");
        if (shmctl(b, IPC_STAT, &ds) != 0 || !(ds.shm_perm.mode & SHM_DEST)) strcat(bad, " removed-b");
        if (pb[100] != 'b') strcat(bad, " data-b");
        if (atomic_load(in_memfd) != in_private) strcat(bad, " memfd-torn");
        if (!pattern_ok(pa + MIB)) strcat(bad, " pattern");
        // Twins: a write to one shows in it alone; the open twin's fd writes its mapping.
        if (strcmp(twins[0], "twin") != 0 || strcmp(twins[1], "twin") != 0) strcat(bad, " twin-data");
        twins[0][8] = 1;
        if (twins[1][8] != 0) strcat(bad, " twins-one");
        twins[0][8] = 0;
        if (pwrite(twin_fds[1], "X", 1, 16) != 1 || twins[1][16] != 'X' || twins[0][16] != 0) strcat(bad, " twin-fd");
        twins[1][16] = 0;
        struct stat est;
        if (pwrite(empty_fds[0], "1", 1, 0) != 1 || fstat(empty_fds[1], &est) != 0 || est.st_size != 0) strcat(bad, " empties-one");
        if (ftruncate(empty_fds[0], 0) != 0) strcat(bad, " empty-truncate");
        // Attached again by id: the same memory.
        unsigned char *again = shmat(a, NULL, SHM_RDONLY);
        if (again == (void *)-1) {
            strcat(bad, " attach");
        } else {
            long before = atomic_load(counter);
            if (*(_Atomic long *)again < before || !pattern_ok(again + MIB)) strcat(bad, " shared");
            if (shmdt(again) != 0) strcat(bad, " detach");
        }
        if (bad[0]) harness_say("check bad:%s", bad); else harness_say("check ok");
    }
}
