// harness-holder KIND
//
// Holds one kernel object wb cannot restore yet (KIND: socket, epoll, inotify, eventfd,
// child, posix-timer), prints "READY pid=N fd=F", and answers each SIGUSR1 with
// "ALIVE n" so a test can see it still runs normally after wb refused to checkpoint it.
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: harness-holder socket|epoll|inotify|eventfd|child|posix-timer\n"); return 2; }
    int fd = -1;
    if (!strcmp(argv[1], "socket")) fd = socket(AF_INET, SOCK_STREAM, 0);
    else if (!strcmp(argv[1], "epoll")) fd = epoll_create1(0);
    else if (!strcmp(argv[1], "inotify")) fd = inotify_init1(0);
    else if (!strcmp(argv[1], "eventfd")) fd = eventfd(0, 0);
    else if (!strcmp(argv[1], "child")) {
        pid_t c = fork();
        if (c == 0) { for (;;) pause(); }
        fd = (int)c;
    } else if (!strcmp(argv[1], "posix-timer")) {
        timer_t t;
        harness_require(timer_create(CLOCK_MONOTONIC, NULL, &t) == 0, "timer_create");
        fd = 0;
    }
    harness_require(fd >= 0, argv[1]);
    harness_verify_requests();
    harness_say("READY pid=%d fd=%d", getpid(), fd);
    for (int n = 1;; n++) {
        harness_wait_for_request();
        harness_say("ALIVE %d", n);
    }
}
