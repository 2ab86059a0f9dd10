// harness-inotify DIR
//
// Holds an inotify instance watching DIR (files made and removed there), DIR/a (changes) and
// DIR/c (one attribute change, IN_ONESHOT); a watch of DIR/b was added between them and
// removed, so the watch descriptors have a gap (1, 2, 4). Prints "READY pid=N" and answers
// each SIGUSR1 with "VERIFY OK" when each watch still has its descriptor (adding it again
// answers the same one) and events arrive on the right descriptors; else
// "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

static char failures[512];
static void fail(const char *what) { strcat(failures, " "); strcat(failures, what); }

/// The next event's watch descriptor and mask, or wd -1 after two seconds.
static int next_event(int fd, uint32_t *mask, int ms) {
    static char buf[4096];
    static ssize_t have = 0, at = 0;
    if (at >= have) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, ms) != 1) return -1;
        have = read(fd, buf, sizeof buf);
        at = 0;
        if (have <= 0) return -1;
    }
    struct inotify_event *e = (struct inotify_event *)(buf + at);
    at += (ssize_t)(sizeof *e + e->len);
    *mask = e->mask;
    return e->wd;
}

int main(int argc, char **argv) {
    harness_require(argc == 2, "usage: harness-inotify DIR");
    char a[4096], b[4096], c[4096], made[4096];
    snprintf(a, sizeof a, "%s/a", argv[1]);
    snprintf(b, sizeof b, "%s/b", argv[1]);
    snprintf(c, sizeof c, "%s/c", argv[1]);
    snprintf(made, sizeof made, "%s/made", argv[1]);
    const char *files[3] = { a, b, c };
    for (int i = 0; i < 3; i++) { int f = open(files[i], O_CREAT | O_WRONLY, 0644); harness_require(f >= 0, "create"); close(f); }
    int in = inotify_init1(IN_NONBLOCK);
    int wd_dir = inotify_add_watch(in, argv[1], IN_CREATE | IN_DELETE);
    int wd_a = inotify_add_watch(in, a, IN_MODIFY);
    int wd_b = inotify_add_watch(in, b, IN_MODIFY);
    harness_require(wd_dir == 1 && wd_a == 2 && wd_b == 3 && inotify_rm_watch(in, wd_b) == 0, "watches");
    int wd_c = inotify_add_watch(in, c, IN_ATTRIB | IN_ONESHOT);
    harness_require(wd_c == 4, "watch c");
    // Nothing waits in the queue but the removal's IN_IGNORED, read now.
    uint32_t mask;
    while (next_event(in, &mask, 100) >= 0) {}
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        failures[0] = 0;
        if (inotify_add_watch(in, argv[1], IN_CREATE | IN_DELETE) != wd_dir) fail("dir-wd");
        if (inotify_add_watch(in, a, IN_MODIFY) != wd_a) fail("a-wd");
        if (!(fcntl(in, F_GETFL) & O_NONBLOCK)) fail("nonblock");
        int f = open(made, O_CREAT | O_WRONLY, 0644);
        close(f);
        int wd = next_event(in, &mask, 2000);
        if (wd != wd_dir || !(mask & IN_CREATE)) fail("create-event");
        unlink(made);
        wd = next_event(in, &mask, 2000);
        if (wd != wd_dir || !(mask & IN_DELETE)) fail("delete-event");
        f = open(a, O_WRONLY | O_APPEND);
        if (write(f, "x", 1) != 1) fail("write");
        close(f);
        wd = next_event(in, &mask, 2000);
        if (wd != wd_a || !(mask & IN_MODIFY)) fail("modify-event");
        while (next_event(in, &mask, 100) >= 0) {}
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
