// harness-fifo DIR
//
// Holds a FIFO whose name is gone: it makes DIR/fifo, opens it for reading and writing on one
// fd and read-only non-blocking on another, writes "queued-before" into it and unlinks the name,
// then prints "READY pid=N". Each SIGUSR1 (a request) is answered with "VERIFY OK" when the
// first fd reads back the queued bytes, the second fd is still non-blocking and read-only, and
// bytes written through the first come out of the second; else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    harness_require(argc == 2, "usage: harness-fifo DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/fifo", argv[1]);
    harness_require(mkfifo(path, 0640) == 0, "mkfifo");
    int both = open(path, O_RDWR);
    int reader = open(path, O_RDONLY | O_NONBLOCK);
    harness_require(both >= 0 && reader >= 0, "open fifo");
    const char *queued = "queued-before";
    harness_require(write(both, queued, strlen(queued)) == (ssize_t)strlen(queued), "write");
    harness_require(unlink(path) == 0, "unlink");
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        char failures[512] = "", buf[64] = "";
        ssize_t n = read(both, buf, strlen(queued));
        if (n != (ssize_t)strlen(queued) || memcmp(buf, queued, (size_t)n) != 0) strcat(failures, " queued-bytes");
        int fl = fcntl(reader, F_GETFL);
        if (!(fl & O_NONBLOCK) || (fl & O_ACCMODE) != O_RDONLY) strcat(failures, " reader-flags");
        if (write(both, "again", 5) != 5) strcat(failures, " write");
        memset(buf, 0, sizeof buf);
        if (read(reader, buf, sizeof buf) != 5 || memcmp(buf, "again", 5) != 0) strcat(failures, " one-fifo");
        // Put the queued bytes back for the next round.
        if (write(both, queued, strlen(queued)) != (ssize_t)strlen(queued)) strcat(failures, " refill");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
