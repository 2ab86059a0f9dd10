import Foundation
import Glibc
import Testing
import WBCore
import WBTrace

/// What wb cannot restore yet it refuses before touching the process, naming the fd or task.
@Suite struct RefusalTests {
    @Test(arguments: [("socket", "is a vsock socket"), ("userfaultfd", "is a userfaultfd"), ("secretmem", "holds secret memory (memfd_secret"),
                            ("child", "it has child process")])
    func refusesWithoutTouchingTheProcess(kind: String, phrase: String) throws {
        let dir = scratchDirectory("refuse\(kind)")
        let program = try Child(Products.harness("holder"), [kind])
        let ready = try #require(program.line(startingWith: "READY"))
        let run = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/x.wbimg")
        #expect(run.code == 1)
        let lines = run.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(run.stderr)")
        #expect(run.stderr.contains(phrase), "\(run.stderr)")
        #expect(run.stderr.contains("Nothing was changed"))
        if kind == "socket" || kind == "userfaultfd" {
            #expect(run.stderr.contains("fd \(field(ready, "fd")!) "))
        }
        #expect(!Paths.exists("\(dir)/x.wbimg"))
        #expect(try Paths.list(dir).isEmpty)
        // The process was never attached and still answers.
        #expect(tracerOf(program.pid) == "0")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "ALIVE") == "ALIVE 1")
        if kind == "child" { kill(Int32(field(ready, "fd")!)!, SIGKILL) }
    }

