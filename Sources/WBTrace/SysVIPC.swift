import CWBNative
import Foundation
import Glibc
import WBCore

/// System V semaphore sets and message queues, read and made from wb's side (semctl, msgctl
/// and msgrcv need nothing from the process). The kernel keeps no list of them per process,
/// only the last pid to use each: a queue's last sender and receiver (/proc/sysvipc/msg) and
/// each semaphore's last semop (semctl GETPID). Only the IPC namespace wb runs in is visible
/// from here; `inNamespace(of:)` moves one thread into a restored process's.
public enum SysVIPC {
    public struct Object: Sendable, Equatable {
        public var id: Int32
        public var key: Int32
        /// Messages queued (message queues only).
        public var messages: Int?
    }

    /// The semaphore sets and message queues `pid` was the last to use; empty when it runs in
    /// another IPC namespace.
    public static func lastUsed(by pid: Int32) -> (semaphores: [Object], queues: [Object]) {
        guard let mine = try? Paths.readLink("/proc/self/ns/ipc"), let its = try? Paths.readLink("/proc/\(pid)/ns/ipc"),
              mine == its else { return ([], []) }
        var semaphores: [Object] = [], queues: [Object] = []
        // key msqid perms cbytes qnum lspid lrpid ...
        for f in table("/proc/sysvipc/msg") where f.count >= 7 {
            guard let key = Int32(f[0]), let id = Int32(f[1]), let n = Int(f[4]), let sent = Int32(f[5]), let received = Int32(f[6]) else { continue }
            if sent == pid || received == pid { queues.append(Object(id: id, key: key, messages: n)) }
        }
        // key semid perms nsems ...
        for f in table("/proc/sysvipc/sem") where f.count >= 4 {
            guard let key = Int32(f[0]), let id = Int32(f[1]), let n = Int32(f[3]) else { continue }
            if (0..<n).contains(where: { wb_semctl_getpid(id, $0) == pid }) { semaphores.append(Object(id: id, key: key)) }
        }
        return (semaphores, queues)
    }

    /// The rows of a /proc/sysvipc table, split into fields (its header left out).
    private static func table(_ path: String) -> [[Substring]] {
        guard let text = try? Paths.readText(path) else { return [] }
        return text.split(separator: "\n").dropFirst().map { $0.split(separator: " ") }
    }
}

// MARK: - Reading

extension SysVIPC {
    /// semctl(IPC_STAT) and semctl(GETALL) of set `id`.
    public static func semaphoreSet(_ id: Int32) throws -> SysVSemaphoreSet {
        var owner = wb_ipc_owner(), count: UInt32 = 0
        try check(wb_sem_stat(id, &owner, &count), "semctl(IPC_STAT)", "describing System V semaphore set \(id)")
        var values = [UInt16](repeating: 0, count: Int(count))
        if count > 0 {
            try check(wb_sem_getall(id, &values, count), "semctl(GETALL)", "reading the values of System V semaphore set \(id)")
        }
        return SysVSemaphoreSet(id: id, key: owner.key, mode: owner.mode, uid: owner.uid, gid: owner.gid,
                                cuid: owner.cuid, cgid: owner.cgid, values: values)
    }

    /// msgctl(IPC_STAT) of queue `id` and a copy of each of its messages (msgrcv with
    /// MSG_COPY, which leaves them queued); none longer than `largest` bytes.
    public static func messageQueue(_ id: Int32, largest: Int) throws -> SysVMessageQueue {
        var owner = wb_ipc_owner(), count: UInt64 = 0, qbytes: UInt64 = 0
        try check(wb_msg_stat(id, &owner, &count, &qbytes), "msgctl(IPC_STAT)", "describing System V message queue \(id)")
        var messages: [SysVMessage] = []
        var buffer = [UInt8](repeating: 0, count: max(largest, 1))
        // Another process may take messages meanwhile: the copy ends at the first index the
        // queue no longer holds.
        for index in 0..<Int(count) {
            var type: Int64 = 0, length = 0
            let e = wb_msg_copy(id, index, &buffer, buffer.count, &type, &length)
            if e == ENOMSG { break }
            try check(e, "msgrcv(MSG_COPY)", "copying message \(index) of System V message queue \(id)")
            messages.append(SysVMessage(type: type, bytes: Data(buffer[0..<length])))
        }
        return SysVMessageQueue(id: id, key: owner.key, mode: owner.mode, uid: owner.uid, gid: owner.gid,
                                cuid: owner.cuid, cgid: owner.cgid, qbytes: qbytes, messages: messages)
    }

    /// Whether this kernel copies a queued message without taking it (msgrcv with MSG_COPY
    /// needs CONFIG_CHECKPOINT_RESTORE; without it, ENOSYS).
    public static func copiesMessages(_ id: Int32) -> Bool {
        var byte: UInt8 = 0, type: Int64 = 0, length = 0
        let e = wb_msg_copy(id, 0, &byte, 1, &type, &length)
        return e != ENOSYS && e != EINVAL
    }

