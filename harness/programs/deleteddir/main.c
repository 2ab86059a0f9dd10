// harness-deleteddir DIR
//
// Holds directories that were removed while in use: its working directory DIR/work (mode
// 0751), also open as an fd; DIR/held (mode 0705), open as fd, opened again through
// /proc/self/fd/N after it was removed (a second open file description), and open O_PATH.
// Prints "READY pid=N"; each SIGUSR1 is answered with "VERIFY OK" when all of that still
// holds (the same directories, removed, with their modes, and nothing can be made in them),
// else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char failures[512];
static void fail(const char *what) { strcat(failures, " "); strcat(failures, what); }

static int same(struct stat *a, struct stat *b) { return a->st_dev == b->st_dev && a->st_ino == b->st_ino; }

/// The directory of `fd` is removed, a directory, with `mode`, and /proc names it `path (deleted)`.
static void check(int fd, const char *path, mode_t mode, const char *what) {
    struct stat st;
    char link[64], target[4200], expected[4200];
    if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode)) { fail(what); return; }
    if ((st.st_mode & 07777) != mode || st.st_nlink != 0) fail(what);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    target[n < 0 ? 0 : n] = 0;
    snprintf(expected, sizeof expected, "%s (deleted)", path);
    if (strcmp(target, expected) != 0) fail(what);
}

int main(int argc, char **argv) {
    harness_require(argc == 2, "usage: harness-deleteddir DIR");
    char work[4096], held[4096], link[64];
    snprintf(work, sizeof work, "%s/work", argv[1]);
    snprintf(held, sizeof held, "%s/held", argv[1]);
    umask(0);
    harness_require(mkdir(work, 0751) == 0 && mkdir(held, 0705) == 0, "mkdir");
    harness_require(chdir(work) == 0, "chdir");
    int here = open(".", O_RDONLY | O_DIRECTORY);
    int a = open(held, O_RDONLY | O_DIRECTORY);
    int path = open(held, O_PATH | O_DIRECTORY);
    harness_require(here >= 0 && a >= 0 && path >= 0, "open");
    harness_require(rmdir(held) == 0 && rmdir(work) == 0, "rmdir");
    snprintf(link, sizeof link, "/proc/self/fd/%d", a);
    int b = open(link, O_RDONLY | O_DIRECTORY);
    harness_require(b >= 0, "reopen through /proc/self/fd");
    umask(022);
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        failures[0] = 0;
        check(here, work, 0751, "cwd-fd");
        check(a, held, 0705, "held");
        check(b, held, 0705, "reopened");
        check(path, held, 0705, "o-path");
        if (!(fcntl(path, F_GETFL) & O_PATH)) fail("o-path-flag");
        struct stat cwd, st_here, st_a, st_b, st_path;
        char target[4200], expected[4200];
        ssize_t n = readlink("/proc/self/cwd", target, sizeof target - 1);
        target[n < 0 ? 0 : n] = 0;
        snprintf(expected, sizeof expected, "%s (deleted)", work);
        if (strcmp(target, expected) != 0) fail("cwd-name");
        if (stat(".", &cwd) != 0 || fstat(here, &st_here) != 0 || !same(&cwd, &st_here)) fail("cwd-is-fd");
        if (fstat(a, &st_a) != 0 || fstat(b, &st_b) != 0 || fstat(path, &st_path) != 0 ||
            !same(&st_a, &st_b) || !same(&st_a, &st_path) || same(&st_a, &cwd)) fail("identity");
        if (open("made", O_CREAT | O_WRONLY, 0600) >= 0 || errno != ENOENT) fail("create-in-removed");
        if (fchdir(a) != 0 || stat(".", &cwd) != 0 || !same(&cwd, &st_a) || fchdir(here) != 0) fail("fchdir");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
