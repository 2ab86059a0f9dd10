// System V semaphore sets and message queues from wb's side (see wb_sysvipc.h).
#define _GNU_SOURCE
#include "wb_sysvipc.h"
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <time.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <unistd.h>

// semctl's fourth argument, which the caller must define (semctl(2)).
union wb_semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

_Static_assert(sizeof(unsigned short) == sizeof(uint16_t), "GETALL values are 16-bit");

static void owner_from(const struct ipc_perm *p, wb_ipc_owner *o) {
    o->key = (int32_t)p->__key;
    o->uid = p->uid; o->gid = p->gid; o->cuid = p->cuid; o->cgid = p->cgid;
    o->mode = p->mode & 0777;
}

static void owner_to(struct ipc_perm *p, const wb_ipc_owner *o) {
    p->uid = o->uid; p->gid = o->gid; p->mode = o->mode & 0777;
}

int wb_sem_stat(int id, wb_ipc_owner *owner, uint32_t *count) {
    struct semid_ds ds;
    union wb_semun arg = { .buf = &ds };
    if (semctl(id, 0, IPC_STAT, arg) < 0) return errno;
    owner_from(&ds.sem_perm, owner);
    *count = (uint32_t)ds.sem_nsems;
    return 0;
}

int wb_sem_getall(int id, uint16_t *values, uint32_t count) {
    (void)count;
    union wb_semun arg = { .array = values };
    return semctl(id, 0, GETALL, arg) < 0 ? errno : 0;
}

int wb_sem_setall(int id, const uint16_t *values, uint32_t count) {
    (void)count;
    union wb_semun arg = { .array = (unsigned short *)values };
    return semctl(id, 0, SETALL, arg) < 0 ? errno : 0;
}

int wb_sem_set_owner(int id, const wb_ipc_owner *owner) {
    struct semid_ds ds;
    union wb_semun arg = { .buf = &ds };
    if (semctl(id, 0, IPC_STAT, arg) < 0) return errno;
    owner_to(&ds.sem_perm, owner);
    return semctl(id, 0, IPC_SET, arg) < 0 ? errno : 0;
}

int wb_sem_get(int32_t key, int count, int flags, int *id) {
    int r = semget((key_t)key, count, flags);
    if (r < 0) return errno;
    *id = r;
    return 0;
}

int wb_sem_remove(int id) { return semctl(id, 0, IPC_RMID) < 0 ? errno : 0; }

int wb_msg_stat(int id, wb_ipc_owner *owner, uint64_t *messages, uint64_t *qbytes) {
    struct msqid_ds ds;
    if (msgctl(id, IPC_STAT, &ds) < 0) return errno;
    owner_from(&ds.msg_perm, owner);
    *messages = ds.msg_qnum;
    *qbytes = ds.msg_qbytes;
    return 0;
}

// struct msgbuf is laid out by hand, a long for the type and then the bytes: its mtext[1]
// would trip _FORTIFY_SOURCE.
int wb_msg_copy(int id, long index, void *buffer, size_t size, int64_t *type, size_t *length) {
    char *m = malloc(sizeof(long) + size);
    if (!m) return ENOMEM;
    ssize_t n = msgrcv(id, m, size, index, IPC_NOWAIT | MSG_COPY);
    int err = n < 0 ? errno : 0;
    if (n >= 0) {
        long t;
        memcpy(&t, m, sizeof t);
        memcpy(buffer, m + sizeof(long), (size_t)n);
        *type = t;
        *length = (size_t)n;
    }
    free(m);
    return err;
}

int wb_msg_set_owner(int id, const wb_ipc_owner *owner, uint64_t qbytes) {
    struct msqid_ds ds;
    if (msgctl(id, IPC_STAT, &ds) < 0) return errno;
    owner_to(&ds.msg_perm, owner);
    ds.msg_qbytes = qbytes;
    return msgctl(id, IPC_SET, &ds) < 0 ? errno : 0;
}

int wb_msg_get(int32_t key, int flags, int *id) {
    int r = msgget((key_t)key, flags);
    if (r < 0) return errno;
    *id = r;
    return 0;
}

int wb_msg_send(int id, int64_t type, const void *bytes, size_t length) {
    char *m = malloc(sizeof(long) + length);
    if (!m) return ENOMEM;
    long t = (long)type;
    memcpy(m, &t, sizeof t);
    if (length) memcpy(m + sizeof(long), bytes, length);
    int err = msgsnd(id, m, length, IPC_NOWAIT) < 0 ? errno : 0;
    free(m);
    return err;
}

int wb_msg_remove(int id) { return msgctl(id, IPC_RMID, NULL) < 0 ? errno : 0; }

int wb_ipc_enter(pid_t pid, int *saved) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/ipc", (int)pid);
    int here = open("/proc/thread-self/ns/ipc", O_RDONLY | O_CLOEXEC);
    if (here < 0) return errno;
    int there = open(path, O_RDONLY | O_CLOEXEC);
    if (there < 0) { int e = errno; close(here); return e; }
    int err = setns(there, CLONE_NEWIPC) < 0 ? errno : 0;
    close(there);
    if (err) { close(here); return err; }
    *saved = here;
    return 0;
}

int wb_ipc_leave(int saved) {
    int err = setns(saved, CLONE_NEWIPC) < 0 ? errno : 0;
    close(saved);
    return err;
}

// POSIX message queues: glibc's mq_* take the fd as the mqd_t. A timeout in the past makes
// a receive or send on a blocking description return at once (ETIMEDOUT, read as EAGAIN).
static const struct timespec wb_mq_now = { 0, 0 };

int wb_mq_attributes(int fd, int64_t *max_messages, int64_t *message_size, int64_t *queued) {
    struct mq_attr a;
    if (mq_getattr(fd, &a) != 0) return errno;
    *max_messages = a.mq_maxmsg; *message_size = a.mq_msgsize; *queued = a.mq_curmsgs;
    return 0;
}

int wb_mq_take(int fd, void *buffer, size_t size, uint32_t *priority, size_t *length) {
    unsigned prio = 0;
    ssize_t n = mq_timedreceive(fd, buffer, size, &prio, &wb_mq_now);
    if (n < 0) return errno == ETIMEDOUT ? EAGAIN : errno;
    *priority = prio; *length = (size_t)n;
    return 0;
}

int wb_mq_put(int fd, const void *bytes, size_t length, uint32_t priority) {
    if (mq_timedsend(fd, bytes, length, priority, &wb_mq_now) != 0) return errno == ETIMEDOUT ? EAGAIN : errno;
    return 0;
}
