// harness-sharedtables
//
// A parent and two children: child S was cloned with CLONE_FILES|CLONE_FS (it shares the
// parent's fd table, working directory, root and umask), child F was forked (its own). Each
// child answers a request on its pipe ("which fd? its umask?"). Prints "READY pid=N s=PID
// f=PID"; each SIGUSR1 to the parent opens a new fd and sets a new umask, asks both children,
// and answers "VERIFY OK" when S sees both and F sees neither, else "VERIFY FAIL <what>".
// Children exit when the parent is gone. With --siblings, a second child is cloned like S
// and then the parent takes a table of its own (unshare): the two children share one table
// their parent does not have (a sharing wb refuses by name).
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/// Answers requests (an fd number) on `in` with "fd-open umask" on `out`, forever.
static void serve(int in, int out) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd;
    while (read(in, &fd, sizeof fd) == (ssize_t)sizeof fd) {
        mode_t mask = umask(0);
        umask(mask);
        int answer[2] = { fcntl(fd, F_GETFD) >= 0, (int)mask };
        if (write(out, answer, sizeof answer) != (ssize_t)sizeof answer) break;
    }
    _exit(0);
}

static void ask(int to, int from, int fd, int answer[2]) {
    answer[0] = answer[1] = -1;
    if (write(to, &fd, sizeof fd) == (ssize_t)sizeof fd) {
        if (read(from, answer, 2 * sizeof(int)) != (ssize_t)(2 * sizeof(int))) answer[0] = -1;
    }
}

int main(int argc, char **argv) {
    int s_req[2], s_ans[2], f_req[2], f_ans[2];
    harness_require(pipe(s_req) == 0 && pipe(s_ans) == 0 && pipe(f_req) == 0 && pipe(f_ans) == 0, "pipes");
    umask(022);
    long s = syscall(SYS_clone, CLONE_FILES | CLONE_FS | SIGCHLD, 0, 0, 0, 0);
    harness_require(s >= 0, "clone");
    if (s == 0) serve(s_req[0], s_ans[1]);
    pid_t f = fork();
    harness_require(f >= 0, "fork");
    if (f == 0) serve(f_req[0], f_ans[1]);
    if (argc > 1 && strcmp(argv[1], "--siblings") == 0) {
        long t = syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0);
        harness_require(t >= 0, "clone");
        if (t == 0) serve(s_req[0], s_ans[1]);
        harness_require(unshare(CLONE_FILES) == 0, "unshare");
    }
    harness_verify_requests();
    harness_say("READY pid=%d s=%ld f=%d", getpid(), s, f);
    for (;;) {
        harness_wait_for_request();
        char failures[256] = "";
        int fd = open("/dev/null", O_RDONLY);
        umask(077);
        int a[2], b[2];
        ask(s_req[1], s_ans[0], fd, a);
        ask(f_req[1], f_ans[0], fd, b);
        close(fd);
        umask(022);
        if (a[0] != 1) strcat(failures, " shared-fd");
        if (a[1] != 077) strcat(failures, " shared-umask");
        if (b[0] != 0) strcat(failures, " own-fd");
        if (b[1] != 022) strcat(failures, " own-umask");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
