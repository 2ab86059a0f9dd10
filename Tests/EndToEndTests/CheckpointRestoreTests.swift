import Foundation
import Glibc
import Testing
import WBCore
import WBTrace

/// Checkpoint real harness programs with --kill, restore them, and let each program verify
/// itself: it prints "VERIFY OK" only if everything it set up came back exactly.
@Suite(.serialized) struct CheckpointRestoreTests {
    @Test func heapOf256MiBComesBackWithTheSameChecksum() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["256"])
        let ready = program.line(startingWith: "READY")
        let sum = try #require(field(ready, "sum"))
        let image = "\(dir)/heap.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill")
        try #require(run.code == 0, "\(run.stderr)")
        #expect(run.stdout.contains("checkpointed pid \(program.pid)"))
        #expect(program.wait() & 0x7f == SIGKILL)
        // Never-touched and zero pages cost nothing: the image is about the heap, not more.
        let size = try Paths.stat(image).size
        #expect(size > 256 << 20 && size < (256 << 20) + (64 << 20))

        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.pid == program.pid)
        kill(restored.pid, SIGUSR1)
        let verify = restored.line(startingWith: "VERIFY")
        #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        #expect(field(verify, "sum") == sum)
        #expect(field(verify, "pid") == "\(program.pid)")
    }

    @Test func fourThreadsKeepAVXRegistersTLSAndTheirTids() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("threads"), ["4"])
        let ready = try #require(program.line(startingWith: "READY"))
        let tids = try #require(field(ready, "tids"))
        let image = "\(dir)/threads.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill")
        try #require(run.code == 0, "\(run.stderr)")
        program.wait()

        let restored = try Restored.detach(image)
        defer { restored.kill() }
        let tasks = try Paths.list("/proc/\(restored.pid)/task").compactMap { Int32($0) }.sorted()
        let expected = ([program.pid] + tids.split(separator: ",").compactMap { Int32($0) }).sorted()
        #expect(tasks == expected)
        kill(restored.pid, SIGUSR1)
        let verify = restored.line(startingWith: "VERIFY")
        #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        #expect(field(verify, "tids") == tids)
        // A second round: the threads keep running correctly, not just once.
        kill(restored.pid, SIGUSR1)
        #expect(restored.line(startingWith: "VERIFY")?.hasPrefix("VERIFY OK") == true)
    }

    /// A thread with syscall user dispatch on and its selector on "block" (as Wine runs
    /// Windows code): a checkpoint that leaves it running raises no SIGSYS in it (wb's own
    /// system calls in the thread are not dispatched) and leaves dispatch on; restored, the
    /// thread has it on again.
    @Test func syscallUserDispatchIsKeptAndNeverRaisedByWb() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("dispatch"), [])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/dispatch.wbimg"
        let running = try wb("checkpoint", "\(program.pid)", "-o", image)
        #expect(running.code == 0, "\(running.stderr)")
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK", "after a checkpoint that left it running")
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"], "\(restored.wb.stderrText)")
    }

    @Test func filesPipesSignalsTimersUmaskAndCwdComeBack() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("state"), [dir])
        let ready = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        let before = program.line(startingWith: "VERIFY")
        #expect(before?.hasPrefix("VERIFY OK") == true, "\(before ?? "no answer")")
        let image = "\(dir)/state.wbimg"
        // Earlier checkpoints leave threads in restart_syscall and timers between expiry and
        // signal: the last image must still restore all of it.
        for _ in 0..<3 { try #require(try wb("checkpoint", "\(program.pid)", "-o", image).code == 0) }
        // Taken while the process ran (its memory tracked by wb meanwhile): each advised
        // mapping keeps its flag, and none has wb's own write-protect flag ("uw").
        let running = try TimelineTests.json(try wb("inspect", image, "--json", "--no-backtrace").stdout)
        let mappings = try #require(running["mappings"] as? [[String: Any]])
        let advised = try #require(field(ready, "advised")).split(separator: ",").map { "0x" + $0 }
        for (address, flag) in zip(advised, ["dc", "wf", "dd", "hg", "rr", "sr", "mg"]) {
            let m = mappings.first { $0["start"] as? String == address }
            #expect((m?["vmFlags"] as? [String])?.contains(flag) == true, "\(address): \(m ?? [:])")
        }
        #expect(!mappings.contains { ($0["vmFlags"] as? [String])?.contains("uw") == true })
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill")
        try #require(run.code == 0, "\(run.stderr)")
        program.wait()

        let inspect = try wb("inspect", image)
        #expect(inspect.code == 0)
        #expect(inspect.stdout.contains("in syscall 0 (read), restarts (ERESTARTSYS)"))
        #expect(inspect.stdout.contains("in syscall 230 (clock_nanosleep), restarts (ERESTART_RESTARTBLOCK)"))
        #expect(inspect.stdout.contains("in syscall 202 (futex), restarts (ERESTARTSYS)"))
        #expect(inspect.stdout.contains("SIGUSR2 handler 0x") && inspect.stdout.contains("SA_RESTART"))
        #expect(inspect.stdout.contains("pending for the process: SIGRTMIN+3"))
        #expect(inspect.stdout.contains("ITIMER_REAL every 20000 us"))
        #expect(inspect.stdout.contains("deletedFile \(dir)/work/gone.txt"))
        #expect(inspect.stdout.contains("20 bytes buffered"))

        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(field(ready, "pid") == "\(restored.pid)")
        for _ in 0..<2 {
            kill(restored.pid, SIGUSR1)
            let verify = restored.line(startingWith: "VERIFY")
            #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        }
        #expect(try Paths.readLink("/proc/\(restored.pid)/cwd") == "\(dir)/work")
    }

    @Test func epollLoopOverEventfdTimerfdSignalfdAndPosixTimersOnAnAltStack() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("events"), [])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/events.wbimg"
        try checkpointKilled(program, to: image)
        let inspect = try wb("inspect", image)
        #expect(inspect.stdout.contains("eventfd anon_inode:[eventfd] [O_RDWR,O_NONBLOCK] count 41"), "\(inspect.stdout)")
        #expect(inspect.stdout.contains("every 10000000 ns"))
        #expect(inspect.stdout.contains("reads SIGUSR2"))
        #expect(inspect.stdout.contains("POSIX timer 0 clock 1: SIGRTMIN+1 value 77"))
        let timers = try Image(path: image).process.fds.compactMap(\.timerfd)
        #expect(timers.contains { $0.clock == CLOCK_REALTIME && $0.settimeFlags == 3 && $0.absoluteNanoseconds != nil }, "\(timers)")
        // Away for a while: the wall-clock timer still fires at its moment, not a second late.
        usleep(1_000_000)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        for _ in 0..<2 {
            kill(restored.pid, SIGUSR1)
            let verify = restored.line(startingWith: "VERIFY")
            #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        }
    }

    /// A FIFO whose name was unlinked: its buffer is peeked, never read to an end that does
    /// not come (the checkpoint used to hang here), and it comes back as one FIFO with its
    /// bytes, shown as deleted, both fds with their flags.
    @Test func aDeletedFIFOIsCheckpointedAtOnceAndComesBackWithItsBytes() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("fifo"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/fifo.wbimg"
        let started = Date()
        let run = try wb(["checkpoint", "\(program.pid)", "-o", image, "--kill"], timeout: 20)
        try #require(run.code == 0, "\(run.stderr)")
        #expect(Date().timeIntervalSince(started) < 10)
        program.wait()
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(try Paths.readLink("/proc/\(restored.pid)/fd/3") == "\(dir)/fifo (deleted)")
        #expect(!Paths.exists("\(dir)/fifo"))
        for v in restored.verify(rounds: 2) { #expect(v == "VERIFY OK", "\(v)") }
    }

    /// An inotify instance comes back with each watch under the descriptor the process knows
    /// (a gap left by a removed watch included), and events arrive on them; no event the
    /// restore itself caused waits in its queue.
    @Test func inotifyWatchesComeBackWithTheirDescriptors() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("inotify"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/inotify.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        for v in restored.verify(rounds: 2) { #expect(v == "VERIFY OK", "\(v)") }
    }

    /// A fanotify group comes back with its settings and marks: an inode mark, a directory
    /// mark for its children's opens, and an ignore mask that survives modification.
    @Test func fanotifyMarksComeBackWithTheirMasks() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("fanotify"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/fanotify.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        for v in restored.verify(rounds: 2) { #expect(v == "VERIFY OK", "\(v)") }
    }

    /// Signal-driven I/O: each O_ASYNC fd keeps its owner (the process, or one thread) and
    /// its signal (F_SETSIG), so data arriving after the restore signals as before.
    @Test func signalDrivenIOKeepsItsOwnersAndSignals() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("sigio"), [])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/sigio.wbimg"
        try checkpointKilled(program, to: image)
        let owners = try Image(path: image).process.fds.compactMap(\.signalOwner)
        #expect(owners.count == 2 && owners.allSatisfy { $0.pid == program.pid }, "\(owners)")
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        for v in restored.verify(rounds: 2) { #expect(v == "VERIFY OK", "\(v) \(restored.wb.stderrText)") }
    }

    /// NUMA memory policies: each thread's (interleave; bind with static nodes) and each
    /// mapping's own (preferred; bind with relative nodes) come back; a mapping without one
    /// gets none.
    @Test func numaPoliciesOfThreadsAndMappingsComeBack() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("numa"), [])
        let ready = try #require(program.line(startingWith: "READY") ?? program.line(startingWith: "UNSUPPORTED"))
        try #require(ready.hasPrefix("READY"), "this kernel has no NUMA memory policies: \(ready)")
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/numa.wbimg"
        try checkpointKilled(program, to: image)
        let p = try Image(path: image).process
        #expect(p.threads.compactMap(\.numaPolicy).map(\.mode).sorted() == [3, 2 | 1 << 15], "\(p.threads.map(\.numaPolicy))")
        #expect(p.mappings.compactMap(\.numaPolicy).map(\.mode).sorted() == [1, 2 | 1 << 14], "\(p.mappings.compactMap(\.numaPolicy))")
        let shown = try wb("inspect", image)
        #expect(shown.stdout.contains("interleave nodes 0") && shown.stdout.contains("bind (static) nodes 0") && shown.stdout.contains("bind (relative) nodes 0"),
                "\(shown.stdout)")
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        for v in restored.verify(rounds: 2) { #expect(v == "VERIFY OK", "\(v) \(restored.wb.stderrText)") }
    }

    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from where they were: restored 3 s after the
    /// checkpoint, the process sees well under that much time gone, and a thread sleeping to
    /// an absolute monotonic deadline wakes at it (not 3 s early). With --host-clocks the
    /// clocks are this machine's and the gap shows.
    @Test func monotonicClocksGoOnFromTheCheckpoint() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("clocks"), ["2.5"])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/clocks.wbimg"
        try checkpointKilled(program, to: image)
        #expect(try Image(path: image).process.clocks?.count == 2)
        #expect(try wb("inspect", image).stdout.contains("CLOCK_MONOTONIC"))
        usleep(3_000_000)
        do {
            let restored = try Restored.detach(image)
            defer { restored.kill() }
            let verify = restored.verify().first ?? ""
            #expect(verify.hasPrefix("VERIFY OK"), "\(verify) \(restored.wb.stderrText)")
            let woke = try #require(restored.line(startingWith: "WOKE", timeout: 10))
            let at = try #require(field(woke, "monotonic").flatMap { Double($0) })
            #expect(at >= 1.5 && at < 2.5, "\(woke)")
            #expect(try Paths.readLink("/proc/\(restored.pid)/ns/time") != Paths.readLink("/proc/self/ns/time"))
        }
        let host = try Restored.detach(image, ["--host-clocks"])
        defer { host.kill() }
        #expect(host.verify().first?.hasPrefix("VERIFY FAIL clock-jump") == true)
    }

    /// What restore does not rebuild around the process is said, not left silent: a cgroup
    /// of its own (its limits are not the restoring one's) and a session keyring of its own
    /// (as systemd gives each service).
    @Test func aCgroupAndASessionKeyringOfItsOwnAreNoted() throws {
        try #require(Paths.exists("/usr/bin/keyctl"), "harness/test installs keyutils")
        let mounts = try Paths.readText("/proc/self/mountinfo").split(separator: "\n")
        let root = try #require(mounts.first { $0.contains(" - cgroup2 ") }.map { String($0.split(separator: " ")[4]) }, "no cgroup2 mount")
        let group = "\(root)/wb-test-\(getpid())"
        try Paths.makeDirectories(group)
        defer {
            for _ in 0..<50 where Paths.exists(group) { if rmdir(group) != 0 { usleep(100_000) } }
        }
        let dir = scratchDirectory()
        let program = try Child("/usr/bin/keyctl", ["session", "-", "/bin/sh", "-c", "echo READY; exec sleep 600"])
        _ = try #require(program.line(startingWith: "READY"))
        try Paths.writeText("\(group)/cgroup.procs", "\(program.pid)\n")
        let image = "\(dir)/keyring.wbimg"
        try checkpointKilled(program, to: image)
        let p = try Image(path: image).process
        #expect(p.cgroups?.contains(":/wb-test-\(getpid())") == true, "\(p.cgroups ?? [])")
        #expect(p.sessionKeyring != nil && p.sessionKeyring != Keyrings.session())
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        let notes = restored.wb.stderrText
        #expect(notes.contains("the process was in cgroup cgroup2:/wb-test-\(getpid()); restored, it is in"), "\(notes)")
        #expect(notes.contains("the process had session keyring \(p.sessionKeyring ?? 0)"), "\(notes)")
    }

    /// A small file mapped shared (a JVM's perf data) comes back shared with the file where it
    /// still is, and where it is gone (another machine, a cleaned /tmp) as a copy of the image's,
    /// linked nowhere, with a note; the counter the process keeps there goes on either way.
    @Test func aSmallFileMappedSharedComesBackWhereItIsGone() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("sharedfile"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK count=1")
        let image = "\(dir)/shared.wbimg"
        try checkpointKilled(program, to: image)
        do {
            let restored = try Restored.detach(image)
            defer { restored.kill() }
            #expect(restored.verify() == ["VERIFY OK count=2"], "\(restored.wb.stderrText)")
            #expect(try ProcFS.maps(restored.pid).contains { $0.path == "\(dir)/stats" })
        }
        Paths.remove("\(dir)/stats")
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK count=2", "VERIFY OK count=3"], "\(restored.wb.stderrText)")
        #expect(restored.wb.stderrText.contains("\(dir)/stats, mapped shared, no longer exists here: the process maps a copy of the image's"), "\(restored.wb.stderrText)")
    }

    /// Kernel aio contexts come back under the ids the program knows (their rings at the
    /// same addresses, of the same sizes), and a thread blocked in io_getevents on one
    /// reaps what is submitted after the restore.
    @Test func aioContextsComeBackUnderTheirIds() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("aio"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let rings = try ProcFS.maps(program.pid).filter { $0.path == "/[aio] (deleted)" }.map { "\(hex($0.start))-\(hex($0.end))" }
        #expect(rings.count == 2)
        let image = "\(dir)/aio.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        for v in restored.verify(rounds: 2) { #expect(v == "VERIFY OK", "\(v)") }
        #expect(try ProcFS.maps(restored.pid).filter { $0.path == "/[aio] (deleted)" }.map { "\(hex($0.start))-\(hex($0.end))" } == rings)
    }

    /// Completed aio events not reaped yet cannot be put back: the checkpoint refuses,
    /// naming the context, and the program runs on.
    @Test func unreapedAioCompletionsAreRefused() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("aio"), [dir, "--unreaped"])
        defer { program.signal(SIGKILL) }
        _ = try #require(program.line(startingWith: "READY"))
        let run = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/x.wbimg", "--kill")
        #expect(run.code == 1 && run.stderr.contains("holds 1 completed event not reaped yet"), "\(run.stderr)")
        #expect(!Paths.exists("\(dir)/x.wbimg"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") != nil)
    }

    /// A process in a UTS namespace of its own gets one again with its host and domain
    /// names (wb's own names untouched); its mount namespace of its own is told in a note.
    @Test func aUTSNamespaceOfItsOwnComesBackWithItsNames() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("namespaces"), [])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/ns.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill")
        #expect(run.code == 0 && run.stderr.contains("mount namespace of its own"), "\(run.stderr)")
        program.wait()
        let here = ProcessInfo.processInfo.hostName
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        for v in restored.verify(rounds: 2) { #expect(v == "VERIFY OK", "\(v)") }
        #expect(ProcessInfo.processInfo.hostName == here)
        // Whoever restores it is told too, not only whoever took the checkpoint.
        #expect(restored.wb.stderrText.contains("the process was in a mount namespace of its own"), "\(restored.wb.stderrText)")
    }

    /// Memory of hugetlb huge pages (MAP_HUGETLB, private and shared) comes back with its
    /// bytes, of huge pages again; with none free here, of ordinary pages, noted.
    @Test func hugetlbMemoryComesBackOfHugePages() throws {
        let dir = scratchDirectory()
        let sysctl = "/proc/sys/vm/nr_hugepages"
        let before = try Paths.readText(sysctl).trimming("\n")
        defer { try? before.write(toFile: sysctl, atomically: false, encoding: .utf8) }
        try "\((Int(before) ?? 0) + 4)".write(toFile: sysctl, atomically: false, encoding: .utf8)
        let program = try Child(Products.harness("hugetlb"), [])
        _ = try #require(program.line(startingWith: "READY"), "\(program.stderrText)")
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/huge.wbimg"
        try checkpointKilled(program, to: image)
        do {
            let restored = try Restored.detach(image)
            defer { restored.kill() }
            for v in restored.verify(rounds: 2) { #expect(v == "VERIFY OK", "\(v)") }
        }
        usleep(200_000)
        try before.write(toFile: sysctl, atomically: false, encoding: .utf8)
        if (Int(before) ?? 0) == 0 {
            let restored = try Restored.detach(image)
            defer { restored.kill() }
            #expect(restored.verify() == ["VERIFY FAIL huge-pages"])
            #expect(restored.wb.stderrText.contains("was of 2 MiB huge pages (hugetlb); this machine cannot give 1 of them"), "\(restored.wb.stderrText)")
        }
    }

    /// POSIX, OFD and flock locks come back held (a child of the restored process sees each),
    /// and a lock someone else took meanwhile stops the restore, naming it.
    @Test func fileLocksComeBackHeld() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("locks"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/locks.wbimg"
        try checkpointKilled(program, to: image)
        do {
            let restored = try Restored.detach(image)
            defer { restored.kill() }
            for v in restored.verify(rounds: 2) { #expect(v == "VERIFY OK", "\(v)") }
        }
        // Another process takes the flock while the image waits: the restore says so.
        let holder = try Child("/usr/bin/flock", ["-x", "\(dir)/flock", "sleep", "30"])
        defer { holder.signal(SIGKILL) }
        var held = false
        for _ in 0..<200 where !held { held = ((try? Paths.readText("/proc/locks")) ?? "").contains("FLOCK  ADVISORY  WRITE"); usleep(10_000) }
        try #require(held)
        usleep(300_000)
        let refused = try wb("restore", image, "--detach")
        #expect(refused.code == 1)
        #expect(refused.stderr.contains("read flock lock on fd") && refused.stderr.contains("another process holds a lock there now"), "\(refused.stderr)")
    }

    /// Directories removed while in use come back removed: the working directory, an fd of
    /// it, another directory open three ways (read, reopened through /proc/self/fd after the
    /// removal, O_PATH), each with its mode, one directory per original, nothing left behind.
    @Test func removedDirectoriesComeBackRemoved() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("deleteddir"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/deleteddir.wbimg"
        try checkpointKilled(program, to: image)
        let inspect = try wb("inspect", image)
        #expect(inspect.stdout.contains("\(dir)/work (deleted)") && inspect.stdout.contains("\(dir)/held (deleted)"), "\(inspect.stdout)")
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"])
        #expect(try Paths.readLink("/proc/\(restored.pid)/cwd") == "\(dir)/work (deleted)")
        #expect(!Paths.exists("\(dir)/work") && !Paths.exists("\(dir)/held"))
        // Its name taken meanwhile: made elsewhere, removed there too, with a note.
        restored.kill()
        try FileManager.default.createDirectory(atPath: "\(dir)/held", withIntermediateDirectories: false)
        let again = try Restored.detach(image)
        defer { again.kill() }
        #expect(again.wb.stderrText.contains("the deleted directory \(dir)/held (deleted) (fd 4) cannot be made at its name here"), "\(again.wb.stderrText)")
        #expect(again.verify() == ["VERIFY FAIL held reopened o-path"])
        #expect(Paths.exists("\(dir)/held") && (try? FileManager.default.contentsOfDirectory(atPath: "/tmp").filter { $0.hasPrefix(".wb-dir-") }) == [])
    }

    /// Files whose names are gone keep their attributes: a memfd's mode and seals, a deleted
    /// file's holes, mode and modification time, and both their offsets.
    @Test func deletedFilesAndMemfdsKeepModeSealsHolesAndTimes() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("deleted"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/deleted.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify() == ["VERIFY OK"])
    }

    /// pidfds come back naming the same process: the process itself, or a child restored
    /// with it (--tree); one of a process that is gone is refused by name, untouched.
    @Test(arguments: ["self", "child", "dead"]) func pidfdsNameTheSameProcess(kind: String) throws {
        let dir = scratchDirectory("pidfd\(kind)")
        let program = try Child(Products.harness("pidfds"), [kind])
        let ready = try #require(program.line(startingWith: "READY"))
        let child = Int32(field(ready, "child") ?? "0") ?? 0
        defer { if kind == "child" { kill(child, SIGKILL) } }
        let image = "\(dir)/pidfd.wbimg"
        let run = try wb(["checkpoint", "\(program.pid)", "-o", image, "--kill"] + (kind == "child" ? ["--tree"] : []))
        if kind == "dead" {
            #expect(run.code == 1 && run.stderr.contains("is a pidfd of a process that has exited"), "\(run.stderr)")
            kill(program.pid, SIGUSR1)
            #expect(program.line(startingWith: "VERIFY")?.hasPrefix("VERIFY FAIL") == true)   // its target is gone, as it was
            return
        }
        try #require(run.code == 0, "\(run.stderr)")
        program.wait()
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify() == ["VERIFY OK"])
    }

    /// A process stopped by job control comes back stopped, and SIGCONT wakes it.
    @Test func aStoppedProcessComesBackStopped() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("fifo"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGSTOP)
        var state = ""
        for _ in 0..<200 where !state.hasPrefix("T") { state = (try? ProcFS.status(program.pid)["State"]) ?? ""; usleep(5000) }
        let image = "\(dir)/stopped.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect((try ProcFS.status(restored.pid)["State"])?.hasPrefix("T (stopped)") == true)
        kill(restored.pid, SIGCONT)
        kill(restored.pid, SIGUSR1)
        #expect(restored.line(startingWith: "VERIFY") == "VERIFY OK")
    }

    /// A checkpoint that leaves the process running leaves it as it was: harness-events
    /// (which ignores SIGTRAP, the signal of wb's own single steps) still verifies itself,
    /// and so does its restored copy.
    @Test func leavingTheProcessRunningLeavesItsSignalsAsTheyWere() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("events"), [])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/running.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--leave-running")
        try #require(run.code == 0, "\(run.stderr)")
        kill(program.pid, SIGUSR1)
        let original = program.line(startingWith: "VERIFY")
        #expect(original?.hasPrefix("VERIFY OK") == true, "\(original ?? "no answer")")
        program.signal(SIGKILL)
        program.wait()
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify().first?.hasPrefix("VERIFY OK") == true)
    }

    /// A process that unmapped its vdso is checkpointed through a syscall instruction of its
    /// own code and comes back without one.
    @Test func aProcessWithoutAVdsoComesBackWithoutOne() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("novdso"), [])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/novdso.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"])
    }

    @Test func aVdsoThatMovedIsReachedThroughTheOldEntryPoints() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("events"), [])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/vdso.wbimg"
        try checkpointKilled(program, to: image)
        let imageVdso = try Image(path: image).process.mappings.first { $0.kind == .vdso }!
        let restored = try Restored.detach(image, env: ["WB_RESTORE_VDSO": "redirect"])
        defer { restored.kill() }
        let maps = try ProcFS.maps(restored.pid, withFlags: false)
        let vdso = try #require(maps.first { $0.path == "[vdso]" })
        #expect(vdso.start != imageVdso.start)
        #expect(maps.contains { $0.start == imageVdso.start && $0.perms == "r-xp" })
        for _ in 0..<2 {
            kill(restored.pid, SIGUSR1)
            let verify = restored.line(startingWith: "VERIFY")
            #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        }
    }

    @Test func aCPUWithoutTheImagesFeaturesIsRefusedUnlessForced() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["4"])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/cpu.wbimg"
        try checkpointKilled(program, to: image)
        // The same image, as if taken on a CPU with features this one lacks.
        let foreign = "\(dir)/foreign.wbimg"
        try Image(path: image).copy(to: foreign) { m in
            m.host.cpu.flags += ["avx512_fp16", "amx_tile"]
            m.host.cpu.model = "Future CPU"
        }
        let refused = try wb("restore", foreign, "--detach")
        #expect(refused.code == 1)
        #expect(refused.stderr.contains("lacks instructions the process may use (amx_tile, avx512_fp16) from the checkpoint host's Future CPU"), "\(refused.stderr)")
        #expect(refused.stderr.contains("--force"))
        #expect(!ProcFS_exists(program.pid))
        let forced = try Restored.detach(foreign, ["--force"])
        defer { forced.kill() }
        kill(forced.pid, SIGUSR1)
        #expect(forced.line(startingWith: "VERIFY")?.hasPrefix("VERIFY OK") == true)
    }

    @Test func portableProgramsRestoreOnACPUWithFewerFeatures() throws {
        let dir = scratchDirectory()
        let run = try Child(Products.wb, ["run", "--portable", "--", Products.harness("heap"), "4"])
        let ready = try #require(run.line(startingWith: "READY"))
        let pid = try #require(field(ready, "pid").flatMap { Int32($0) })
        #expect(try Paths.readText("/proc/\(pid)/environ").contains("GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX"))
        let image = "\(dir)/portable.wbimg"
        try #require(try wb("checkpoint", "\(pid)", "-o", image, "--kill").code == 0)
        #expect(run.exitCode == 128 + SIGKILL)
        #expect(try Image(path: image).process.portable)
        let foreign = "\(dir)/foreign.wbimg"
        try Image(path: image).copy(to: foreign) { $0.host.cpu.flags += ["avx512_fp16"] }
        let restored = try Restored.detach(foreign)
        defer { restored.kill() }
        kill(restored.pid, SIGUSR1)
        #expect(restored.line(startingWith: "VERIFY")?.hasPrefix("VERIFY OK") == true)
    }

    @Test func leaveRunningFiftyTimesNeverHarmsTheProcess() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["32", "--busy"])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/busy.wbimg"
        for i in 0..<50 {
            let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--leave-running", "--quiet")
            #expect(run.code == 0, "checkpoint \(i): \(run.stderr)")
            #expect(tracerOf(program.pid) == "0")
        }
        kill(program.pid, SIGUSR1)
        let verify = program.line(startingWith: "VERIFY")
        #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        #expect(Int(field(verify, "iterations") ?? "0")! > 0)
        // The last image is a good one: it restores in a new pid namespace (the pid is taken).
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        kill(restored.pid, SIGUSR1)
        let again = restored.line(startingWith: "VERIFY")
        #expect(again?.hasPrefix("VERIFY OK") == true, "\(again ?? "no answer")")
        #expect(field(again, "pid") == "\(program.pid)")
        #expect(restored.pid != program.pid)
        program.signal(SIGKILL)
    }

    /// An image taken while a big heap is being rewritten holds the memory of the moment of
    /// its final stop: every page written during the copy is in it, every discarded one is
    /// zero (the restored copy checks all its blocks against its checksums). Page data goes
    /// out with O_DIRECT, or through the page cache as on file systems without it.
    @Test(arguments: [false, true])
    func imagesTakenWhileTheProcessWritesRestoreItsMemoryExactly(buffered: Bool) throws {
        let dir = scratchDirectory()
        // Rewriting as fast as it can, it leaves more written regions than one kernel buffer
        // of PAGEMAP_SCAN holds, whose walk_end then lags behind the regions it reports.
        let program = try Child(Products.harness("heap"), ["256", "--busy"])
        defer { program.signal(SIGKILL) }
        _ = try #require(program.line(startingWith: "READY"))
        for round in 0..<(buffered ? 1 : 3) {
            let image = "\(dir)/busy\(round).wbimg"
            let run = try wb(["checkpoint", "\(program.pid)", "-o", image, "--quiet"], env: buffered ? ["WB_IMAGE_BUFFERED": "1"] : [:])
            try #require(run.code == 0, "round \(round): \(run.stderr)")
            let restored = try Restored.detach(image, ["--new-pidns"])
            kill(restored.pid, SIGUSR1)
            let verify = restored.line(startingWith: "VERIFY")
            #expect(verify?.hasPrefix("VERIFY OK") == true, "round \(round): \(verify ?? "no answer")")
            restored.kill()
        }
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY")?.hasPrefix("VERIFY OK") == true)
    }

    /// A process that runs another program (exec) while its memory is being copied is copied
    /// again, whole, at the final stop: the image is the new program's, and says so.
    @Test func aProcessThatExecsDuringTheCopyIsCheckpointedAsItsNewProgram() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("switcher"), [Products.harness("heap"), "16"])
        defer { program.signal(SIGKILL) }
        _ = try #require(program.line(startingWith: "ready"))
        let image = "\(dir)/switched.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image)
        try #require(run.code == 0, "\(run.stderr)")
        #expect(run.stderr.contains("started another program while its memory was copied"), "\(run.stderr)")
        let cmdline = try Image(path: image).process.cmdline
        #expect(cmdline == [Products.harness("heap"), "16"], "\(cmdline)")
        program.signal(SIGKILL)
        program.wait()
        // Caught anywhere in its start-up, it gets on once restored: once it handles SIGUSR1
        // (SigCgt bit 9), it is asked to verify its memory.
        let restored = try Restored.detach(image, ["--new-pidns"])
        defer { restored.kill() }
        var handles = false
        for _ in 0..<200 where !handles {
            let mask = (try? ProcFS.status(restored.pid))?["SigCgt"].flatMap { UInt64($0, radix: 16) } ?? 0
            handles = mask & (1 << (UInt64(SIGUSR1) - 1)) != 0
            if !handles { usleep(50_000) }
        }
        try #require(handles, "the restored program never got to its SIGUSR1 handler: \(restored.wb.stderrText)")
        kill(restored.pid, SIGUSR1)
        #expect(restored.line(startingWith: "VERIFY")?.hasPrefix("VERIFY OK") == true, "\(restored.wb.stderrText)")
    }

    @Test func interruptingWbAtRandomMomentsNeverHarmsTheProcess() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["96", "--busy"])
        _ = try #require(program.line(startingWith: "READY"))
        var generator = SplitMix(seed: 20261121)
        var completed = 0
        for round in 0..<20 {
            let image = "\(dir)/round\(round).wbimg"
            let checkpoint = try Child(Products.wb, ["checkpoint", "\(program.pid)", "-o", image, "--quiet"])
            usleep(UInt32(generator.next() % 400_000))
            let signal = [SIGKILL, SIGKILL, SIGTERM, SIGINT][round % 4]
            kill(checkpoint.pid, signal)
            let code = checkpoint.exitCode
            // Done, interrupted with a message, or ended by the signal before it began.
            #expect(code == 0 || code == 128 + signal || checkpoint.stderrText.contains("interrupted"), "round \(round): \(code) \(checkpoint.stderrText)")
            // The helper doing the work puts the process back (or finishes) on its own.
            var untraced = false
            for _ in 0..<400 where !untraced {
                untraced = tracerOf(program.pid) == "0" && !((try? Paths.list(dir)) ?? []).contains { $0.contains(".partial-") }
                if !untraced { usleep(25_000) }
            }
            #expect(untraced, "round \(round): the process is still traced or a partial image remains")
            kill(program.pid, SIGUSR1)
            let verify = program.line(startingWith: "VERIFY", timeout: 30)
            #expect(verify?.hasPrefix("VERIFY OK") == true, "round \(round): \(verify ?? "no answer")")
            if Paths.exists(image) {
                completed += 1
                #expect(throws: Never.self) { try Image(path: image).verifyData() }
            }
        }
        // Some rounds were killed before the image was complete, and left no file behind.
        #expect(completed < 20)
    }

    @Test func mappedRestoreReadsPagesStraightFromTheImage() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["64"])
        let ready = program.line(startingWith: "READY")
        let image = "\(dir)/mapped.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image, ["--map"])
        defer { restored.kill() }
        let maps = try ProcFS.maps(restored.pid, withFlags: false)
        let fromImage = maps.filter { $0.path == image }.reduce(UInt64(0)) { $0 + $1.end - $1.start }
        #expect(fromImage >= 64 << 20)
        kill(restored.pid, SIGUSR1)
        let verify = restored.line(startingWith: "VERIFY")
        #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        #expect(field(verify, "sum") == field(ready, "sum"))
    }

    @Test func foregroundRestoreForwardsSignalsAndExitsWithTheStatus() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["8"])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/fg.wbimg"
        try checkpointKilled(program, to: image)
        let wbRestore = try Child(Products.wb, ["restore", image])
        // The restored process exists once wb has rebuilt it.
        var up = false
        for _ in 0..<200 where !up {
            if let s = try? Paths.readText("/proc/\(program.pid)/status"), s.contains("State:\tS") && !s.contains("TracerPid:\t\(wbRestore.pid)") {
                up = s.contains("harness-heap")
            }
            if !up { usleep(50_000) }
        }
        #expect(up)
        wbRestore.signal(SIGUSR1)
        #expect(wbRestore.line(startingWith: "VERIFY")?.hasPrefix("VERIFY OK") == true)
        wbRestore.signal(SIGTERM)
        #expect(wbRestore.exitCode == 128 + SIGTERM)
    }

    @Test func unprivilegedUserRestoresInAUserAndPidNamespace() throws {
        let dir = scratchDirectory()
        chmod(dir, 0o777)
        let program = try Child(Products.harness("heap"), ["4"])
        let ready = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/user.wbimg"
        try checkpointKilled(program, to: image)
        chmod(image, 0o644)
        let restore = try Child("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
                                                    Products.wb, "restore", image, "--detach", "--new-pidns"],
                                env: ["HOME": dir, "XDG_CACHE_HOME": "\(dir)/cache"])
        let first = restore.line(timeout: 60)
        let pid = try #require(first.flatMap { Int32($0) }, "\(restore.stderrText)")
        #expect(restore.exitCode == 0)
        let owned = OwnedProcess(pid)
        defer { owned.kill() }
        let status = try Paths.readText("/proc/\(pid)/status")
        #expect(status.contains("Uid:\t65534"))
        #expect(status.contains("NSpid:\t\(pid)\t\(program.pid)"))
        owned.signal(SIGUSR1)
        let verify = restore.line(startingWith: "VERIFY")
        #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        #expect(field(verify, "pid") == field(ready, "pid"))
    }

    @Test func stoppedRestoreWaitsForContinue() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["4"])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/stopped.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image, ["--stopped"])
        defer { restored.kill() }
        let state = try ProcFS_state(restored.pid)
        #expect(state == "T")
        kill(restored.pid, SIGCONT)
        kill(restored.pid, SIGUSR1)
        #expect(restored.line(startingWith: "VERIFY")?.hasPrefix("VERIFY OK") == true)
    }

    /// --json says what the process is doing once let go: one that ends at once (a SIGTERM
    /// was pending for it) is "exited", not running or stopped.
    @Test func detachJSONSaysAProcessThatEndedAtOnceHasExited() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["4"])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/heap.wbimg", doomed = "\(dir)/doomed.wbimg"
        try checkpointKilled(program, to: image)
        var info = Data(count: 128)
        info[0] = UInt8(SIGTERM)
        try Image(path: image).copy(to: doomed) { $0.process.sharedPending = [PendingSignal(signal: SIGTERM, siginfo: info)] }
        let run = try wb("restore", doomed, "--detach", "--json")
        #expect(run.code == 0, "\(run.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        #expect(report["state"] as? String == "exited", "\(run.stdout)")
        #expect(report["stopped"] as? Bool == false)
    }
}

/// The one-letter state from /proc/PID/stat.
func ProcFS_state(_ pid: Int32) throws -> String {
    let text = try Paths.readText("/proc/\(pid)/stat")
    let after = text[text.index(after: text.lastIndex(of: ")")!)...]
    return String(after.split(separator: " ").first ?? "")
}

/// A small deterministic generator (SplitMix64) for reproducible random test schedules.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
}
