// harness-msgserver [--crash-at N] [--clients C]
// harness-msgserver --client PORT [--messages M] [--size B]
//
// A small production server and its scripted client. The server listens on 127.0.0.1 (a
// port the kernel picks; it prints "LISTENING port=P pid=N"), serves C clients one after
// the other (default 1), and for each line a client sends ("msg I TEXT") updates its books
// (a running hash of what it got, stamped with the time and a per-connection random key)
// and replies "ok I HASH". On the N-th message in all (default: never) a bug leaves it
// without an account to book the message to, and it crashes in commit_message().
// The client connects, sends M messages (default 1000) of B bytes of text (default 64),
// each after the reply to the one before, prints "SENT M" and exits.
#define _GNU_SOURCE
#include "harness.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct account {
    uint64_t messages;
    uint64_t bytes;
    uint64_t hash;
    uint64_t last_ns;
};

static struct account accounts[4];
static uint64_t total;

static uint64_t mix(uint64_t h, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ULL;
    return h;
}

// Books one message. `account` is NULL when the bug strikes.
__attribute__((noinline)) static uint64_t commit_message(struct account *account, const char *text, size_t n, uint64_t now) {
    account->messages++;
    account->bytes += n;
    account->hash = mix(account->hash ^ now, text, n);
    account->last_ns = now;
    return account->hash;
}

__attribute__((noinline)) static uint64_t handle_message(const char *line, size_t n, uint64_t key, long crash_at) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    total++;
    struct account *account = &accounts[(key ^ total) & 3];
    if (crash_at > 0 && (long)total == crash_at) account = NULL;
    return commit_message(account, line, n, now);
}

static int serve(int fd, long crash_at) {
    uint64_t key = 0;
    if (getrandom(&key, sizeof key, 0) != sizeof key) return -1;
    char buf[65536];
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, buf + have, sizeof buf - have);
        if (r <= 0) return 0;
        have += (size_t)r;
        size_t start = 0;
        for (size_t i = 0; i < have; i++) {
            if (buf[i] != '\n') continue;
            uint64_t h = handle_message(buf + start, i - start, key, crash_at);
            char reply[64];
            int len = snprintf(reply, sizeof reply, "ok %llu %016llx\n", (unsigned long long)total, (unsigned long long)h);
            if (write(fd, reply, (size_t)len) != len) return -1;
            start = i + 1;
        }
        memmove(buf, buf + start, have - start);
        have -= start;
        if (have == sizeof buf) have = 0;
    }
}

static int client(int port, long messages, long size) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char *msg = malloc((size_t)size + 64), reply[256];
    for (long i = 1; i <= messages; i++) {
        int n = snprintf(msg, 64, "msg %ld ", i);
        for (long k = 0; k < size; k++) msg[n + k] = (char)('a' + (i * 7 + k) % 26);
        msg[n + size] = '\n';
        if (write(fd, msg, (size_t)(n + size + 1)) < 0) return 1;
        // The reply is one line.
        size_t got = 0;
        while (got == 0 || reply[got - 1] != '\n') {
            ssize_t r = read(fd, reply + got, sizeof reply - got);
            if (r <= 0) { printf("SERVER GONE after %ld\n", i - 1); return 2; }
            got += (size_t)r;
        }
    }
    printf("SENT %ld\n", messages);
    fflush(stdout);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    long crash_at = 0, clients = 1, messages = 1000, size = 64;
    int port = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--crash-at") && i + 1 < argc) crash_at = atol(argv[++i]);
        else if (!strcmp(argv[i], "--clients") && i + 1 < argc) clients = atol(argv[++i]);
        else if (!strcmp(argv[i], "--client") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--messages") && i + 1 < argc) messages = atol(argv[++i]);
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atol(argv[++i]);
        else { fprintf(stderr, "usage: %s [--crash-at N] [--clients C] | --client PORT [--messages M] [--size B]\n", argv[0]); return 2; }
    }
    if (port >= 0) return client(port, messages, size);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 8) != 0 || getsockname(ls, (struct sockaddr *)&a, &alen) != 0) {
        perror("listen");
        return 1;
    }
    harness_say("LISTENING port=%d pid=%d", ntohs(a.sin_port), getpid());
    for (long c = 0; c < clients; c++) {
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        int fd = accept(ls, (struct sockaddr *)&peer, &plen);
        if (fd < 0) { perror("accept"); return 1; }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve(fd, crash_at);
        close(fd);
    }
    harness_say("SERVED %llu", (unsigned long long)total);
    return 0;
}
