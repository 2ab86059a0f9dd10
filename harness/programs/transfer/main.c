// harness-transfer [MIB]
//
// A parent and its child talk over one TCP connection on loopback, each sending MIB MiB
// (default 64) of its own deterministic byte stream to the other while reading the other's,
// paced at about 64 MiB/s so that a checkpoint taken mid-way finds data in flight both ways
// (in send queues, unacknowledged, and in receive queues). Each checks every byte it receives
// against the stream it expects: a byte lost, duplicated or changed fails it.
// Prints "READY pid=PARENT child=CHILD", then "PROGRESS n" every 8 MiB the parent has
// received, and at the end "DONE side=parent|child ok=0|1 received=N" from each; the parent
// exits 0 when both were ok.
#define _GNU_SOURCE
#include "harness.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/// The byte stream a side sends: 8 bytes at a time from a PRNG seeded by the side.
typedef struct { uint64_t state, word; size_t at; } stream_t;
static uint8_t next_byte(stream_t *s) {
    if (s->at % 8 == 0) s->word = harness_next(&s->state);
    return (uint8_t)(s->word >> (8 * (s->at++ % 8)));
}

static int run(int fd, uint64_t mine, uint64_t theirs, size_t total, int parent) {
    stream_t out = { mine, 0, 0 }, in = { theirs, 0, 0 };
    size_t sent = 0, received = 0, reported = 0;
    int ok = 1;
    static uint8_t buf[256 << 10];
    uint64_t start = harness_now_ns();
    fcntl(fd, F_SETFL, O_NONBLOCK);
    while (sent < total || received < total) {
        // Paced: no further ahead than 64 MiB/s since the start.
        uint64_t allowed = (harness_now_ns() - start) / 1000000ULL * (64ULL << 10);
        struct pollfd p = { .fd = fd, .events = POLLIN | (sent < total && sent < allowed ? POLLOUT : 0) };
        poll(&p, 1, 4);
        if (p.revents & POLLOUT) {
            size_t n = total - sent;
            if (n > sizeof buf) n = sizeof buf;
            if (n > allowed - sent) n = allowed - sent;
            // A chunk not accepted whole is regenerated from where it stopped.
            stream_t save = out;
            for (size_t i = 0; i < n; i++) buf[i] = next_byte(&out);
            ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
            out = save;
            if (w > 0) {
                for (ssize_t i = 0; i < w; i++) next_byte(&out);
                sent += (size_t)w;
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                harness_say("ERROR side=%s send %s", parent ? "parent" : "child", strerror(errno));
                return 0;
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r > 0) {
                for (ssize_t i = 0; i < r; i++) if (buf[i] != next_byte(&in)) ok = 0;
                received += (size_t)r;
                if (parent && received / (8 << 20) > reported) {
                    reported = received / (8 << 20);
                    harness_say("PROGRESS %zu", reported * 8);
                }
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                harness_say("ERROR side=%s recv %s after %zu", parent ? "parent" : "child", r == 0 ? "end of file" : strerror(errno), received);
                return 0;
            }
        }
    }
    harness_say("DONE side=%s ok=%d received=%zu", parent ? "parent" : "child", ok, received);
    return ok;
}

int main(int argc, char **argv) {
    size_t total = (size_t)(argc > 1 ? atoi(argv[1]) : 64) << 20;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    harness_require(bind(listener, (struct sockaddr *)&a, al) == 0 && listen(listener, 1) == 0, "listen");
    getsockname(listener, (struct sockaddr *)&a, &al);
    pid_t child = fork();
    harness_require(child >= 0, "fork");
    if (child == 0) {
        close(listener);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        harness_require(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect");
        _exit(run(fd, 2, 1, total, 0) ? 0 : 1);
    }
    int fd = accept(listener, NULL, NULL);
    harness_require(fd >= 0, "accept");
    close(listener);
    harness_say("READY pid=%d child=%d", getpid(), child);
    int ok = run(fd, 1, 2, total, 1);
    int status = 0;
    waitpid(child, &status, 0);
    return ok && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