    /// A device whose open file holds kernel state (a TUN/TAP interface here; InfiniBand
    /// verbs, KVM, VFIO, FUSE and DRM alike) is refused, naming it, not reopened empty.
    @Test func aDeviceWithStateInTheKernelIsRefusedNotReopened() throws {
        let dir = scratchDirectory()
        let program = try Child("/bin/sh", ["-c", "exec 7<>/dev/net/tun; echo READY; exec sleep 60"])
        defer { program.signal(SIGKILL); program.wait(timeout: 30) }
        _ = try #require(program.line(startingWith: "READY"))
        usleep(100_000)
        let run = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/x.wbimg")
        #expect(run.code == 1 && run.stderr.contains("fd 7") && run.stderr.contains("TUN/TAP") && run.stderr.contains("Nothing was changed"),
                "\(run.stderr)")
        #expect(!Paths.exists("\(dir)/x.wbimg"))
    }

    /// System V semaphore sets and message queues are no longer refused: those the process
    /// was the last to use go into the image (the values; each message copied, not taken),
    /// and the process runs on with them as they were. (Only a queue whose messages the
    /// kernel cannot copy, without CONFIG_CHECKPOINT_RESTORE, is still refused.)
    @Test func systemVSemaphoresAndMessageQueuesAreSavedNotRefused() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("holder"), ["sysvipc"])
        let ready = try #require(program.line(startingWith: "READY"))
        let sem = try #require(field(ready, "sem")), msg = try #require(field(ready, "msg"))
        defer {
            program.signal(SIGKILL)
            if let rm = try? Child("/usr/bin/ipcrm", ["-s", sem, "-q", msg]) { rm.wait() }
        }
        let image = "\(dir)/ipc.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image)
        try #require(run.code == 0, "\(run.stderr)")
        #expect(!run.stderr.contains("System V"), "\(run.stderr)")
        let p = try Image(path: image).process
        #expect(p.sysvSemaphores == [SysVSemaphoreSet(id: Int32(sem)!, key: 0, mode: 0o600, uid: 0, gid: 0, cuid: 0, cgid: 0, values: [0, 1])])
        #expect(p.sysvQueues?.map(\.id) == [Int32(msg)!])
        #expect(p.sysvQueues?.first?.messages == [SysVMessage(type: 1, bytes: Data("hello".utf8 + [0, 0, 0]))])
        #expect(try Image(path: image).metadata.notes.allSatisfy { !$0.contains("System V") })
        // The message is still queued (ipcs: key msqid perms cbytes qnum ...).
        let row = ((try? Paths.readText("/proc/sysvipc/msg")) ?? "").split(separator: "\n")
            .map { $0.split(separator: " ") }.first { $0.count > 4 && $0[1] == Substring(msg) }
        #expect(row?[4] == "1")
        #expect(tracerOf(program.pid) == "0")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "ALIVE") == "ALIVE 1")
    }

    /// A thread held in the kernel (a vfork parent whose child neither calls exec nor exits)
    /// cannot be stopped: wb gives up after --stop-timeout, names what the thread waits for,
    /// leaves no image and lets the process go; a SIGTERM ends such a wait at once. Once its
    /// child is gone the process runs on normally.
    @Test func aThreadThatDoesNotStopEndsTheCheckpointWithTheProcessLetGo() throws {
        let dir = scratchDirectory()
        let (program, child) = try holderWithChild("vfork")
        var childKilled = false
        defer {
            if !childKilled { kill(child, SIGKILL) }
            program.signal(SIGKILL)
        }
        let image = "\(dir)/x.wbimg"
        let started = Clock.monotonic
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--stop-timeout", "1", "--allow-unsupported")
        #expect(run.code == 1)
        #expect(Clock.monotonic - started < 20)
        #expect(run.stderr.split(separator: "\n").count == 1, "\(run.stderr)")
        #expect(run.stderr.contains("thread \(program.pid) of pid \(program.pid) did not stop within 1 s"), "\(run.stderr)")
        #expect(run.stderr.contains("it waits for its vfork child \(child) to call exec or exit"), "\(run.stderr)")
        #expect(run.stderr.contains("--stop-timeout"), "\(run.stderr)")
        #expect(try Paths.list(dir).isEmpty)
        #expect(tracerOf(program.pid) == "0")

        // Interrupted while it waits for the stop.
        let waiting = try Child(Products.wb, ["checkpoint", "\(program.pid)", "-o", image, "--stop-timeout", "600", "--allow-unsupported"])
        usleep(500_000)
        let asked = Clock.monotonic
        waiting.signal(SIGTERM)
        #expect(waiting.exitCode == 1)
        #expect(Clock.monotonic - asked < 10)
        #expect(waiting.stderrText.contains("interrupted: the process runs on as before"), "\(waiting.stderrText)")
        #expect(!waiting.stderrText.contains("checkpoint of pid \(program.pid): checkpoint of pid"), "\(waiting.stderrText)")
        var untraced = false
        for _ in 0..<200 where !untraced {
            untraced = tracerOf(program.pid) == "0"
            if !untraced { usleep(25_000) }
        }
        #expect(untraced)
        #expect(try Paths.list(dir).isEmpty)

        // Its child gone, the process comes back from vfork and runs as before.
        kill(child, SIGKILL)
        childKilled = true
        #expect(program.line(startingWith: "BACK") == "BACK")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "ALIVE") == "ALIVE 1")
        // And can be checkpointed now.
        let done = try wb("checkpoint", "\(program.pid)", "-o", image, "--stop-timeout", "1")
        #expect(done.code == 0, "\(done.stderr)")
        #expect(throws: Never.self) { try Image(path: image).verifyData() }
    }

    /// Two checkpoints of one process at once: the second is refused as one another wb has
    /// in hand, not as one a debugger holds. The first one is made to hold the process (a vfork
    /// parent never stops, and --stop-timeout 600 keeps wb waiting) until the test ends it; a
    /// tracer that is not wb (this test) keeps the debugger wording.
    @Test func aSecondCheckpointMeanwhileNamesTheOtherWB() throws {
        let dir = scratchDirectory()
        let (program, child) = try holderWithChild("vfork")
        defer {
            kill(child, SIGKILL)
            program.signal(SIGKILL)
        }
        let first = try Child(Products.wb, ["checkpoint", "\(program.pid)", "-o", "\(dir)/first.wbimg", "--stop-timeout", "600", "--allow-unsupported"])
        // The first wb has seized the process once its TracerPid is set.
        let deadline = Clock.monotonic + 60
        while tracerOf(program.pid) == "0" && Clock.monotonic < deadline { usleep(10_000) }
        try #require(tracerOf(program.pid) != "0", "the first checkpoint never attached: \(first.stderrText)")

        let second = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/second.wbimg")
        #expect(second.code == 1)
        #expect(second.stderr.split(separator: "\n").count == 1, "\(second.stderr)")
        #expect(second.stderr.contains("pid \(program.pid) is being checkpointed (or restored/debugged) by another wb (pid \(first.pid)): wait for it to finish"),
                "\(second.stderr)")
        #expect(!second.stderr.contains("a debugger"), "\(second.stderr)")
        #expect(!Paths.exists("\(dir)/second.wbimg"))

        // The first one, ended, lets the process go and leaves nothing behind either.
        first.signal(SIGTERM)
        #expect(first.exitCode == 1)
        let untraced = Clock.monotonic + 30
        while tracerOf(program.pid) != "0" && Clock.monotonic < untraced { usleep(10_000) }
        #expect(tracerOf(program.pid) == "0")
        #expect(try Paths.list(dir).isEmpty)

        // Held by a tracer that is not wb, a process is refused as one a debugger has.
        let other = try Child(Products.harness("holder"), ["socket"])
        _ = try #require(other.line(startingWith: "READY"))
        let tracee = try Tracee.seize(other.pid)
        let tracer = try #require(tracerOf(other.pid))
        let held = try wb("checkpoint", "\(other.pid)", "-o", "\(dir)/held.wbimg")
        tracee.detach()
        #expect(held.code == 1)
        #expect(held.stderr.contains("pid \(other.pid) is already being traced by pid \(tracer) (a debugger?): detach it first"), "\(held.stderr)")
        other.signal(SIGUSR1)
        #expect(other.line(startingWith: "ALIVE") == "ALIVE 1")
    }

    @Test func allowUnsupportedStoresAPlaceholder() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("holder"), ["socket"])
        let ready = try #require(program.line(startingWith: "READY"))
        let fd = try #require(field(ready, "fd"))
        let image = "\(dir)/sock.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill", "--allow-unsupported")
        try #require(run.code == 0, "\(run.stderr)")
        #expect(run.stderr.contains("left out: fd \(fd) is a vsock socket"), "\(run.stderr)")
        program.wait()
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        // A socket the program can still hold, watch (its epoll set took the watch again) and close.
        #expect(try Paths.readLink("/proc/\(restored.pid)/fd/\(fd)").hasPrefix("socket:["))
        kill(restored.pid, SIGUSR1)
        #expect(restored.line(startingWith: "ALIVE") == "ALIVE 1")
    }
}
