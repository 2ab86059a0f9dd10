// harness-replica backup --listen HOST:PORT
// harness-replica primary --listen HOST:PORT --backup HOST:PORT [--sync]
// harness-replica client --primary HOST:PORT --backup HOST:PORT [--warmup W] [--writes R] [--start-in MS]
//
// A primary-backup log that loses an acknowledged write when a failover races a write: a
// target for `wb explore`. The client appends entries to the primary's log ("APPEND"); the
// primary appends, sends "REPL n" to the backup and (without --sync) acknowledges "ACK n" at
// once. After its writes the client fails the primary over: it tells the backup "FAILOVER",
// the backup takes over and answers "PROMOTED n" with the length of its log, and the client
// checks that every write it had acknowledged is there. If the FAILOVER reaches the backup
// before the primary's last REPL does, an acknowledged write is lost and the client aborts
// in check_log. With --sync the primary acknowledges only after the backup's "REPLOK n":
// never lost.
//
// The primary's log length is in the global primary_log, the backup's in backup_log. Every
// process prints "READY pid=N" once its connections are up. The client makes --warmup
// writes (default 2), then waits until --start-in milliseconds (default 2000) after READY on
// the monotonic clock, so a checkpoint taken in between finds the job mid-protocol and a
// restore later than that goes on at once; then --writes more (default 1) and the failover.
// At the end it prints "DONE writes=N" and closes its connections; the primary and the
// backup exit 0 when their peers have gone.
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>


// The log's length as the primary and the backup hold it (for checks from gdb).
long primary_log, backup_log;

static void send_line(int fd, const char *fmt, long v) {
    char line[64];
    int n = snprintf(line, sizeof line, fmt, v);
    harness_require(write(fd, line, (size_t)n) == n, "write");
}



static int backup(const char *at) {
    int l = harness_listen("harness-replica", at, 4);
    struct harness_lines peers[2];
    int primary = -1;
    for (int i = 0; i < 2; i++) {
        peers[i].fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        peers[i].len = 0;
        char hello[64];
        harness_require(harness_next_line(&peers[i], hello, sizeof hello), "hello");
        if (!strcmp(hello, "HELLO primary")) primary = i;
    }
    close(l);
    harness_require(primary >= 0, "no primary");
    harness_say("READY pid=%d", getpid());
    long value = 0;
    int open = 2, promoted = 0;
    while (open > 0) {
        struct pollfd p[2] = {{peers[0].fd, POLLIN, 0}, {peers[1].fd, POLLIN, 0}};
        if (!harness_has_line(&peers[0]) && !harness_has_line(&peers[1]) && poll(p, 2, -1) < 0 && errno == EINTR) continue;
        for (int i = 0; i < 2; i++) {
            if (peers[i].fd < 0 || !(harness_has_line(&peers[i]) || p[i].revents)) continue;
            char line[64];
            if (!harness_next_line(&peers[i], line, sizeof line)) { close(peers[i].fd); peers[i].fd = -1; open--; continue; }
            if (i == primary && !strncmp(line, "REPL ", 5)) {
                if (!promoted) {
                    value = backup_log = atol(line + 5);
                    send_line(peers[i].fd, "REPLOK %ld\n", value);
                }
            }
            else if (!strcmp(line, "FAILOVER")) { promoted = 1; send_line(peers[i].fd, "PROMOTED %ld\n", value); }
        }
    }
    return 0;
}

static int primary(const char *at, const char *backup_at, int sync) {
    int l = harness_listen("harness-replica", at, 4);
    struct harness_lines b = {harness_connect("harness-replica", backup_at), {0}, 0};
    send_line(b.fd, "HELLO primary\n", 0);
    struct harness_lines c = {accept4(l, NULL, NULL, SOCK_CLOEXEC), {0}, 0};
    close(l);
    harness_say("READY pid=%d", getpid());
    long value = 0, owed = 0;
    for (;;) {
        struct pollfd p[2] = {{c.fd, POLLIN, 0}, {b.fd, POLLIN, 0}};
        if (!harness_has_line(&c) && !harness_has_line(&b) && poll(p, 2, -1) < 0 && errno == EINTR) continue;
        char line[64];
        if (harness_has_line(&c) || p[0].revents) {
            if (!harness_next_line(&c, line, sizeof line)) break;
            if (!strcmp(line, "APPEND")) {
                primary_log = ++value;
                send_line(b.fd, "REPL %ld\n", value);
                if (sync) owed = value; else send_line(c.fd, "ACK %ld\n", value);
            }
        }
        if (harness_has_line(&b) || p[1].revents) {
            if (!harness_next_line(&b, line, sizeof line)) break;
            if (!strncmp(line, "REPLOK ", 7) && owed && atol(line + 7) == owed) { send_line(c.fd, "ACK %ld\n", owed); owed = 0; }
        }
    }
    close(b.fd);
    return 0;
}

__attribute__((noinline)) static void check_log(long promoted, long acked) {
    if (promoted < acked) {
        fprintf(stderr, "harness-replica: acknowledged write lost: the new primary's log has %ld entries, %ld were acknowledged\n", promoted, acked);
        abort();
    }
}

static long append(struct harness_lines *p) {
    char line[64];
    send_line(p->fd, "APPEND\n", 0);
    harness_require(harness_next_line(p, line, sizeof line) && !strncmp(line, "ACK ", 4), "ACK from the primary");
    return atol(line + 4);
}

static int client(const char *primary_at, const char *backup_at, int warmup, int writes, long start_in_ms) {
    struct harness_lines p = {harness_connect("harness-replica", primary_at), {0}, 0};
    struct harness_lines b = {harness_connect("harness-replica", backup_at), {0}, 0};
    send_line(b.fd, "HELLO client\n", 0);
    long acked = 0;
    for (int i = 0; i < warmup; i++) acked = append(&p);
    struct timespec start = harness_in_ms(start_in_ms);
    harness_say("READY pid=%d", getpid());
    harness_sleep_until(&start);
    for (int i = 0; i < writes; i++) acked = append(&p);
    char line[64];
    send_line(b.fd, "FAILOVER\n", 0);
    harness_require(harness_next_line(&b, line, sizeof line) && !strncmp(line, "PROMOTED ", 9), "PROMOTED from the backup");
    check_log(atol(line + 9), acked);
    harness_say("DONE writes=%ld", acked);
    close(p.fd);
    close(b.fd);
    return 0;
}

int main(int argc, char **argv) {
    const char *listen_at = NULL, *backup_at = NULL, *primary_at = NULL;
    int warmup = 2, writes = 1, sync = 0;
    long start_in = 2000;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--sync")) sync = 1;
        else if (i + 1 == argc) break;
        else if (!strcmp(argv[i], "--listen")) listen_at = argv[++i];
        else if (!strcmp(argv[i], "--backup")) backup_at = argv[++i];
        else if (!strcmp(argv[i], "--primary")) primary_at = argv[++i];
        else if (!strcmp(argv[i], "--warmup")) warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--writes")) writes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--start-in")) start_in = atol(argv[++i]);
    }
    if (argc > 1 && !strcmp(argv[1], "backup") && listen_at) return backup(listen_at);
    if (argc > 1 && !strcmp(argv[1], "primary") && listen_at && backup_at) return primary(listen_at, backup_at, sync);
    if (argc > 1 && !strcmp(argv[1], "client") && primary_at && backup_at) return client(primary_at, backup_at, warmup, writes, start_in);
    fprintf(stderr, "usage: harness-replica backup|primary|client ... (see the source's first lines)\n");
    return 2;
}
