import CWBNative
import Glibc
import WBSystem

/// System V semaphore sets and message queues (wb saves neither). The kernel keeps no list
/// of them per process, only the last pid to use each: a queue's last sender and receiver
/// (/proc/sysvipc/msg) and each semaphore's last semop (semctl GETPID). Only the IPC
/// namespace wb runs in is visible from here.
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
