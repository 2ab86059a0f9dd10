// harness-holder KIND
//
// Holds one kernel object wb cannot restore yet (KIND: socket, inotify, child),
// prints "READY pid=N fd=F", and answers each SIGUSR1 with
// "ALIVE n" so a test can see it still runs normally after wb refused to checkpoint it.
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: harness-holder socket|inotify|child\n"); return 2; }
    int fd = -1;
    if (!strcmp(argv[1], "socket")) fd = socket(AF_INET, SOCK_STREAM, 0);
    else if (!strcmp(argv[1], "inotify")) fd = inotify_init1(0);
    else if (!strcmp(argv[1], "child")) {
        pid_t c = fork();
        if (c == 0) { for (;;) pause(); }
        fd = (int)c;
    }
    harness_require(fd >= 0, argv[1]);
    harness_verify_requests();
    harness_say("READY pid=%d fd=%d", getpid(), fd);
    for (int n = 1;; n++) {
        harness_wait_for_request();
        harness_say("ALIVE %d", n);
    }
}
