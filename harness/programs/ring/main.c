// harness-ring --rank R --listen HOST:PORT --next HOST:PORT --messages M --out FILE [--ballast MiB]
//
// One process of a ring of TCP connections, a target for distributed checkpoints. Each rank
// listens, connects to the next rank and accepts the previous one. Rank 0 sends M numbered
// messages each way round the ring (clockwise to the next rank, counter-clockwise to the
// previous), up to 4 in flight per direction, of sizes from 1 KB to about 200 KB with a
// checksum; every other rank passes each message on in its direction, and rank 0 takes
// them back. Each rank checks it saw every sequence number exactly once each way, with an
// intact payload, then writes "OK rank R cw=M ccw=M" (or "FAIL ...") to FILE and exits 0
// (or 1). It prints "READY rank R pid N" once its two connections are up. --ballast: that
// many MiB of touched memory besides (for benchmarks).
#define _GNU_SOURCE
#include "harness.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct frame {
    uint32_t magic, dir, seq, len, sum;
};

enum { CW = 0, CCW = 1, WINDOW = 4 };

static int rank, messages;
static int next_fd, prev_fd;
static unsigned char *seen[2];
static int bad[2];
static int inflight[2];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;

static uint32_t payload_len(uint32_t seq) { return 1000 + (seq * 7919u) % 200000u; }
static unsigned char payload_byte(uint32_t seq, uint32_t i) { return (unsigned char)((seq * 131u + i * 7u) & 0xff); }

