// harness-family
//
// A parent and three children holding what a checkpoint of a process tree must keep:
//   - a MAP_SHARED anonymous page: child A adds 1 to a counter in it every millisecond,
//     the parent prints "counter=N" every 20 ms (it only grows if the page is still shared)
//   - a Unix socket pair: the parent wrote 5000 bytes child A has not read yet
//   - child A in a process group of its own, child C in a session of its own
//   - child B exited with status 7 at once and is not reaped (a zombie)
// Prints "ready a=PID b=PID c=PID". On SIGUSR1 the parent reaps B and prints
// "reaped status=S", asks A (SIGUSR1) to read and check the queued bytes and prints what A
// answers over the socket ("queued ok" or "queued bad"), then "groups a=PGID c=SID".
// Children exit when the parent is gone.
#define _GNU_SOURCE
#include "harness.h"
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define QUEUED 5000
static volatile sig_atomic_t asked;
static void on_usr1(int sig) { (void)sig; asked = 1; }

static void nap(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

int main(void) {
    _Atomic long *counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    harness_require(counter != MAP_FAILED, "mmap shared");
    int sv[2];
    harness_require(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
    unsigned char bytes[QUEUED];
    for (int i = 0; i < QUEUED; i++) bytes[i] = (unsigned char)(i * 7 % 251);
    harness_require(write(sv[0], bytes, QUEUED) == QUEUED, "queueing bytes");
    struct sigaction sa = { 0 };
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    pid_t me = getpid();

    pid_t a = fork();
    if (a == 0) {
        setpgid(0, 0);
        close(sv[0]);
        for (;;) {
            atomic_fetch_add(counter, 1);
            nap(1);
            if (getppid() != me) return 0;
            if (asked) {
                asked = 0;
                unsigned char got[QUEUED];
                size_t have = 0;
                while (have < QUEUED) {
                    ssize_t n = read(sv[1], got + have, QUEUED - have);
                    if (n <= 0) break;
                    have += (size_t)n;
                }
                char answer = have == QUEUED && memcmp(got, bytes, QUEUED) == 0 ? 'Y' : 'N';
                if (write(sv[1], &answer, 1) != 1) return 1;
            }
        }
    }
    pid_t b = fork();
    if (b == 0) _exit(7);
    pid_t c = fork();
    if (c == 0) {
        setsid();
        for (;;) {
            nap(50);
            if (getppid() != me) return 0;
        }
    }
    close(sv[1]);
    // B has exited before "ready": the test checkpoints a zombie.
    siginfo_t info;
    waitid(P_PID, b, &info, WEXITED | WNOWAIT);
    harness_say("ready a=%d b=%d c=%d", a, b, c);
    for (;;) {
        nap(20);
        harness_say("counter=%ld", atomic_load(counter));
        if (!asked) continue;
        asked = 0;
        int status = 0;
        pid_t r = waitpid(b, &status, WNOHANG);
        harness_say("reaped pid=%d status=%d", r, status);
        kill(a, SIGUSR1);
        char answer = 0;
        ssize_t n = read(sv[0], &answer, 1);
        harness_say("queued %s", n == 1 && answer == 'Y' ? "ok" : "bad");
        harness_say("groups a=%d c=%d", getpgid(a), getsid(c));
    }
}
