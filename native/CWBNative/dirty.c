// Dirty-page tracking for checkpoints that pause a process only briefly: wb write-protects
// the process's anonymous memory with a userfaultfd in async mode (the kernel resolves the
// faults itself and only records that a page was written), copies memory while the process
// runs, and asks PAGEMAP_SCAN which pages were written since.
#define _GNU_SOURCE
#include <fcntl.h>
#include "wb_native.h"
#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <stdlib.h>

#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

// Mirrors struct pm_scan_arg / PAGEMAP_SCAN from linux/fs.h (Linux 6.7).
struct wb_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
_Static_assert(sizeof(struct wb_pm_scan_arg) == 96, "struct pm_scan_arg is 96 bytes");
_Static_assert(sizeof(wb_page_region) == 24, "struct page_region is 24 bytes");
#define WB_PAGEMAP_SCAN _IOWR('f', 16, struct wb_pm_scan_arg)

int wb_pidfd_open(pid_t pid, int *fd) {
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) return errno;
    if (fcntl(pidfd, F_SETFD, FD_CLOEXEC) != 0) { int e = errno; close(pidfd); return e; }
    *fd = pidfd;
    return 0;
}

int wb_pidfd_getfd(int pidfd, int target_fd, int *fd) {
    int got = (int)syscall(SYS_pidfd_getfd, pidfd, target_fd, 0);
    if (got < 0) return errno;
    *fd = got;
    return 0;
}

int wb_take_fd(pid_t pid, int target_fd, int *fd) {
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) return errno;
    int got = (int)syscall(SYS_pidfd_getfd, pidfd, target_fd, 0);
    int e = errno;
    close(pidfd);
    if (got < 0) return e;
    *fd = got;
    return 0;
}

int wb_uffd_api_wp_async(int uffd, uint64_t *features) {
    struct uffdio_api api = { .api = UFFD_API,
                              .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_EVENT_REMOVE |
                                          UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP };
    if (ioctl(uffd, UFFDIO_API, &api) != 0) return errno;
    *features = api.features;
    return 0;
}

int wb_uffd_register_wp(int uffd, uint64_t start, uint64_t len) {
    struct uffdio_register reg = { .range = { start, len }, .mode = UFFDIO_REGISTER_MODE_WP };
    return ioctl(uffd, UFFDIO_REGISTER, &reg) == 0 ? 0 : errno;
}

int wb_uffd_unregister(int uffd, uint64_t start, uint64_t len) {
    struct uffdio_range range = { start, len };
    return ioctl(uffd, UFFDIO_UNREGISTER, &range) == 0 ? 0 : errno;
}

int wb_uffd_writeprotect(int uffd, uint64_t start, uint64_t len, int protect) {
    struct uffdio_writeprotect wp = { .range = { start, len }, .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0 };
    return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0 ? 0 : errno;
}

int wb_pagemap_scan(int pagemap_fd, uint64_t start, uint64_t end, uint64_t flags,
                    uint64_t category_mask, uint64_t anyof_mask, uint64_t return_mask,
                    wb_page_region *regions, uint64_t capacity, uint64_t *count, uint64_t *walk_end) {
    struct wb_pm_scan_arg arg;
    memset(&arg, 0, sizeof arg);
    arg.size = sizeof arg;
    arg.flags = flags;
    arg.start = start;
    arg.end = end;
    arg.vec = (uint64_t)(uintptr_t)regions;
    arg.vec_len = capacity;
    arg.category_mask = category_mask;
    arg.category_anyof_mask = anyof_mask;
    arg.return_mask = return_mask;
    long n = ioctl(pagemap_fd, WB_PAGEMAP_SCAN, &arg);
    if (n < 0) return errno;
    *count = (uint64_t)n;
    *walk_end = arg.walk_end;
    return 0;
}

// MARK: - Remove events

