// harness-aio DIR
//
// Holds two kernel aio contexts (io_setup 16 and 300 events, rings of different sizes) on
// DIR/data, and a thread blocked in io_getevents on the second. Prints "READY pid=N"; each
// SIGUSR1 writes a block through the first context and reaps it, then reads it back through
// the second, whose completion the waiting thread reaps and hands over a pipe; answers
// "VERIFY OK" when every request completed with the right result and bytes, else
// "VERIFY FAIL <what>". With --unreaped, a write through the first context completes and
// is left unreaped before READY (a checkpoint must refuse that).
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static aio_context_t first, second;
static int handoff[2];

static void *waiter(void *arg) {
    (void)arg;
    for (;;) {
        struct io_event e;
        long n = syscall(SYS_io_getevents, second, 1, 1, &e, NULL);
        if (n == 1) {
            long long res = e.res;
            if (write(handoff[1], &res, sizeof res) != (ssize_t)sizeof res) return NULL;
        }
    }
}

static long submit(aio_context_t ctx, int fd, int op, void *buf, size_t len, long long at) {
    struct iocb cb;
    memset(&cb, 0, sizeof cb);
    cb.aio_fildes = (unsigned)fd;
    cb.aio_lio_opcode = (unsigned short)op;
    cb.aio_buf = (unsigned long)buf;
    cb.aio_nbytes = len;
    cb.aio_offset = at;
    struct iocb *list[1] = { &cb };
    return syscall(SYS_io_submit, ctx, 1, list);
}

int main(int argc, char **argv) {
    harness_require(argc == 2 || argc == 3, "usage: harness-aio DIR [--unreaped]");
    char path[4096];
    snprintf(path, sizeof path, "%s/data", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    harness_require(fd >= 0, "open");
    harness_require(syscall(SYS_io_setup, 16, &first) == 0 && syscall(SYS_io_setup, 300, &second) == 0, "io_setup");
    harness_require(pipe(handoff) == 0, "pipe");
    // One round before the checkpoint: the rings' head and tail have moved.
    char block[512];
    memset(block, 'w', sizeof block);
    struct io_event e;
    harness_require(submit(first, fd, IOCB_CMD_PWRITE, block, sizeof block, 0) == 1, "submit");
    harness_require(syscall(SYS_io_getevents, first, 1, 1, &e, NULL) == 1 && e.res == (long long)sizeof block, "reap");
    pthread_t t;
    harness_require(pthread_create(&t, NULL, waiter, NULL) == 0, "thread");
    if (argc == 3) {
        harness_require(submit(first, fd, IOCB_CMD_PWRITE, block, sizeof block, 0) == 1, "submit");
        usleep(100000);
    }
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (int round = 1;; round++) {
        harness_wait_for_request();
        char failures[256] = "";
        char want[512], got[512];
        memset(want, 'a' + round % 26, sizeof want);
        memset(got, 0, sizeof got);
        if (submit(first, fd, IOCB_CMD_PWRITE, want, sizeof want, 512LL * round) != 1) strcat(failures, " submit-write");
        else if (syscall(SYS_io_getevents, first, 1, 1, &e, NULL) != 1 || e.res != (long long)sizeof want) strcat(failures, " reap-write");
        if (submit(second, fd, IOCB_CMD_PREAD, got, sizeof got, 512LL * round) != 1) strcat(failures, " submit-read");
        else {
            long long res = -1;
            if (read(handoff[0], &res, sizeof res) != (ssize_t)sizeof res || res != (long long)sizeof got) strcat(failures, " reap-read");
            else if (memcmp(want, got, sizeof got) != 0) strcat(failures, " bytes");
        }
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
