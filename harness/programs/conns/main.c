// harness-conns serve
// harness-conns client PORT N
//
// A server holding many established TCP connections, and the client that opens them, for the
// sockets benchmark. The server listens on 127.0.0.1 (a port the kernel picks), prints
// "READY pid=N port=P", and echoes back whatever arrives on any connection (epoll). The
// client opens N connections to PORT, prints "CONNECTED N", and on each SIGUSR1 sends one
// byte on every connection and waits for every echo: "ECHO OK N", or "ECHO FAIL k" with the
// number that did not answer within 30 s.
#define _GNU_SOURCE
#include "harness.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static void raise_fd_limit(void) {
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
}

static int serve(void) {
    raise_fd_limit();
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    harness_require(bind(l, (struct sockaddr *)&a, al) == 0 && listen(l, 4096) == 0, "listen");
    getsockname(l, (struct sockaddr *)&a, &al);
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = l };
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    harness_say("READY pid=%d port=%d", getpid(), ntohs(a.sin_port));
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == l) {
                int c = accept(l, NULL, NULL);
                if (c < 0) continue;
                struct epoll_event ce = { .events = EPOLLIN, .data.fd = c };
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                continue;
            }
            char buf[256];
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r <= 0) { close(fd); continue; }
            if (send(fd, buf, (size_t)r, MSG_NOSIGNAL) != r) close(fd);
        }
    }
}

static int client(int port, int count) {
    raise_fd_limit();
    int *fds = calloc((size_t)count, sizeof *fds);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    for (int i = 0; i < count; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        harness_require(fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&a, sizeof a) == 0, "connect");
    }
    harness_verify_requests();
    harness_say("CONNECTED %d", count);
    for (;;) {
        harness_wait_for_request();
        for (int i = 0; i < count; i++) harness_require(send(fds[i], "x", 1, MSG_NOSIGNAL) == 1, "send");
        int missing = count;
        char *got = calloc((size_t)count, 1);
        uint64_t deadline = harness_now_ns() + 30000000000ULL;
        while (missing > 0 && harness_now_ns() < deadline) {
            for (int i = 0; i < count; i++) {
                if (got[i]) continue;
                char c;
                if (recv(fds[i], &c, 1, MSG_DONTWAIT) == 1) { got[i] = 1; missing--; }
            }
            if (missing > 0) usleep(1000);
        }
        free(got);
        if (missing) harness_say("ECHO FAIL %d", missing);
        else harness_say("ECHO OK %d", count);
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "serve")) return serve();
    if (argc >= 4 && !strcmp(argv[1], "client")) return client(atoi(argv[2]), atoi(argv[3]));
    fprintf(stderr, "usage: harness-conns serve | client PORT N\n");
    return 2;
}
