// harness-pty
//
// A terminal session of its own, as `script` or an ssh server makes one: the parent holds
// the master of a pseudo-terminal pair (window 40x132); its child leads a session whose
// controlling terminal is the pair's terminal side (its stdin, stdout, stderr), with echo
// off and VMIN 1. Prints "READY pid=N child=C"; each SIGUSR1 to the parent writes "ping"
// to the master and reads the child's answer: the child reports the window size, echo, its
// controlling terminal (/dev/tty opens) and whether its group is the terminal's foreground.
// Answers "VERIFY OK" when all of that holds, else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <termios.h>
#include <unistd.h>

static void child(const char *name) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    harness_require(setsid() > 0, "setsid");
    int t = open(name, O_RDWR);   // a session leader's first terminal: its controlling one
    harness_require(t >= 0, "open terminal");
    dup2(t, 0); dup2(t, 1); dup2(t, 2);
    if (t > 2) close(t);
    struct termios tio;
    harness_require(tcgetattr(0, &tio) == 0, "tcgetattr");
    tio.c_lflag &= ~(tcflag_t)ECHO;
    tio.c_cc[VMIN] = 1;
    harness_require(tcsetattr(0, TCSANOW, &tio) == 0, "tcsetattr");
    char line[256];
    harness_require(write(1, "hello\n", 6) == 6, "hello");
    for (;;) {
        ssize_t n = read(0, line, sizeof line - 1);
        if (n <= 0) _exit(0);
        struct winsize w = { 0 };
        ioctl(0, TIOCGWINSZ, &w);
        tcgetattr(0, &tio);
        int tty = open("/dev/tty", O_RDWR);
        int ctty = tty >= 0;
        if (tty >= 0) close(tty);
        char out[256];
        int len = snprintf(out, sizeof out, "pong rows=%d cols=%d echo=%d ctty=%d fg=%d vmin=%d\n", w.ws_row, w.ws_col,
                           (tio.c_lflag & ECHO) != 0, ctty, tcgetpgrp(0) == getpgrp(), tio.c_cc[VMIN]);
        if (write(1, out, (size_t)len) != len) _exit(1);
    }
}

int main(void) {
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    harness_require(master >= 0 && grantpt(master) == 0 && unlockpt(master) == 0, "posix_openpt");
    struct winsize w = { .ws_row = 40, .ws_col = 132 };
    harness_require(ioctl(master, TIOCSWINSZ, &w) == 0, "TIOCSWINSZ");
    char name[64];
    harness_require(ptsname_r(master, name, sizeof name) == 0, "ptsname");
    pid_t c = fork();
    harness_require(c >= 0, "fork");
    if (c == 0) { close(master); child(name); }
    // Wait for the child's settings: its greeting.
    char answer[512];
    size_t have = 0;
    while (!memchr(answer, '\n', have) && have < sizeof answer - 1) {
        ssize_t n = read(master, answer + have, sizeof answer - 1 - have);
        harness_require(n > 0, "greeting");
        have += (size_t)n;
    }
    harness_verify_requests();
    harness_say("READY pid=%d child=%d", getpid(), c);
    for (;;) {
        harness_wait_for_request();
        char failures[256] = "";
        if (write(master, "ping\n", 5) != 5) strcat(failures, " write");
        have = 0;
        memset(answer, 0, sizeof answer);
        while (!memchr(answer, '\n', have) && have < sizeof answer - 1) {
            struct pollfd p = { .fd = master, .events = POLLIN };
            if (poll(&p, 1, 3000) != 1) { strcat(failures, " no-answer"); break; }
            ssize_t n = read(master, answer + have, sizeof answer - 1 - have);
            if (n <= 0) { strcat(failures, " read"); break; }
            have += (size_t)n;
        }
        if (!strstr(answer, "pong rows=40 cols=132 echo=0 ctty=1 fg=1 vmin=1")) {
            strcat(failures, " answer:");
            strncat(failures, answer, 120);
            char *nl = strpbrk(failures, "\r\n");
            if (nl) *nl = 0;
        }
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