static int full_read(int fd, void *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int full_write(int fd, const void *p, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = write(fd, (const char *)p + done, n - done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        done += (size_t)r;
    }
    return 0;
}

static int send_frame(int fd, uint32_t dir, uint32_t seq, const unsigned char *data, uint32_t len) {
    uint32_t sum = 0;
    for (uint32_t i = 0; i < len; i++) sum = sum * 31u + data[i];
    struct frame f = {0x52494e47, dir, seq, len, sum};
    if (full_write(fd, &f, sizeof f) != 0) return -1;
    return full_write(fd, data, len);
}

// Reads one frame of direction `dir` from fd, checks it, records it, and (not rank 0)
// passes it on to `out`. Returns the sequence number, or -1 at the end of the stream.
static int take(int fd, uint32_t dir, int out, unsigned char *buffer) {
    struct frame f;
    if (full_read(fd, &f, sizeof f) != 0) return -1;
    if (f.magic != 0x52494e47 || f.dir != dir || f.seq >= (uint32_t)messages || f.len > 300000) {
        fprintf(stderr, "harness-ring: rank %d: bad frame header (dir %u seq %u len %u)\n", rank, f.dir, f.seq, f.len);
        bad[dir]++;
        return -1;
    }
    if (full_read(fd, buffer, f.len) != 0) return -1;
    uint32_t sum = 0;
    for (uint32_t i = 0; i < f.len; i++) sum = sum * 31u + buffer[i];
    if (sum != f.sum || f.len != payload_len(f.seq) || buffer[f.len - 1] != payload_byte(f.seq, f.len - 1)) bad[dir]++;
    pthread_mutex_lock(&lock);
    if (seen[dir][f.seq] < 255) seen[dir][f.seq]++;
    pthread_mutex_unlock(&lock);
    if (rank != 0 && send_frame(out, dir, f.seq, buffer, f.len) != 0) return -1;
    return (int)f.seq;
}

struct flow { int in, out; uint32_t dir; };

// Passes (or, at rank 0, takes back) the messages of one direction.
static void *pass(void *arg) {
    struct flow *fl = arg;
    unsigned char *buffer = malloc(300000);
    for (int n = 0; n < messages; n++) {
        if (take(fl->in, fl->dir, fl->out, buffer) < 0) break;
        if (rank == 0) {
            pthread_mutex_lock(&lock);
            inflight[fl->dir]--;
            pthread_cond_broadcast(&changed);
            pthread_mutex_unlock(&lock);
        }
    }
    free(buffer);
    return NULL;
}

// Rank 0: sends the messages of one direction, a window at a time.
static void *originate(void *arg) {
    struct flow *fl = arg;
    unsigned char *buffer = malloc(300000);
    for (int seq = 0; seq < messages; seq++) {
        pthread_mutex_lock(&lock);
        while (inflight[fl->dir] >= WINDOW) pthread_cond_wait(&changed, &lock);
        inflight[fl->dir]++;
        pthread_mutex_unlock(&lock);
        uint32_t len = payload_len((uint32_t)seq);
        for (uint32_t i = 0; i < len; i++) buffer[i] = payload_byte((uint32_t)seq, i);
        if (send_frame(fl->out, fl->dir, (uint32_t)seq, buffer, len) != 0) break;
        struct timespec pause = {0, 5 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    free(buffer);
    return NULL;
}


int main(int argc, char **argv) {
    const char *listen_at = NULL, *next_at = NULL, *out = NULL;
    long ballast = 0;
    messages = 200;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rank")) rank = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--listen")) listen_at = argv[i + 1];
        else if (!strcmp(argv[i], "--next")) next_at = argv[i + 1];
        else if (!strcmp(argv[i], "--messages")) messages = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else if (!strcmp(argv[i], "--ballast")) ballast = atol(argv[i + 1]);
    }
    if (!listen_at || !next_at || !out || messages < 1) {
        fprintf(stderr, "usage: harness-ring --rank R --listen HOST:PORT --next HOST:PORT --messages M --out FILE\n");
        return 2;
    }
    if (ballast > 0) {
        size_t n = (size_t)ballast << 20;
        unsigned char *b = malloc(n);
        for (size_t i = 0; i < n; i += 4096) b[i] = (unsigned char)(i >> 12);
    }
    seen[CW] = calloc((size_t)messages, 1);
    seen[CCW] = calloc((size_t)messages, 1);
    struct sockaddr_in me, next;
    harness_parse_ipv4("harness-ring", listen_at, &me);
    harness_parse_ipv4("harness-ring", next_at, &next);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&me, sizeof me) != 0 || listen(listener, 4) != 0) {
        perror("harness-ring: listen");
        return 2;
    }
    for (int tries = 0;; tries++) {
        next_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(next_fd, (struct sockaddr *)&next, sizeof next) == 0) break;
        close(next_fd);
        if (tries > 3000) { perror("harness-ring: connect"); return 2; }
        usleep(10000);
    }
    prev_fd = accept(listener, NULL, NULL);
    if (prev_fd < 0) { perror("harness-ring: accept"); return 2; }
    close(listener);
    setsockopt(next_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(prev_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    printf("READY rank %d pid %d\n", rank, getpid());
    fflush(stdout);

    // Clockwise: in from prev, out to next. Counter-clockwise: in from next, out to prev.
    struct flow cw = {prev_fd, next_fd, CW}, ccw = {next_fd, prev_fd, CCW};
    pthread_t t[4];
    int n = 0;
    pthread_create(&t[n++], NULL, pass, &cw);
    pthread_create(&t[n++], NULL, pass, &ccw);
    if (rank == 0) {
        struct flow send_cw = {-1, next_fd, CW}, send_ccw = {-1, prev_fd, CCW};
        pthread_create(&t[n++], NULL, originate, &send_cw);
        pthread_create(&t[n++], NULL, originate, &send_ccw);
        for (int i = n - 1; i >= 0; i--) pthread_join(t[i], NULL);
    } else {
        for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    }
    int ok[2] = {0, 0};
    for (int d = 0; d < 2; d++)
        for (int s = 0; s < messages; s++) ok[d] += seen[d][s] == 1;
    FILE *f = fopen(out, "w");
    int good = ok[CW] == messages && ok[CCW] == messages && !bad[CW] && !bad[CCW];
    fprintf(f, "%s rank %d cw=%d ccw=%d bad=%d/%d\n", good ? "OK" : "FAIL", rank, ok[CW], ok[CCW], bad[CW], bad[CCW]);
    fclose(f);
    return good ? 0 : 1;
}
