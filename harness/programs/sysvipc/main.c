// harness-sysvipc
//
// System V semaphores and message queues as a checkpoint must keep them: a set of three
// semaphores (values 1, 5 and 0) and a queue (msg_qbytes 12000) holding three messages of
// different types and sizes (type 2: "hello, queue"; type 9: 4000 bytes of a pattern;
// type 5: empty), both mode 0640 with a key of their own (0x40000000 + pid for the set,
// 0x50000000 + pid for the queue: runs side by side do not collide, and a restored process
// keeps its pid). Prints "READY pid=N sem=ID msg=ID"; the caller removes them afterwards
// (ipcrm -s ID -q ID). Each SIGUSR1 is answered with "VERIFY OK" when key, mode, size and
// values of both are as made, both are found by key, the semaphores work (semop), and the
// messages are received in order with their types and bytes (then sent again in the same
// order, so that the next round finds them too); else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <unistd.h>

#define QBYTES 12000
#define LONG_SIZE 4000

union semun { int val; struct semid_ds *buf; unsigned short *array; };

struct message { long type; char text[LONG_SIZE]; };

static const unsigned short values[3] = { 1, 5, 0 };
static struct message sent[3];
static size_t sizes[3];

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 % 253); }

// A fresh object: one left by an earlier run of the same pid is removed first.
static int make_set(key_t key) {
    int id = semget(key, 3, IPC_CREAT | IPC_EXCL | 0640);
    if (id < 0 && errno == EEXIST) {
        semctl(semget(key, 0, 0), 0, IPC_RMID);
        id = semget(key, 3, IPC_CREAT | IPC_EXCL | 0640);
    }
    return id;
}

static int make_queue(key_t key) {
    int id = msgget(key, IPC_CREAT | IPC_EXCL | 0640);
    if (id < 0 && errno == EEXIST) {
        msgctl(msgget(key, 0), IPC_RMID, NULL);
        id = msgget(key, IPC_CREAT | IPC_EXCL | 0640);
    }
    return id;
}

static void append(char *bad, size_t size, const char *what) {
    strncat(bad, " ", size - strlen(bad) - 1);
    strncat(bad, what, size - strlen(bad) - 1);
}

static void check_semaphores(int sem, key_t key, char *bad, size_t size) {
    struct semid_ds ds;
    union semun arg = { .buf = &ds };
    if (semctl(sem, 0, IPC_STAT, arg) != 0) { append(bad, size, "sem-stat"); return; }
    if (ds.sem_perm.__key != key) append(bad, size, "sem-key");
    if ((ds.sem_perm.mode & 0777) != 0640) append(bad, size, "sem-mode");
    if (ds.sem_nsems != 3) append(bad, size, "sem-count");
    if (semget(key, 0, 0) != sem) append(bad, size, "sem-by-key");
    unsigned short now[3] = { 9, 9, 9 };
    arg.array = now;
    if (semctl(sem, 0, GETALL, arg) != 0 || memcmp(now, values, sizeof now) != 0) append(bad, size, "sem-values");
    // They work: semaphore 1 gives its 5, semaphore 2 (0) gives nothing, and 1 gets them back.
    struct sembuf take = { .sem_num = 1, .sem_op = -5, .sem_flg = IPC_NOWAIT };
    struct sembuf none = { .sem_num = 2, .sem_op = -1, .sem_flg = IPC_NOWAIT };
    struct sembuf give = { .sem_num = 1, .sem_op = 5, .sem_flg = IPC_NOWAIT };
    if (semop(sem, &take, 1) != 0) append(bad, size, "sem-take");
    else if (semop(sem, &give, 1) != 0) append(bad, size, "sem-give");
    if (semop(sem, &none, 1) == 0 || errno != EAGAIN) append(bad, size, "sem-empty");
}

static void check_queue(int msg, key_t key, char *bad, size_t size) {
    struct msqid_ds ds;
    if (msgctl(msg, IPC_STAT, &ds) != 0) { append(bad, size, "msg-stat"); return; }
    if (ds.msg_perm.__key != key) append(bad, size, "msg-key");
    if ((ds.msg_perm.mode & 0777) != 0640) append(bad, size, "msg-mode");
    if (ds.msg_qbytes != QBYTES) append(bad, size, "msg-qbytes");
    if (ds.msg_qnum != 3) append(bad, size, "msg-count");
    if (ds.__msg_cbytes != sizes[0] + sizes[1] + sizes[2]) append(bad, size, "msg-bytes");
    if (msgget(key, 0) != msg) append(bad, size, "msg-by-key");
    static struct message got[3];
    int received = 0;
    for (; received < 3; received++) {
        ssize_t n = msgrcv(msg, &got[received], sizeof got[received].text, 0, IPC_NOWAIT);
        if (n < 0) { append(bad, size, "msg-missing"); break; }
        if (got[received].type != sent[received].type) append(bad, size, "msg-type");
        if ((size_t)n != sizes[received] || memcmp(got[received].text, sent[received].text, sizes[received]) != 0) append(bad, size, "msg-bytes");
    }
    struct message extra;
    if (received == 3 && msgrcv(msg, &extra, sizeof extra.text, 0, IPC_NOWAIT) >= 0) append(bad, size, "msg-extra");
    // Back in the same order, for the next round.
    for (int i = 0; i < 3; i++) {
        if (msgsnd(msg, &sent[i], sizes[i], IPC_NOWAIT) != 0) append(bad, size, "msg-send");
    }
}

int main(void) {
    key_t sem_key = 0x40000000 + getpid(), msg_key = 0x50000000 + getpid();
    int sem = make_set(sem_key), msg = make_queue(msg_key);
    harness_require(sem >= 0, "semget");
    harness_require(msg >= 0, "msgget");
    union semun arg = { .array = (unsigned short *)values };
    harness_require(semctl(sem, 0, SETALL, arg) == 0, "semctl(SETALL)");
    struct msqid_ds ds;
    harness_require(msgctl(msg, IPC_STAT, &ds) == 0, "msgctl(IPC_STAT)");
    ds.msg_qbytes = QBYTES;
    harness_require(msgctl(msg, IPC_SET, &ds) == 0, "msgctl(IPC_SET)");
    sent[0].type = 2; strcpy(sent[0].text, "hello, queue"); sizes[0] = strlen(sent[0].text);
    sent[1].type = 9; for (size_t i = 0; i < LONG_SIZE; i++) sent[1].text[i] = (char)pattern(i);
    sizes[1] = LONG_SIZE;
    sent[2].type = 5; sizes[2] = 0;
    for (int i = 0; i < 3; i++) harness_require(msgsnd(msg, &sent[i], sizes[i], IPC_NOWAIT) == 0, "msgsnd");
    harness_verify_requests();
    harness_say("READY pid=%d sem=%d msg=%d", getpid(), sem, msg);
    for (;;) {
        harness_wait_for_request();
        char bad[512] = "";
        check_semaphores(sem, sem_key, bad, sizeof bad);
        check_queue(msg, msg_key, bad, sizeof bad);
        if (bad[0]) harness_say("VERIFY FAIL%s", bad); else harness_say("VERIFY OK");
    }
}
