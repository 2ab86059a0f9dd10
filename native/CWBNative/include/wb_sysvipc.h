// wb_sysvipc.h — System V semaphore sets and message queues, read and made from wb's side.
//
// semctl is variadic, msgrcv and msgsnd take a buffer that starts with the message type,
// and setns moves the calling thread only. Each wrapper returns 0 or an errno value, with
// data through out-parameters. Only WBTrace imports this module.
#ifndef WB_SYSVIPC_H
#define WB_SYSVIPC_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The struct ipc_perm fields wb saves (the low 9 bits of the mode: permissions).
typedef struct wb_ipc_owner {
    int32_t key;
    uint32_t uid, gid, cuid, cgid, mode;
} wb_ipc_owner;

/// semctl(IPC_STAT): key, owner and permissions, and how many semaphores the set holds.
int wb_sem_stat(int id, wb_ipc_owner *owner, uint32_t *count);
/// semctl(GETALL) into `count` values (`count` must be the set's size).
int wb_sem_getall(int id, uint16_t *values, uint32_t count);
/// semctl(SETALL) from `count` values.
int wb_sem_setall(int id, const uint16_t *values, uint32_t count);
/// semctl(IPC_SET): uid, gid and mode of `owner`.
int wb_sem_set_owner(int id, const wb_ipc_owner *owner);
/// semget(key, count, flags); the set's id in `*id`.
int wb_sem_get(int32_t key, int count, int flags, int *id);
/// semctl(IPC_RMID).
int wb_sem_remove(int id);

/// msgctl(IPC_STAT): key, owner and permissions, messages queued and msg_qbytes.
int wb_msg_stat(int id, wb_ipc_owner *owner, uint64_t *messages, uint64_t *qbytes);
/// msgrcv(IPC_NOWAIT | MSG_COPY): a copy of the message at `index` (0 the first), which
/// stays queued; its type in `*type` and up to `size` bytes of it in `buffer` (E2BIG when
/// it is longer), `*length` how many. ENOSYS: the kernel lacks CONFIG_CHECKPOINT_RESTORE.
int wb_msg_copy(int id, long index, void *buffer, size_t size, int64_t *type, size_t *length);
/// msgctl(IPC_SET): uid, gid and mode of `owner`, and msg_qbytes.
int wb_msg_set_owner(int id, const wb_ipc_owner *owner, uint64_t qbytes);
/// msgget(key, flags); the queue's id in `*id`.
int wb_msg_get(int32_t key, int flags, int *id);
/// msgsnd(IPC_NOWAIT) of a message of `type` holding `length` bytes.
int wb_msg_send(int id, int64_t type, const void *bytes, size_t length);
/// msgctl(IPC_RMID).
int wb_msg_remove(int id);

/// POSIX message queues (mq_open), on an fd wb opened on the queue (a /proc/PID/fd/N link),
/// never blocking: mq_getsetattr's attributes; the next message (EAGAIN when there is none),
/// its priority in `*priority` and up to `size` bytes in `buffer`, `*length` how many; a
/// message sent (EAGAIN when the queue is full).
int wb_mq_attributes(int fd, int64_t *max_messages, int64_t *message_size, int64_t *queued);
int wb_mq_take(int fd, void *buffer, size_t size, uint32_t *priority, size_t *length);
int wb_mq_put(int fd, const void *bytes, size_t length, uint32_t priority);

/// setns(CLONE_NEWIPC) of the calling thread into the IPC namespace of `pid`; `*saved` is an
/// fd of the namespace it left, for wb_ipc_leave (which closes it).
int wb_ipc_enter(pid_t pid, int *saved);
int wb_ipc_leave(int saved);

#ifdef __cplusplus
}
#endif
#endif
