// harness-locks DIR
//
// Holds file locks of every kind wb restores: a POSIX write lock on bytes 5-14 of DIR/posix,
// a shared flock on DIR/flock and an OFD write lock on the whole of DIR/ofd, then prints
// "READY pid=N". Each SIGUSR1 is answered with "VERIFY OK" when a child process it forks
// finds each lock held (F_GETLK names this process, F_OFD_GETLK sees a conflict, an exclusive
// flock of a new open of the file would block) and bytes outside the POSIX lock free; else
// "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

static char posix_path[4096], flock_path[4096], ofd_path[4096];

static int open_file(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    harness_require(fd >= 0, path);
    return fd;
}

// Run in a child: 0 when every lock of the parent is seen, else a bit per missing one.
static int check(pid_t parent) {
    int bad = 0;
    int p = open_file(posix_path);
    struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 7, .l_len = 1 };
    if (fcntl(p, F_GETLK, &l) != 0 || l.l_type != F_WRLCK || l.l_pid != parent || l.l_start != 5 || l.l_len != 10) bad |= 1;
    struct flock free = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 20, .l_len = 5 };
    if (fcntl(p, F_GETLK, &free) != 0 || free.l_type != F_UNLCK) bad |= 2;
    int f = open_file(flock_path);
    if (flock(f, LOCK_EX | LOCK_NB) == 0) bad |= 4;
    if (flock(f, LOCK_SH | LOCK_NB) != 0) bad |= 8;   // shared with the parent's
    int o = open_file(ofd_path);
    struct flock ol = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
    if (fcntl(o, F_OFD_GETLK, &ol) != 0 || ol.l_type != F_WRLCK) bad |= 16;
    return bad;
}

int main(int argc, char **argv) {
    harness_require(argc == 2, "usage: harness-locks DIR");
    snprintf(posix_path, sizeof posix_path, "%s/posix", argv[1]);
    snprintf(flock_path, sizeof flock_path, "%s/flock", argv[1]);
    snprintf(ofd_path, sizeof ofd_path, "%s/ofd", argv[1]);
    int p = open_file(posix_path), f = open_file(flock_path), o = open_file(ofd_path);
    struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 5, .l_len = 10 };
    harness_require(fcntl(p, F_SETLK, &l) == 0, "F_SETLK");
    harness_require(flock(f, LOCK_SH | LOCK_NB) == 0, "flock");
    struct flock ol = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
    harness_require(fcntl(o, F_OFD_SETLK, &ol) == 0, "F_OFD_SETLK");
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        pid_t parent = getpid(), child = fork();
        if (child == 0) _exit(check(parent));
        int st = 0;
        while (waitpid(child, &st, 0) < 0) {}
        int bad = WIFEXITED(st) ? WEXITSTATUS(st) : 255;
        if (bad == 0) harness_say("VERIFY OK");
        else harness_say("VERIFY FAIL%s%s%s%s%s", bad & 1 ? " posix-lock" : "", bad & 2 ? " posix-range" : "",
                         bad & 4 ? " flock-exclusive" : "", bad & 8 ? " flock-shared" : "", bad & 16 ? " ofd-lock" : "");
    }
}
