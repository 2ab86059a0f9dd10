import Foundation
import Glibc
import Testing
import WBCore

/// POSIX message queues (mq_open) are queues, not files at their path: a checkpoint keeps
/// their name, limits, mode and messages (taken and sent back in order while the process is
/// stopped); a restore opens the queue that is there under the name, or makes it again from
/// the image. And a path that names an object on another kind of filesystem than the image's
/// (a /proc file where a stored file was) is refused, never reopened as if it were the same.
@Suite struct MessageQueueTests {
    /// Killed by the checkpoint, the process leaves queue A behind (queues outlive their
    /// users) with its messages as they were: the restored process opens it again. Then A is
    /// removed, as another machine or a reboot would have it, and a second restore makes it
    /// from the image; the removed queue B comes back removed, with its message, both times.
    @Test func queuesComeBackWithTheirLimitsModesAndMessages() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("mqueue"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        let a = try #require(field(ready, "a"))
        defer { remove(a) }
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/mq.wbimg"
        try checkpointKilled(program, to: image)

        let fds = try Image(path: image).process.fds.filter { $0.kind == .mqueue }
        #expect(fds.count == 3, "\(fds)")
        let queueA = try #require(fds.first { $0.mqueue?.name == String(a.dropFirst()) && $0.accessMode == O_RDWR }?.mqueue)
        #expect(queueA.maxMessages == 5 && queueA.messageSize == 100 && queueA.mode == 0o640)
        #expect(queueA.messages.map { String(decoding: $0.bytes, as: UTF8.self) } == ["high", "high-2", "low", ""])
        #expect(queueA.messages.map(\.priority) == [7, 7, 1, 0])
        #expect(fds.contains { $0.deleted == true && $0.mqueue?.messages.count == 1 })
        let shown = try wb("inspect", image)
        #expect(shown.stdout.contains("queue \(a), mode 640, up to 5 messages of 100 bytes, 4 queued (13 bytes)"), "\(shown.stdout)")

        do {
            let restored = try Restored.detach(image)
            defer { restored.kill() }
            #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"], "\(restored.wb.stderrText)")
        }
        remove(a)
        do {
            let restored = try Restored.detach(image)
            defer { restored.kill() }
            #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"], "\(restored.wb.stderrText)")
        }
    }

    /// A notification registered with mq_notify cannot be read back: the checkpoint refuses,
    /// naming the fd and the queue, and the process runs on unharmed, its messages in place.
    @Test func aQueueWithANotificationIsRefusedAndLeftAsItWas() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("mqueue"), ["--notify"])
        defer { program.signal(SIGKILL) }
        let ready = try #require(program.line(startingWith: "READY"))
        let a = try #require(field(ready, "a"))
        defer { remove(a) }
        let run = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/x.wbimg", "--kill")
        #expect(run.code == 1 && run.stderr.contains("a POSIX message queue (\(a)) with a notification registered") && run.stderr.contains("mq_notify"),
                "\(run.stderr)")
        #expect(!Paths.exists("\(dir)/x.wbimg"))
        #expect(tracerOf(program.pid) == "0")
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
    }

    /// A file the process had open is replaced by a /proc file at the same path (bind
    /// mounted over it): restore refuses, naming the fd and both filesystems, instead of
    /// giving the process the kernel's file as if it were its own.
    @Test func aPathNowOnAnotherKindOfFilesystemIsRefused() throws {
        let dir = scratchDirectory()
        let data = "\(dir)/data"
        try "stored bytes\n".write(toFile: data, atomically: false, encoding: .utf8)
        let program = try Child("/bin/sh", ["-c", "exec 3<\(data); echo READY; exec sleep 600"])
        defer { program.signal(SIGKILL) }
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/file.wbimg"
        try checkpointKilled(program, to: image)
        let file = try #require(try Image(path: image).process.fds.first { $0.path == data })
        #expect(file.filesystem != nil && Filesystems.pseudo[file.filesystem!] == nil)

        let mount = try Child("/usr/bin/mount", ["--bind", "/proc/version", data])
        mount.wait()
        try #require(mount.exitCode == 0, "\(mount.stderrText)")
        defer { let u = try? Child("/usr/bin/umount", [data]); u?.wait() }
        let run = try wb("restore", image, "--detach")
        #expect(run.code == 1, "\(run.stdout)")
        #expect(run.stderr.contains("was a file on a disk or memory filesystem at \(data), and what is there now is on proc"), "\(run.stderr)")
    }

    private func remove(_ name: String) {
        let rm = try? Child(Products.harness("mqueue"), ["--remove", name])
        rm?.wait()
    }
}
