// harness-fanotify DIR
//
// Holds a fanotify group (notification class, non-blocking) with three marks: DIR/a for
// modifications, DIR for opens of anything in it (FAN_EVENT_ON_CHILD), and DIR/b with an
// ignore mask for opens that survives modification. Prints "READY pid=N"; each SIGUSR1
// modifies a, opens b and c, and answers "VERIFY OK" when the events that arrive are a's
// modification and c's open, and none for b, each naming its file; else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/fanotify.h>
#include <unistd.h>

static char failures[512];
static void fail(const char *what) { strcat(failures, " "); strcat(failures, what); }

int main(int argc, char **argv) {
    harness_require(argc == 2, "usage: harness-fanotify DIR");
    char a[4096], b[4096], c[4096];
    snprintf(a, sizeof a, "%s/a", argv[1]);
    snprintf(b, sizeof b, "%s/b", argv[1]);
    snprintf(c, sizeof c, "%s/c", argv[1]);
    const char *files[3] = { a, b, c };
    for (int i = 0; i < 3; i++) { int f = open(files[i], O_CREAT | O_WRONLY, 0644); harness_require(f >= 0, "create"); close(f); }
    int g = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
    harness_require(g >= 0, "fanotify_init (needs CAP_SYS_ADMIN)");
    harness_require(fanotify_mark(g, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, a) == 0, "mark a");
    harness_require(fanotify_mark(g, FAN_MARK_ADD, FAN_OPEN | FAN_EVENT_ON_CHILD, AT_FDCWD, argv[1]) == 0, "mark dir");
    harness_require(fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, AT_FDCWD, b) == 0, "ignore b");
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        failures[0] = 0;
        char buf[8192];
        while (read(g, buf, sizeof buf) > 0) {}   // what came before this round
        if (!(fcntl(g, F_GETFL) & O_NONBLOCK)) fail("nonblock");
        int f = open(a, O_WRONLY | O_APPEND);
        if (f < 0 || write(f, "x", 1) != 1) fail("write-a");
        close(f);
        f = open(b, O_RDONLY); close(f);
        f = open(c, O_RDONLY); close(f);
        int modified_a = 0, opened_b = 0, opened_c = 0, others = 0;
        for (;;) {
            struct pollfd p = { .fd = g, .events = POLLIN };
            if (poll(&p, 1, 300) != 1) break;
            ssize_t n = read(g, buf, sizeof buf);
            if (n <= 0) break;
            for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
                char link[64], path[4096] = "";
                snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
                ssize_t l = readlink(link, path, sizeof path - 1);
                path[l < 0 ? 0 : l] = 0;
                if (m->fd >= 0) close(m->fd);
                if (m->pid != getpid()) { others++; continue; }
                if (strcmp(path, a) == 0 && (m->mask & FAN_MODIFY)) modified_a = 1;
                if (strcmp(path, b) == 0 && (m->mask & FAN_OPEN)) opened_b = 1;
                if (strcmp(path, c) == 0 && (m->mask & FAN_OPEN)) opened_c = 1;
            }
        }
        if (!modified_a) fail("modify-a");
        if (opened_b) fail("open-b-not-ignored");
        if (!opened_c) fail("open-c");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
