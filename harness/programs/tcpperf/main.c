// harness-tcpperf: the TCP peer of the verbs benchmark (harness/bench/verbs) — the same
// transfers as perftest's ib_write_bw and ib_write_lat, over a plain TCP socket pair.
//
//   harness-tcpperf --server PORT --mode bw|lat --size S --iters N
//   harness-tcpperf --client HOST:PORT --mode bw|lat --size S --iters N
//
// bw: the client sends N messages of S bytes, the server answers one byte when it has them
// all; the client prints "BW MB/s". lat: N round trips of S bytes each way; the client prints
// "LAT usec" (half the average round trip, as ib_write_lat reports its average).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void full(int fd, void *b, size_t n, int w) {
    char *p = b;
    while (n) {
        ssize_t r = w ? write(fd, p, n) : read(fd, p, n);
        if (r <= 0) { perror("tcpperf"); exit(1); }
        p += r;
        n -= (size_t)r;
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *server = NULL, *client = NULL, *mode = "bw";
    size_t size = 65536;
    long iters = 1000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--server")) server = argv[i + 1];
        else if (!strcmp(argv[i], "--client")) client = argv[i + 1];
        else if (!strcmp(argv[i], "--mode")) mode = argv[i + 1];
        else if (!strcmp(argv[i], "--size")) size = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atol(argv[i + 1]);
    }
    if (!server == !client) { fprintf(stderr, "usage: harness-tcpperf --server PORT | --client HOST:PORT [--mode bw|lat] [--size S] [--iters N]\n"); return 2; }
    int lat = !strcmp(mode, "lat");
    char *buf = calloc(1, size ? size : 1);
    int fd, one = 1;
    if (server) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(server))};
        if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1)) { perror("listen"); return 1; }
        fd = accept(l, NULL, NULL);
    } else {
        char host[64];
        const char *c = strrchr(client, ':');
        snprintf(host, sizeof host, "%.*s", (int)(c - client), client);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(c + 1))};
        inet_pton(AF_INET, host, &a.sin_addr);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        int tries = 0;
        while (connect(fd, (struct sockaddr *)&a, sizeof a)) {
            if (++tries > 100) { perror("connect"); return 1; }
            close(fd);
            fd = socket(AF_INET, SOCK_STREAM, 0);
            usleep(50000);
        }
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double t0 = now();
    for (long i = 0; i < iters; i++) {
        if (lat) {
            if (client) { full(fd, buf, size, 1); full(fd, buf, size, 0); }
            else { full(fd, buf, size, 0); full(fd, buf, size, 1); }
        } else {
            full(fd, buf, size, client != NULL);
        }
    }
    char ack = 'k';
    if (!lat) full(fd, &ack, 1, server != NULL);
    double t = now() - t0;
    if (client) {
        if (lat) printf("LAT %.2f\n", t / iters / 2 * 1e6);
        else printf("BW %.2f\n", (double)size * iters / t / 1048576.0);
    }
    return 0;
}
