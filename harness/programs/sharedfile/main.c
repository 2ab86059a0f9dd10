// harness-sharedfile DIR
//
// A small file mapped shared and then closed, as a JVM maps its perf data file: DIR/stats
// (16 KiB) is filled with a pattern through the mapping. Prints "READY pid=N". Each SIGUSR1
// is answered with "VERIFY OK" when the mapping holds the pattern and takes a write (a
// counter in its last bytes, checked and put back); else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { SIZE = 16384, BODY = SIZE - 8 };

int main(int argc, char **argv) {
    harness_require(argc == 2, "usage: harness-sharedfile DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/stats", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    harness_require(fd >= 0 && ftruncate(fd, SIZE) == 0, "stats file");
    unsigned char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    harness_require(m != MAP_FAILED, "mmap");
    close(fd);
    harness_fill(m, BODY, 99);
    uint64_t sum = harness_checksum(m, BODY);
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        char bad[128] = "";
        if (harness_checksum(m, BODY) != sum) strcat(bad, " data");
        uint64_t *counter = (uint64_t *)(m + BODY), before = *counter;
        *counter = before + 1;
        if (*counter != before + 1) strcat(bad, " write");
        if (bad[0]) harness_say("VERIFY FAIL%s", bad); else harness_say("VERIFY OK count=%llu", (unsigned long long)*counter);
    }
}
