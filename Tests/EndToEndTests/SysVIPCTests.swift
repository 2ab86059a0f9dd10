import Foundation
import Glibc
import Testing
import WBCore
import WBTrace

/// System V semaphore sets and message queues are saved from wb's side (values, owner,
/// permissions, every message copied without taking it) and made again, with their ids and
/// keys, in an IPC namespace of the restored process's own, as segments are.
@Suite struct SysVIPCTests {
    /// Killed by the checkpoint, the process leaves its set and queue behind (System V
    /// objects outlive their users); they are removed, as a reboot or another machine would
    /// have them, and the restored process finds its own again: same ids and keys, values,
    /// messages in order with their types, modes and queue size, twice over.
    @Test func semaphoresAndQueuesComeBackWithTheirIdsValuesAndMessages() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("sysvipc"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        let sem = try #require(field(ready, "sem").flatMap { Int32($0) }), msg = try #require(field(ready, "msg").flatMap { Int32($0) })
        defer { removeIPC(sem: sem, msg: msg) }
        let image = "\(dir)/ipc.wbimg"
        try checkpointKilled(program, to: image)

        let p = try Image(path: image).process
        let set = try #require(p.sysvSemaphores?.first)
        #expect(p.sysvSemaphores?.count == 1)
        #expect(set.id == sem && set.key == 0x4000_0000 + program.pid && set.mode == 0o640 && set.values == [1, 5, 0], "\(set)")
        let queue = try #require(p.sysvQueues?.first)
        #expect(p.sysvQueues?.count == 1)
        #expect(queue.id == msg && queue.key == 0x5000_0000 + program.pid && queue.mode == 0o640 && queue.qbytes == 12000, "\(queue)")
        #expect(queue.messages.map(\.type) == [2, 9, 5])
        #expect(queue.messages.map(\.bytes.count) == [12, 4000, 0])
        #expect(queue.messages.first?.bytes == Data("hello, queue".utf8))
        // The killed process's objects are still here, messages and all: MSG_COPY took none.
        #expect(listed("msg", id: msg)?[4] == "3")

        removeIPC(sem: sem, msg: msg)
        #expect(listed("sem", id: sem) == nil && listed("msg", id: msg) == nil)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"], "\(restored.wb.stderrText)")
        #expect(restored.wb.stderrText.contains("the process uses System V semaphore sets and message queues: it runs in an IPC namespace of its own, where they keep their ids and keys"),
                "\(restored.wb.stderrText)")
        #expect(try Paths.readLink("/proc/\(restored.pid)/ns/ipc") != Paths.readLink("/proc/self/ns/ipc"))
        // Made in the restored process's namespace, not in this one.
        #expect(listed("sem", id: sem) == nil && listed("msg", id: msg) == nil)
    }

    /// The original still runs, its set and queue still here: the copy restored beside it
    /// (in a new pid namespace, its pid being taken) gets a set and queue of its own with the
    /// same ids and keys, in its own IPC namespace, and neither touches the other's (the
    /// copy's checks take its messages and send them again; the original's stay queued).
    @Test func aCopyRestoredBesideTheOriginalGetsObjectsOfItsOwn() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("sysvipc"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        let sem = try #require(field(ready, "sem").flatMap { Int32($0) }), msg = try #require(field(ready, "msg").flatMap { Int32($0) })
        defer {
            program.signal(SIGKILL)
            removeIPC(sem: sem, msg: msg)
        }
        let image = "\(dir)/ipc.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image)
        try #require(run.code == 0, "\(run.stderr)")
        #expect(!run.stderr.contains("System V"), "\(run.stderr)")
        #expect(tracerOf(program.pid) == "0")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")

        let restored = try Restored.detach(image)
        defer { restored.kill() }
        let notes = restored.wb.stderrText
        #expect(notes.contains("runs in a new pid namespace"), "\(notes)")
        #expect(notes.contains("the process uses System V semaphore sets and message queues: it runs in an IPC namespace of its own"), "\(notes)")
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"], "\(restored.wb.stderrText)")
        #expect(listed("msg", id: msg)?[4] == "3")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
    }

    /// An image whose semaphore or message breaks the kernel's rules is refused where it is
    /// read, naming the object.
    @Test func semaphoresAndMessagesOutOfRangeAreRefusedWhereTheImageIsRead() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("sysvipc"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        let sem = try #require(field(ready, "sem").flatMap { Int32($0) }), msg = try #require(field(ready, "msg").flatMap { Int32($0) })
        defer { removeIPC(sem: sem, msg: msg) }
        let image = "\(dir)/ipc.wbimg"
        try checkpointKilled(program, to: image)
        let original = try Image(path: image)
        let cases: [(String, (inout ImageMetadata) -> Void)] = [
            ("holds the value 40000", { $0.process.sysvSemaphores![0].values[1] = 40000 }),
            ("(0 semaphores", { $0.process.sysvSemaphores![0].values = [] }),
            ("has type 0", { $0.process.sysvQueues![0].messages[0].type = 0 }),
            ("message 1 of System V message queue \(msg) has type 9 and 4000 bytes", { $0.process.sysvQueues![0].qbytes = 100 }),
            ("mode 1000", { $0.process.sysvQueues![0].mode = 0o1000 }),
        ]
        for (n, (phrase, change)) in cases.enumerated() {
            let forged = "\(dir)/forged-\(n).wbimg"
            try original.copy(to: forged, changingMetadata: change)
            let run = try wb("restore", forged, "--detach")
            #expect(run.code == 1)
            #expect(run.stderr.split(separator: "\n").count == 1 && run.stderr.contains("invalid metadata") && run.stderr.contains(phrase),
                    "\(phrase): \(run.stderr)")
        }
    }
}

/// The row of /proc/sysvipc/sem or msg for `id` in this IPC namespace, split into fields
/// (key, id, perms, then for a queue cbytes and qnum); nil when there is none.
func listed(_ table: String, id: Int32) -> [String]? {
    let rows = ((try? Paths.readText("/proc/sysvipc/\(table)")) ?? "").split(separator: "\n").dropFirst()
    return rows.map { $0.split(separator: " ").map(String.init) }.first { $0.count > 1 && $0[1] == "\(id)" }
}

/// ipcrm of a semaphore set and a message queue (either may be gone already).
func removeIPC(sem: Int32, msg: Int32) {
    if let rm = try? Child("/usr/bin/ipcrm", ["-s", "\(sem)"]) { rm.wait() }
    if let rm = try? Child("/usr/bin/ipcrm", ["-q", "\(msg)"]) { rm.wait() }
}
