// harness-holder KIND
//
// Holds one kernel object wb cannot restore yet (KIND: socket (vsock, which an epoll set
// watches), userfaultfd, secretmem (memfd_secret memory), child, or sysvipc: a
// System V semaphore set it has operated on and a message queue it sent a message to, both
// IPC_PRIVATE), prints "READY pid=N fd=F" (for sysvipc "READY pid=N sem=ID msg=ID"; the
// caller removes them: ipcrm -s ID -q ID), and answers each SIGUSR1 with
// "ALIVE n" so a test can see it still runs normally after wb refused to checkpoint it.
// KIND vfork: a thread that cannot be stopped for a while. The process calls vfork and its
// child, which prints "READY pid=PARENT fd=CHILD", waits without calling exec until it is
// killed; the parent, held in the kernel until then, prints "BACK" and answers SIGUSR1.
// KIND connect PORT: a TCP socket whose connect to 127.0.0.1:PORT is in progress.
// KIND clonevm: a child cloned with CLONE_VM (one address space, two processes) that waits;
// "READY pid=N fd=CHILD".
#define _GNU_SOURCE
#include "harness.h"
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

static int wait_forever(void *arg) {
    (void)arg;
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: harness-holder socket|userfaultfd|secretmem|child|sysvipc|vfork|clonevm|connect PORT\n"); return 2; }
    int fd = -1;
    if (!strcmp(argv[1], "sysvipc")) {
        int sem = semget(IPC_PRIVATE, 2, 0600), msg = msgget(IPC_PRIVATE, 0600);
        harness_require(sem >= 0 && msg >= 0, "semget/msgget");
        struct sembuf up = { .sem_num = 1, .sem_op = 1, .sem_flg = SEM_UNDO };
        harness_require(semop(sem, &up, 1) == 0, "semop");
        struct { long type; char text[8]; } m = { 1, "hello" };
        harness_require(msgsnd(msg, &m, sizeof m.text, 0) == 0, "msgsnd");
        harness_verify_requests();
        harness_say("READY pid=%d sem=%d msg=%d", getpid(), sem, msg);
        for (int n = 1;; n++) {
            harness_wait_for_request();
            harness_say("ALIVE %d", n);
        }
    }
    if (!strcmp(argv[1], "vfork")) {
        harness_verify_requests();
        pid_t c = vfork();
        if (c == 0) {
            // Shares the parent's memory: only its own stack, write and pause.
            char line[64];
            int n = snprintf(line, sizeof line, "READY pid=%d fd=%d\n", getppid(), getpid());
            if (write(1, line, (size_t)n) != n) _exit(2);
            for (;;) pause();
        }
        harness_require(c > 0, "vfork");
        waitpid(c, NULL, 0);
        harness_say("BACK");
        for (int n = 1;; n++) {
            harness_wait_for_request();
            harness_say("ALIVE %d", n);
        }
    }
    if (!strcmp(argv[1], "clonevm")) {
        static char stack[64 << 10] __attribute__((aligned(16)));
        fd = clone(wait_forever, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL);
    }
    if (!strcmp(argv[1], "connect") && argc > 2) {
        // A TCP connect to 127.0.0.1:PORT left in progress (the caller's listener does not
        // answer it).
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        harness_require(connect(fd, (struct sockaddr *)&to, sizeof to) != 0 && errno == EINPROGRESS, "connect in progress");
    } else if (!strcmp(argv[1], "socket")) {
        // A vsock socket (a family wb does not save), watched by an epoll set.
        fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        int ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
        harness_require(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll");
    }
    else if (!strcmp(argv[1], "userfaultfd")) fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    else if (!strcmp(argv[1], "secretmem")) {
        // Secret memory, mapped and written (memfd_secret).
        fd = (int)syscall(447 /* SYS_memfd_secret */, 0);
        harness_require(fd >= 0 && ftruncate(fd, 4096) == 0, "memfd_secret");
        char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        harness_require(p != MAP_FAILED, "mmap secret memory");
        p[0] = 's';
    }
    else if (!strcmp(argv[1], "child")) {
        pid_t c = fork();
        if (c == 0) { for (;;) pause(); }
        fd = (int)c;
    }
    harness_require(fd >= 0, argv[1]);
    harness_verify_requests();
    harness_say("READY pid=%d fd=%d", getpid(), fd);
    for (int n = 1;; n++) {
        harness_wait_for_request();
        harness_say("ALIVE %d", n);
    }
}