// Pages a process discards (MADV_DONTNEED, MADV_REMOVE), unmaps or moves (mremap) leave no
// written page behind for a scan to find: the event reader records those ranges instead.
struct wb_uffd_events {
    int uffd;
    int stop_pipe[2];
    pthread_t thread;
    pthread_mutex_t lock;
    uint64_t *ranges;
    int count, capacity;
    // Set from just before an event is read until it is recorded: a process's discard goes
    // on once its event is read, so a stopped process may have discarded memory whose event
    // is read but not yet recorded; taking the events waits for that.
    int busy;
};

static void *event_loop(void *arg) {
    struct wb_uffd_events *ev = arg;
    for (;;) {
        struct pollfd fds[2] = { { ev->uffd, POLLIN, 0 }, { ev->stop_pipe[0], POLLIN, 0 } };
        if (poll(fds, 2, -1) < 0) { if (errno == EINTR) continue; return NULL; }
        if (fds[1].revents) return NULL;
        struct uffd_msg msg;
        pthread_mutex_lock(&ev->lock);
        ev->busy = 1;
        pthread_mutex_unlock(&ev->lock);
        ssize_t n = read(ev->uffd, &msg, sizeof msg);
        if (n != (ssize_t)sizeof msg) {
            pthread_mutex_lock(&ev->lock);
            ev->busy = 0;
            pthread_mutex_unlock(&ev->lock);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            return NULL;
        }
        uint64_t start, end;
        if (msg.event == UFFD_EVENT_REMOVE || msg.event == UFFD_EVENT_UNMAP) {
            start = msg.arg.remove.start; end = msg.arg.remove.end;
        } else if (msg.event == UFFD_EVENT_REMAP) {
            start = msg.arg.remap.from; end = msg.arg.remap.from + msg.arg.remap.len;
        } else {
            pthread_mutex_lock(&ev->lock);
            ev->busy = 0;
            pthread_mutex_unlock(&ev->lock);
            continue;
        }
        pthread_mutex_lock(&ev->lock);
        if (ev->count == ev->capacity) {
            int cap = ev->capacity ? ev->capacity * 2 : 256;
            uint64_t *r = realloc(ev->ranges, (size_t)cap * 2 * sizeof *r);
            if (r) { ev->ranges = r; ev->capacity = cap; }
        }
        if (ev->count < ev->capacity) {
            ev->ranges[2 * ev->count] = start;
            ev->ranges[2 * ev->count + 1] = end;
            ev->count++;
        }
        ev->busy = 0;
        pthread_mutex_unlock(&ev->lock);
    }
}

void *wb_uffd_events_start(int uffd) {
    struct wb_uffd_events *ev = calloc(1, sizeof *ev);
    if (!ev) return NULL;
    ev->uffd = uffd;
    pthread_mutex_init(&ev->lock, NULL);
    if (pipe2(ev->stop_pipe, O_CLOEXEC) != 0) { free(ev); return NULL; }
    if (pthread_create(&ev->thread, NULL, event_loop, ev) != 0) {
        close(ev->stop_pipe[0]); close(ev->stop_pipe[1]); free(ev); return NULL;
    }
    return ev;
}

int wb_uffd_events_take(void *p, uint64_t *ranges, int max) {
    struct wb_uffd_events *ev = p;
    if (!ev) return 0;
    pthread_mutex_lock(&ev->lock);
    while (ev->busy) {
        pthread_mutex_unlock(&ev->lock);
        sched_yield();
        pthread_mutex_lock(&ev->lock);
    }
    int n = ev->count < max ? ev->count : max;
    memcpy(ranges, ev->ranges, (size_t)n * 2 * sizeof *ranges);
    memmove(ev->ranges, ev->ranges + 2 * n, (size_t)(ev->count - n) * 2 * sizeof *ranges);
    ev->count -= n;
    pthread_mutex_unlock(&ev->lock);
    return n;
}

void wb_uffd_events_stop(void *p) {
    struct wb_uffd_events *ev = p;
    if (!ev) return;
    char b = 1;
    if (write(ev->stop_pipe[1], &b, 1) < 0) { /* the thread ends when the fd closes too */ }
    pthread_join(ev->thread, NULL);
    close(ev->stop_pipe[0]);
    close(ev->stop_pipe[1]);
    free(ev->ranges);
    free(ev);
}
