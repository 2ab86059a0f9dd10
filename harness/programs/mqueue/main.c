// harness-mqueue
//
// POSIX message queues as a checkpoint must keep them. Queue A (/wb-mq-PID-a, mode 0640, up
// to 5 messages of 100 bytes) holds four messages: "low" at priority 1, "high" and "high-2"
// at priority 7, and an empty one at priority 0, so receivers get high, high-2, low, "";
// it is open twice: read-write, and read-only non-blocking (two open files). Queue B
// (/wb-mq-PID-b, mode 0600, up to 3 messages of 16 bytes) holds "kept" at priority 2 and is
// removed by name (mq_unlink) while open. Prints "READY pid=N a=/NAME b=/NAME". Each
// SIGUSR1 is answered with "VERIFY OK" when both queues have their limits, modes and
// messages in order (each received, then sent back in the same order for the next round),
// the second fd of A is the same queue, read-only and non-blocking, A is found by its name
// and B by none; else "VERIFY FAIL <what>".
//   harness-mqueue --notify     also registers a notification (mq_notify, SIGUSR2) on A
//   harness-mqueue --remove NAME   removes queue NAME (mq_unlink) and exits
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct message { const char *text; unsigned priority; };

static const struct message a_sent[] = { { "low", 1 }, { "high", 7 }, { "high-2", 7 }, { "", 0 } };
static const struct message a_order[] = { { "high", 7 }, { "high-2", 7 }, { "low", 1 }, { "", 0 } };
static const struct message b_sent[] = { { "kept", 2 } };

static void append(char *bad, size_t size, const char *what) {
    strncat(bad, " ", size - strlen(bad) - 1);
    strncat(bad, what, size - strlen(bad) - 1);
}

// Limits and mode of `q`, then its messages received in `order` and sent back in that order.
static void check_queue(mqd_t q, const char *tag, long maxmsg, long msgsize, mode_t mode,
                        const struct message *order, int count, char *bad, size_t size) {
    char what[64];
    struct mq_attr attr;
    struct stat st;
    if (mq_getattr(q, &attr) != 0 || fstat(q, &st) != 0) { snprintf(what, sizeof what, "%s-attr", tag); append(bad, size, what); return; }
    if (attr.mq_maxmsg != maxmsg || attr.mq_msgsize != msgsize) { snprintf(what, sizeof what, "%s-limits", tag); append(bad, size, what); }
    if (attr.mq_curmsgs != count) { snprintf(what, sizeof what, "%s-count=%ld", tag, attr.mq_curmsgs); append(bad, size, what); }
    if ((st.st_mode & 07777) != mode) { snprintf(what, sizeof what, "%s-mode=%o", tag, st.st_mode & 07777); append(bad, size, what); }
    struct timespec now = { 0, 0 };
    for (int i = 0; i < count; i++) {
        char buf[128];
        unsigned priority = 99;
        ssize_t n = mq_timedreceive(q, buf, sizeof buf, &priority, &now);
        if (n < 0) { snprintf(what, sizeof what, "%s-missing-%d", tag, i); append(bad, size, what); break; }
        if ((size_t)n != strlen(order[i].text) || memcmp(buf, order[i].text, (size_t)n) != 0 || priority != order[i].priority) {
            snprintf(what, sizeof what, "%s-message-%d", tag, i); append(bad, size, what);
        }
    }
    char extra[128];
    if (mq_timedreceive(q, extra, sizeof extra, NULL, &now) >= 0) { snprintf(what, sizeof what, "%s-extra", tag); append(bad, size, what); }
    for (int i = 0; i < count; i++) {
        if (mq_timedsend(q, order[i].text, strlen(order[i].text), order[i].priority, &now) != 0) {
            snprintf(what, sizeof what, "%s-send", tag); append(bad, size, what);
        }
    }
}

static mqd_t make(const char *name, mode_t mode, long maxmsg, long msgsize, const struct message *m, int count) {
    struct mq_attr attr = { .mq_maxmsg = maxmsg, .mq_msgsize = msgsize };
    mq_unlink(name);
    mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_EXCL, mode, &attr);
    harness_require(q >= 0, "mq_open");
    harness_require(fchmod(q, mode) == 0, "fchmod");   // the umask took bits
    for (int i = 0; i < count; i++) harness_require(mq_send(q, m[i].text, strlen(m[i].text), m[i].priority) == 0, "mq_send");
    return q;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--remove") == 0) return mq_unlink(argv[2]) == 0 ? 0 : 1;
    int notify = argc > 1 && strcmp(argv[1], "--notify") == 0;
    char a_name[64], b_name[64];
    snprintf(a_name, sizeof a_name, "/wb-mq-%d-a", getpid());
    snprintf(b_name, sizeof b_name, "/wb-mq-%d-b", getpid());
    mqd_t a = make(a_name, 0640, 5, 100, a_sent, 4);
    mqd_t a2 = mq_open(a_name, O_RDONLY | O_NONBLOCK);
    harness_require(a2 >= 0, "mq_open(a, O_RDONLY)");
    mqd_t b = make(b_name, 0600, 3, 16, b_sent, 1);
    harness_require(mq_unlink(b_name) == 0, "mq_unlink(b)");
    if (notify) {
        struct sigevent ev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR2 };
        signal(SIGUSR2, SIG_IGN);
        harness_require(mq_notify(a, &ev) == 0, "mq_notify");
    }
    harness_verify_requests();
    harness_say("READY pid=%d a=%s b=%s", getpid(), a_name, b_name);
    for (;;) {
        harness_wait_for_request();
        char bad[512] = "";
        check_queue(a, "a", 5, 100, 0640, a_order, 4, bad, sizeof bad);
        check_queue(b, "b", 3, 16, 0600, b_sent, 1, bad, sizeof bad);
        struct stat sa, sa2;
        struct mq_attr attr2;
        if (fstat(a, &sa) != 0 || fstat(a2, &sa2) != 0 || sa.st_ino != sa2.st_ino || sa.st_dev != sa2.st_dev) append(bad, sizeof bad, "a2-not-a");
        if (mq_getattr(a2, &attr2) != 0 || !(attr2.mq_flags & O_NONBLOCK) || attr2.mq_curmsgs != 4) append(bad, sizeof bad, "a2-flags");
        if ((fcntl(a2, F_GETFL) & O_ACCMODE) != O_RDONLY) append(bad, sizeof bad, "a2-access");
        if (mq_send(a2, "x", 1, 0) == 0 || errno != EBADF) append(bad, sizeof bad, "a2-writes");
        mqd_t again = mq_open(a_name, O_RDONLY);
        struct stat s3;
        if (again < 0 || fstat(again, &s3) != 0 || s3.st_ino != sa.st_ino) append(bad, sizeof bad, "a-by-name");
        if (again >= 0) mq_close(again);
        if (mq_open(b_name, O_RDONLY) >= 0 || errno != ENOENT) append(bad, sizeof bad, "b-by-name");
        if (bad[0]) harness_say("VERIFY FAIL%s", bad); else harness_say("VERIFY OK");
    }
}
