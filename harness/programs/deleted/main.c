// harness-deleted DIR
//
// Holds files whose names are gone, with the attributes a restore must keep: a memfd of 8 KiB
// with mode 0642 and the seals F_SEAL_SHRINK|F_SEAL_GROW, read to its end (its offset is its
// size); and a deleted 64 MiB sparse file in DIR with one page of data at 1 MiB, mode 0604,
// modification time 1000000 s, its offset past the data. Prints "READY pid=N"; each SIGUSR1 is
// answered with "VERIFY OK" when all of that still holds, else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SPARSE_SIZE (64L << 20)
#define DATA_AT (1L << 20)

int main(int argc, char **argv) {
    harness_require(argc == 2, "usage: harness-deleted DIR");
    int m = memfd_create("pool", MFD_ALLOW_SEALING);
    harness_require(m >= 0, "memfd_create");
    char block[8192];
    memset(block, 'm', sizeof block);
    harness_require(write(m, block, sizeof block) == (ssize_t)sizeof block, "write memfd");
    harness_require(fchmod(m, 0642) == 0 && fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0, "seal");
    char path[4096];
    snprintf(path, sizeof path, "%s/sparse", argv[1]);
    int s = open(path, O_RDWR | O_CREAT | O_TRUNC, 0604);
    harness_require(s >= 0 && fchmod(s, 0604) == 0 && ftruncate(s, SPARSE_SIZE) == 0, "sparse file");
    harness_require(pwrite(s, "data", 4, DATA_AT) == 4 && lseek(s, DATA_AT + 4, SEEK_SET) == DATA_AT + 4, "sparse data");
    struct timespec times[2] = { { 0, UTIME_OMIT }, { 1000000, 0 } };
    harness_require(futimens(s, times) == 0 && unlink(path) == 0, "mtime, unlink");
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        char failures[512] = "", buf[8] = "";
        struct stat st;
        if (fstat(m, &st) != 0 || (st.st_mode & 07777) != 0642) strcat(failures, " memfd-mode");
        if (st.st_size != 8192 || lseek(m, 0, SEEK_CUR) != 8192) strcat(failures, " memfd-size-or-offset");
        if (fcntl(m, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW)) strcat(failures, " memfd-seals");
        if (pread(m, buf, 4, 4000) != 4 || memcmp(buf, "mmmm", 4) != 0) strcat(failures, " memfd-bytes");
        if (fstat(s, &st) != 0 || (st.st_mode & 07777) != 0604 || st.st_size != SPARSE_SIZE) strcat(failures, " sparse-mode-or-size");
        if (st.st_mtim.tv_sec != 1000000) strcat(failures, " sparse-mtime");
        if (st.st_blocks > 64) strcat(failures, " sparse-holes-filled");
        if (lseek(s, 0, SEEK_CUR) != DATA_AT + 4) strcat(failures, " sparse-offset");
        if (lseek(s, 0, SEEK_DATA) != DATA_AT) strcat(failures, " sparse-seek-data");
        lseek(s, DATA_AT + 4, SEEK_SET);
        if (pread(s, buf, 4, DATA_AT) != 4 || memcmp(buf, "data", 4) != 0) strcat(failures, " sparse-bytes");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