    /// The largest message this IPC namespace takes (/proc/sys/kernel/msgmax).
    public static var largestMessage: Int {
        (try? Paths.readText("/proc/sys/kernel/msgmax")).flatMap { Int($0.trimming("\n")) } ?? 8192
    }

    /// Whether `error` says the object is gone (removed with IPC_RMID, its id reused or never made).
    public static func isGone(_ error: Error) -> Bool {
        guard case let WBError.system(_, errno, _)? = error as? WBError else { return false }
        return errno == EINVAL || errno == EIDRM
    }
}

// MARK: - Making

extension SysVIPC {
    /// Runs `body` with the calling thread in the IPC namespace of `pid` (setns), and back in
    /// its own afterwards, on every exit path. The namespace is the thread's alone: nothing
    /// in `body` may hand work to another thread.
    public static func inNamespace<T>(of pid: Int32, _ body: () throws -> T) throws -> T {
        var saved: Int32 = -1
        try check(wb_ipc_enter(pid, &saved), "setns(CLONE_NEWIPC)", "entering the IPC namespace of pid \(pid) (needs CAP_SYS_ADMIN: run wb as root)")
        defer {
            // Leaving for the namespace this thread came from cannot fail for the same caller.
            let e = wb_ipc_leave(saved)
            precondition(e == 0, "returning to wb's IPC namespace failed: \(WBError.errnoText(e))")
        }
        return try body()
    }

    /// Writes `id` to /proc/sys/kernel/sem_next_id or msg_next_id (`kind` "sem" or "msg"):
    /// the next semget or msgget of this thread's IPC namespace takes it, and the file goes
    /// back to -1.
    public static func setNextID(_ kind: String, _ id: Int32) throws {
        try Paths.writeText("/proc/sys/kernel/\(kind)_next_id", "\(id)")
    }

    /// semget(key, count, IPC_CREAT | IPC_EXCL | 0600); the kernel's errno is returned as such.
    public static func createSemaphores(key: Int32, count: Int) -> (id: Int32, errno: Int32) {
        var id: Int32 = -1
        let e = wb_sem_get(key, Int32(count), IPC_CREAT | IPC_EXCL | 0o600, &id)
        return (id, e)
    }

    /// semctl(SETALL), then semctl(IPC_SET) of the owner and permissions.
    public static func setSemaphores(_ id: Int32, values: [UInt16], uid: UInt32, gid: UInt32, mode: UInt32) throws {
        try check(wb_sem_setall(id, values, UInt32(values.count)), "semctl(SETALL)", "setting the values of System V semaphore set \(id)")
        var owner = wb_ipc_owner(key: 0, uid: uid, gid: gid, cuid: 0, cgid: 0, mode: mode)
        try check(wb_sem_set_owner(id, &owner), "semctl(IPC_SET)", "setting the owner and permissions of System V semaphore set \(id)")
    }

    /// msgget(key, IPC_CREAT | IPC_EXCL | 0600); the kernel's errno is returned as such.
    public static func createQueue(key: Int32) -> (id: Int32, errno: Int32) {
        var id: Int32 = -1
        let e = wb_msg_get(key, IPC_CREAT | IPC_EXCL | 0o600, &id)
        return (id, e)
    }

    /// msgctl(IPC_SET) of the owner, permissions and msg_qbytes.
    public static func setQueue(_ id: Int32, uid: UInt32, gid: UInt32, mode: UInt32, qbytes: UInt64) throws {
        var owner = wb_ipc_owner(key: 0, uid: uid, gid: gid, cuid: 0, cgid: 0, mode: mode)
        try check(wb_msg_set_owner(id, &owner, qbytes), "msgctl(IPC_SET)", "setting the owner, permissions and size of System V message queue \(id)")
    }

    /// msgsnd(IPC_NOWAIT) of `message` onto queue `id`.
    public static func send(_ message: SysVMessage, to id: Int32) throws {
        let e = message.bytes.withUnsafeBytes { wb_msg_send(id, message.type, $0.baseAddress, $0.count) }
        try check(e, "msgsnd", "queueing a message of type \(message.type) (\(message.bytes.count) bytes) on System V message queue \(id)")
    }

    /// semctl(IPC_RMID) or msgctl(IPC_RMID), for one made and then not wanted.
    public static func removeSemaphores(_ id: Int32) { _ = wb_sem_remove(id) }
    public static func removeQueue(_ id: Int32) { _ = wb_msg_remove(id) }

    private static func check(_ e: Int32, _ call: String, _ what: String) throws {
        if e != 0 { throw WBError.system(call: call, errno: e, what: what) }
    }
}
