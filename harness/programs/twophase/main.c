// harness-twophase participant --listen HOST:PORT --no-on TXN
// harness-twophase coordinator --participants HOST:PORT,HOST:PORT --txns N [--pause-before K] [--fixed]
//
// Two-phase commit with a coordinator that mishandles a late vote: a target for `wb
// explore`. For each transaction t = 1..N the coordinator sends "PREPARE t" to both
// participants and reads votes ("VOTE t YES|NO"); a NO aborts t at once, without waiting for
// the other vote. The bug: the vote that arrives late (for a transaction already aborted) is
// counted for the next one. A participant votes NO on its --no-on transaction and YES on the
// others; when told "DECIDE t COMMIT" for a transaction it voted NO on, it aborts in
// check_decision. With --fixed the coordinator drops votes for another transaction.
//
// The first participant waits 20 ms before voting NO, so on one machine the other's YES
// arrives first and the bug does not show. The coordinator prints "READY pid=N" once both
// participants are connected, runs transactions 1..K-1, then waits until --pause-ms (default
// 3000) after READY on the monotonic clock, so a checkpoint taken in the pause finds the job
// mid-protocol and a restore later than that goes on at once; then K..N. At the end it sends
// "END"; each process prints "DONE committed=C aborted=A" and exits 0.
#define _GNU_SOURCE
#include "harness.h"
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>


// Decisions as each process saw them (for checks from gdb).
int committed, aborted;

static void send_text(int fd, const char *text) {
    size_t n = strlen(text);
    harness_require(write(fd, text, n) == (ssize_t)n, "write");
}


__attribute__((noinline)) static void check_decision(int txn, int voted_yes, int commit) {
    if (commit && !voted_yes) {
        fprintf(stderr, "harness-twophase: told to commit transaction %d, which this participant voted against\n", txn);
        abort();
    }
}

static int participant(const char *at, int no_on) {
    int l = harness_listen("harness-twophase", at, 1), one = 1;
    struct harness_lines c = {accept4(l, NULL, NULL, SOCK_CLOEXEC), {0}, 0};
    close(l);
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    harness_say("READY pid=%d", getpid());
    char line[128], reply[64];
    int votes[4096] = {0};
    for (;;) {
        if (!harness_next_line(&c, line, sizeof line)) return 1;
        int t;
        char what[16];
        if (sscanf(line, "PREPARE %d", &t) == 1 && t > 0 && t < 4096) {
            int yes = t != no_on;
            votes[t] = yes ? 1 : -1;
            if (!yes && no_on > 0 && getenv("HARNESS_TWOPHASE_QUICK") == NULL) usleep(20000);
            snprintf(reply, sizeof reply, "VOTE %d %s\n", t, yes ? "YES" : "NO");
            send_text(c.fd, reply);
        } else if (sscanf(line, "DECIDE %d %15s", &t, what) == 2 && t > 0 && t < 4096) {
            int commit = !strcmp(what, "COMMIT");
            check_decision(t, votes[t] == 1, commit);
            if (commit) committed++; else aborted++;
        } else if (!strcmp(line, "END")) {
            harness_say("DONE committed=%d aborted=%d", committed, aborted);
            return 0;
        }
    }
}

static int coordinator(char *participants, int txns, int pause_before, long pause_ms, int fixed) {
    struct harness_lines p[2];
    char *save = NULL, *at = strtok_r(participants, ",", &save);
    for (int i = 0; i < 2; i++) {
        harness_require(at != NULL, "two participants");
        p[i].fd = harness_connect("harness-twophase", at);
        p[i].len = 0;
        at = strtok_r(NULL, ",", &save);
    }
    struct timespec start = harness_in_ms(pause_ms);
    harness_say("READY pid=%d", getpid());
    char line[128], msg[64];
    for (int t = 1; t <= txns; t++) {
        if (t == pause_before) harness_sleep_until(&start);
        snprintf(msg, sizeof msg, "PREPARE %d\n", t);
        send_text(p[0].fd, msg);
        send_text(p[1].fd, msg);
        int votes = 0, yes = 0, no = 0;
        while (votes < 2 && !no) {
            // Whichever participant has a vote to read first.
            fd_set r;
            FD_ZERO(&r);
            FD_SET(p[0].fd, &r);
            FD_SET(p[1].fd, &r);
            int buffered = harness_has_line(&p[0]) ? 0 : harness_has_line(&p[1]) ? 1 : -1;
            if (buffered < 0 && select((p[0].fd > p[1].fd ? p[0].fd : p[1].fd) + 1, &r, NULL, NULL, NULL) < 0) continue;
            int i = buffered >= 0 ? buffered : FD_ISSET(p[0].fd, &r) ? 0 : 1;
            if (!harness_next_line(&p[i], line, sizeof line)) return 1;
            int vt;
            char v[8];
            if (sscanf(line, "VOTE %d %7s", &vt, v) != 2) continue;
            if (fixed && vt != t) continue;
            votes++;
            if (!strcmp(v, "YES")) yes++; else no++;
        }
        int commit = yes == 2;
        if (commit) committed++; else aborted++;
        snprintf(msg, sizeof msg, "DECIDE %d %s\n", t, commit ? "COMMIT" : "ABORT");
        send_text(p[0].fd, msg);
        send_text(p[1].fd, msg);
    }
    send_text(p[0].fd, "END\n");
    send_text(p[1].fd, "END\n");
    harness_say("DONE committed=%d aborted=%d", committed, aborted);
    close(p[0].fd);
    close(p[1].fd);
    return 0;
}

int main(int argc, char **argv) {
    const char *listen_at = NULL;
    char *participants = NULL;
    int no_on = 0, txns = 4, pause_before = 0, fixed = 0;
    long pause_ms = 3000;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--fixed")) fixed = 1;
        else if (i + 1 == argc) break;
        else if (!strcmp(argv[i], "--listen")) listen_at = argv[++i];
        else if (!strcmp(argv[i], "--no-on")) no_on = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--participants")) participants = argv[++i];
        else if (!strcmp(argv[i], "--txns")) txns = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pause-before")) pause_before = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pause-ms")) pause_ms = atol(argv[++i]);
    }
    if (argc > 1 && !strcmp(argv[1], "participant") && listen_at) return participant(listen_at, no_on);
    if (argc > 1 && !strcmp(argv[1], "coordinator") && participants) return coordinator(participants, txns, pause_before, pause_ms, fixed);
    fprintf(stderr, "usage: harness-twophase participant|coordinator ... (see the source's first lines)\n");
    return 2;
}
