// harness-pidfds KIND
//
// Holds a pidfd (KIND self: of itself; child: of a child that waits; dead: of a child that
// exited and was reaped) and prints "READY pid=N fd=F child=C". Each SIGUSR1 is answered with
// "VERIFY OK" when the pidfd still names that process (its fdinfo Pid, and a null signal sent
// through it reaching it), else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int fdinfo_pid(int fd) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    int pid = 0;
    while (f && fgets(line, sizeof line, f)) if (!strncmp(line, "Pid:", 4)) pid = atoi(line + 4);
    if (f) fclose(f);
    return pid;
}

int main(int argc, char **argv) {
    harness_require(argc == 2, "usage: harness-pidfds self|child|dead");
    pid_t target = getpid();
    if (strcmp(argv[1], "self") != 0) {
        target = fork();
        if (target == 0) { for (;;) pause(); }
    }
    int fd = (int)syscall(SYS_pidfd_open, target, 0);
    harness_require(fd >= 0, "pidfd_open");
    if (!strcmp(argv[1], "dead")) { kill(target, SIGKILL); waitpid(target, NULL, 0); }
    harness_verify_requests();
    harness_say("READY pid=%d fd=%d child=%d", getpid(), fd, target);
    for (;;) {
        harness_wait_for_request();
        char failures[256] = "";
        if (fdinfo_pid(fd) != target) strcat(failures, " fdinfo-pid");
        if (syscall(SYS_pidfd_send_signal, fd, 0, NULL, 0) != 0) strcat(failures, " signal");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
