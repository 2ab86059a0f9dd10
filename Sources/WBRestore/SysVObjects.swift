import Foundation
import Glibc
import WBTrace

extension Restorer {
    /// Makes the System V semaphore sets and message queues of the image's processes, each
    /// once (processes of a tree may list the same one), in the IPC namespace of their own
    /// that `isolateIPC` gave the root stub (so before any other process is forked into it).
    /// wb makes them itself, one thread of it entering that namespace: each gets its id
    /// (written to sem_next_id or msg_next_id, as segments get theirs from shm_next_id), key,
    /// owner and permissions, a set its values, a queue its size and every message in order.
    /// The creator ids are the restorer's, and no semaphore undo adjustment comes back.
    func makeSemaphoresAndQueues(in root: Tracee) throws {
        let processes = image.metadata.processes.filter { $0.zombieStatus == nil }
        guard processes.contains(where: { $0.sysvSemaphores?.isEmpty == false || $0.sysvQueues?.isEmpty == false }) else { return }
        try SysVIPC.inNamespace(of: root.pid) {
            var sets = Set<Int32>(), queues = Set<Int32>()
            for p in processes {
                for s in p.sysvSemaphores ?? [] where sets.insert(s.id).inserted { try make(s) }
                for q in p.sysvQueues ?? [] where queues.insert(q.id).inserted { try make(q, about: p) }
            }
        }
    }

    private func make(_ s: SysVSemaphoreSet) throws {
        let what = "making System V semaphore set \(s.id) (key \(Restorer.ipcKey(s.key)), \(s.values.count) semaphores)"
        try withContext(what) { try SysVIPC.setNextID("sem", s.id) }
        let (id, e) = SysVIPC.createSemaphores(key: s.key, count: s.values.count)
        guard e == 0 else { throw WBError.system(call: "semget", errno: e, what: what) }
        guard id == s.id else {
            SysVIPC.removeSemaphores(id)
            throw WBError.failed("\(what): the kernel gave it id \(id), so the process would not find it")
        }
        try SysVIPC.setSemaphores(id, values: s.values, uid: s.uid, gid: s.gid, mode: s.mode)
    }

    private func make(_ q: SysVMessageQueue, about p: ProcessState) throws {
        let what = "making System V message queue \(q.id) (key \(Restorer.ipcKey(q.key)), \(q.messages.count) messages)"
        try withContext(what) { try SysVIPC.setNextID("msg", q.id) }
        let (id, e) = SysVIPC.createQueue(key: q.key)
        guard e == 0 else { throw WBError.system(call: "msgget", errno: e, what: what) }
        guard id == q.id else {
            SysVIPC.removeQueue(id)
            throw WBError.failed("\(what): the kernel gave it id \(id), so the process would not find it")
        }
        // A new namespace takes messages up to msgmax (8 KiB); the checkpoint host's may have
        // taken longer ones. The namespace is the restored processes' alone.
        let longest = q.messages.map(\.bytes.count).max() ?? 0
        if longest > SysVIPC.largestMessage {
            try withContext(what) { try Paths.writeText("/proc/sys/kernel/msgmax", "\(longest)") }
            note("System V message queue \(q.id) holds a message of \(longest) bytes: msgmax of the restored processes' IPC namespace is raised to that", about: p)
        }
        // Room for every message first (a full queue refuses one; the kernel counts each as
        // at least one byte), then the saved size.
        let total = q.messages.reduce(UInt64(0)) { $0 + UInt64($1.bytes.count) }
        let room = max(q.qbytes, total, UInt64(q.messages.count))
        try SysVIPC.setQueue(id, uid: q.uid, gid: q.gid, mode: q.mode, qbytes: room)
        for m in q.messages { try SysVIPC.send(m, to: id) }
        if room != q.qbytes { try SysVIPC.setQueue(id, uid: q.uid, gid: q.gid, mode: q.mode, qbytes: q.qbytes) }
    }

    /// A System V key as ipcs shows it.
    static func ipcKey(_ key: Int32) -> String { String(format: "0x%08x", UInt32(bitPattern: key)) }
}
