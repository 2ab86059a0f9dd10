import Foundation
import Glibc
import Testing
import WBCore
import WBTrace

/// `wb checkpoint --tree` on real process trees, killed and restored whole.
@Suite(.serialized) struct ProcessTreeTests {
    @Test func aShellPipelineComesBackWithItsDataFlowing() throws {
        let dir = scratchDirectory()
        let stage = Products.harness("pipeline")
        // Every process works in a directory that is gone when the tree is restored.
        let work = "\(dir)/work"
        try #require(mkdir(work, 0o755) == 0)
        let shell = try Child("/bin/sh", ["-c", "cd '\(work)' && \(stage) produce | \(stage) filter | \(stage) consume"])
        let first = try #require(shell.line(startingWith: "ok"))
        let image = "\(dir)/pipeline.wbimg"
        let processes = try checkpointTree(shell.pid, to: image, kill: true)
        #expect(processes.count == 4)
        #expect(processes.dropFirst().allSatisfy { ($0["ppid"] as? Int) == Int(shell.pid) })
        #expect(shell.wait() & 0x7f == SIGKILL)
        // The last line the consumer had checked when the tree was stopped.
        var last = Int(first.dropFirst(3)) ?? 0
        while let l = shell.line(timeout: 2) { if l.hasPrefix("ok ") { last = Int(l.dropFirst(3)) ?? last } }
        try #require(last > 0)

        rmdir(work)
        let restored = try Restored.detach(image)
        defer { killTree(restored.pid) }
        #expect(ProcFS.children(restored.pid).count == 3)
        // Each process's note about its working directory says which process it is.
        let notes = restored.wb.stderrText.split(separator: "\n").filter { $0.hasPrefix("wb: note: ") }
        let pids = processes.compactMap { $0["pid"] as? Int }
        #expect(pids.allSatisfy { pid in notes.contains { $0 == "wb: note: pid \(pid): the working directory \(work) does not exist here; it is / instead" } }, "\(notes)")
        #expect(notes.allSatisfy { n in pids.contains { n.hasPrefix("wb: note: pid \($0): ") } }, "\(notes)")
        // The consumer checks every line follows the one before with the right hash: it goes
        // on from exactly where it was, through both restored pipes, nothing lost or repeated.
        for k in 1...3 {
            let line = restored.wb.line(timeout: 30)
            #expect(line == "ok \(last + 100 * k)", "\(line ?? "no line"): \(restored.wb.stderrText)")
        }
    }

    @Test func parentAndChildrenKeepSharedMemoryASocketPairAZombieAndTheirGroups() throws {
        let dir = scratchDirectory()
        let family = try Child(Products.harness("family"), [])
        let ready = try #require(family.line(startingWith: "ready"))
        _ = try #require(family.line(startingWith: "counter="))
        let image = "\(dir)/family.wbimg"
        let processes = try checkpointTree(family.pid, to: image, kill: true)
        #expect(processes.count == 4)
        let zombie = processes.first { $0["zombieStatus"] != nil }
        #expect(zombie?["pid"] as? Int == Int(field(ready, "b") ?? ""))
        #expect(zombie?["zombieStatus"] as? Int == 7 << 8)
        family.wait()
        var last = 0
        while let l = family.line(timeout: 2) { if l.hasPrefix("counter=") { last = Int(l.dropFirst(8)) ?? last } }

        let restored = try Restored.detach(image)
        defer { killTree(restored.pid) }
        // Only child A adds to the counter; the parent sees it grow only if the page is
        // still one page shared by both.
        #expect(counterGrows(restored, past: last), "the shared counter stopped at \(last): \(restored.wb.stderrText)")
        kill(restored.pid, SIGUSR1)
        let reaped = restored.line(startingWith: "reaped")
        #expect(field(reaped, "pid") == field(ready, "b"), "\(reaped ?? "no answer")")
        #expect(field(reaped, "status") == "\(7 << 8)")
        #expect(restored.line(startingWith: "queued") == "queued ok")
        let groups = restored.line(startingWith: "groups")
        #expect(field(groups, "a") == field(ready, "a"), "\(groups ?? "no answer")")
        #expect(field(groups, "c") == field(ready, "c"))
    }

    /// A child cloned with CLONE_FILES|CLONE_FS shares its parent's fd table, working
    /// directory and umask again after restore (a new fd and umask of the parent are its
    /// own); a forked sibling keeps its own. Checkpointed alone, the sharing is noted.
    @Test func childrenSharingTheParentsFDTableAndFSInfoShareThemAgain() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("sharedtables"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let alone = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/alone.wbimg", "--allow-unsupported")
        #expect(alone.code == 0 && alone.stderr.contains("shares its file descriptor table (CLONE_FILES) with pid \(field(ready, "s") ?? "?")"), "\(alone.stderr)")
        let image = "\(dir)/tables.wbimg"
        let processes = try checkpointTree(program.pid, to: image, kill: true)
        #expect(processes.count == 3)
        program.wait()
        let restored = try Restored.detach(image)
        defer { killTree(restored.pid) }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"], "\(restored.wb.stderrText)")
    }

    /// A forked child still sharing most of its parent's private memory copy-on-write comes
    /// back sharing the same pages (one physical page for both, by pagemap), not with a copy
    /// of its own; pages either had written are their own, and a write after the restore
    /// still gives the writer its own copy. A checkpoint that leaves the tree running leaves
    /// the sharing as it was (reading a page must not give the process a copy of it).
    @Test func aForkedChildSharesItsParentsPagesCopyOnWriteAgain() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("cow"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let running = try wb("checkpoint", "--tree", "\(program.pid)", "-o", "\(dir)/running.wbimg")
        let child = try #require(field(ready, "child"))
        let alone = try wb("checkpoint", child, "-o", "\(dir)/child.wbimg", "--allow-unsupported")
        #expect(running.code == 0 && alone.code == 0, "\(running.stderr)\n\(alone.stderr)")
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK", "the checkpoints left running unshared the tree's pages")
        let image = "\(dir)/cow.wbimg"
        let processes = try checkpointTree(program.pid, to: image, kill: true)
        #expect(processes.count == 2)
        program.wait()
        let restored = try Restored.detach(image)
        defer { killTree(restored.pid) }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"], "\(restored.wb.stderrText)")
    }

    /// A terminal session of the tree's own (a master in the parent, a child leading a
    /// session on the terminal side): the pair comes back with its window size and terminal
    /// settings, as the child's controlling terminal with its group in the foreground.
    @Test func aTerminalSessionComesBackWithItsPseudoTerminalPair() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("pty"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
        let image = "\(dir)/pty.wbimg"
        _ = try checkpointTree(program.pid, to: image, kill: true)
        program.wait()
        #expect(try wb("inspect", image).stdout.contains("ptyMaster /dev/ptmx [O_RDWR]"))
        let restored = try Restored.detach(image)
        defer { killTree(restored.pid) }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"], "\(restored.wb.stderrText)")
        let child = try #require(field(ready, "child").flatMap { Int32($0) })
        let stat = try ProcFS.stat(child)
        #expect(stat[7] != "0" && stat[8] == "\(child)", "tty_nr \(stat[7] ?? "?") tpgid \(stat[8] ?? "?")")
    }

    /// Two children sharing one fd table their parent gave up: refused by name, the tree
    /// left running.
    @Test func siblingsSharingATableTheirParentLeftAreRefused() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("sharedtables"), ["--siblings"])
        defer { killTree(program.pid) }
        _ = try #require(program.line(startingWith: "READY"))
        let run = try wb("checkpoint", "--tree", "\(program.pid)", "-o", "\(dir)/x.wbimg", "--kill")
        #expect(run.code == 1)
        #expect(run.stderr.contains("share one file descriptor table, and neither got it from its parent"), "\(run.stderr)")
        #expect(!Paths.exists("\(dir)/x.wbimg"))
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") != nil)
    }

    /// System V segments come back with their ids, key, size, permissions and contents, in
    /// an IPC namespace of the restored processes' own: one process alone, and a parent and
    /// child that share the segment (only the child adds to its counter).
    @Test(arguments: [false, true])
    func systemVAndMemfdSharedMemoryComeBackExactAndStayShared(withChild: Bool) throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("segments"), withChild ? ["--child"] : [])
        let ready = try #require(program.line(startingWith: "ready"))
        _ = try #require(program.line(startingWith: "counter="))
        let image = "\(dir)/segments.wbimg"
        // One process alone is left running (its memfd's contents must still be those of the
        // moment it was stopped), then killed; a tree is killed by wb.
        let run = try wb(["checkpoint"] + (withChild ? ["--tree", "--kill"] : []) + ["\(program.pid)", "-o", image])
        try #require(run.code == 0, "\(run.stderr)")
        if !withChild { program.signal(SIGKILL) }
        program.wait()
        let inspect = try wb("inspect", image, "--no-backtrace")
        #expect(inspect.stdout.contains("SYSTEM V SHARED MEMORY (2)"), "\(inspect.stdout)")
        #expect(inspect.stdout.contains("key 0x57420001 3.0 MiB mode 640"), "\(inspect.stdout)")
        #expect(inspect.stdout.contains("key 0x00000000 64.0 KiB mode 600 uid 0 gid 0, marked for removal"))
        var last = 0
        while let l = program.line(timeout: 2) { if l.hasPrefix("counter=") { last = Int(l.dropFirst(8)) ?? last } }
        // The segment outlives the killed process here; the restored one must not need it.
        let id = try #require(Int32(field(ready, "a") ?? ""))
        #expect(shmctl(id, IPC_RMID, nil) == 0)

        let restored = try Restored.detach(image)
        defer { killTree(restored.pid) }
        #expect(try Paths.readLink("/proc/\(restored.pid)/ns/ipc") != Paths.readLink("/proc/self/ns/ipc"))
        #expect(counterGrows(restored, past: last), "the counter stopped at \(last): \(restored.wb.stderrText)")
        kill(restored.pid, SIGUSR1)
        // Key, size, mode, lookup by key, the removed segment, the pages a helper wrote, a
        // second attach by id seeing the same memory, the memfd counter equal to its private
        // twin, and memfds holding the same bytes still objects of their own.
        let check = restored.line(startingWith: "check")
        #expect(check == "check ok", "\(check ?? "no answer"): \(restored.wb.stderrText)")
    }

    /// Left running, a tree is copied while it runs and stopped only for what it wrote
    /// meanwhile: the processes run on unharmed, and the image restores each one's memory as
    /// it was at the final stop (both heaps check every block against their checksums).
    @Test func aTreeLeftRunningIsCopiedWhileItRunsAndRestoresExactly() throws {
        let dir = scratchDirectory()
        let heap = Products.harness("heap")
        let shell = try Child("/bin/sh", ["-c", "\(heap) 128 --busy --seed 1 & \(heap) 128 --busy --seed 2 & wait"])
        defer { killTree(shell.pid) }
        for _ in 0..<2 { _ = try #require(shell.line(startingWith: "READY")) }
        let image = "\(dir)/running.wbimg"
        #expect(try checkpointTree(shell.pid, to: image, kill: false).count == 3)
        let heaps = ProcFS.children(shell.pid)
        #expect(heaps.count == 2 && heaps.allSatisfy { tracerOf($0) == "0" })
        for h in heaps { kill(h, SIGUSR1) }
        for _ in 0..<2 {
            let verify = shell.line(startingWith: "VERIFY")
            #expect(verify?.hasPrefix("VERIFY OK") == true, "the original: \(verify ?? "no answer")")
        }

        let restored = try Restored.detach(image, ["--new-pidns"])
        defer { killTree(restored.pid) }
        let children = ProcFS.children(restored.pid)
        #expect(children.count == 2)
        for c in children { kill(c, SIGUSR1) }
        for _ in 0..<2 {
            let verify = restored.line(startingWith: "VERIFY")
            #expect(verify?.hasPrefix("VERIFY OK") == true, "restored: \(verify ?? "no answer"): \(restored.wb.stderrText)")
        }
    }

    /// A shell that starts a short-lived child all the time: children born after the tree was
    /// listed, and children exiting while they are seized, belong to the tree or not, but
    /// never fail the checkpoint. The last image, taken with --kill, restores to a shell that
    /// goes on counting.
    @Test func aTreeWhoseChildrenComeAndGoIsCheckpointedEveryTime() throws {
        let dir = scratchDirectory()
        let shell = try Child("/bin/sh", ["-c", "cd '\(dir)' && i=0; while :; do i=$((i+1)); /bin/true; echo $i > count; done"])
        defer { killTree(shell.pid) }
        // The shell truncates the file before it writes: an empty read is tried again.
        func count() -> Int {
            for _ in 0..<200 {
                if let n = Int(((try? Paths.readText("\(dir)/count")) ?? "").trimming("\n")) { return n }
                usleep(1000)
            }
            return 0
        }
        while count() < 10 { usleep(10_000) }
        for round in 0..<10 {
            let last = round == 9
            let image = "\(dir)/round\(round).wbimg"
            let members = try checkpointTree(shell.pid, to: image, kill: last)
            #expect(members.first?["pid"] as? Int == Int(shell.pid))
            #expect(throws: Never.self) { try Image(path: image).verifyData() }
            if !last {
                #expect(tracerOf(shell.pid) == "0")
                let before = count()
                usleep(50_000)
                #expect(count() > before, "round \(round): the shell stopped counting")
            }
        }
        #expect(shell.wait() != 0)
        let restored = try Restored.detach("\(dir)/round9.wbimg", ["--new-pidns"])
        defer { killTree(restored.pid) }
        let before = count()
        var counting = false
        for _ in 0..<100 where !counting {
            usleep(20_000)
            counting = count() > before + 5
        }
        #expect(counting, "the restored shell does not count on: \(restored.wb.stderrText)")
    }

    /// Two processes of one address space (a child cloned with CLONE_VM) would come back as
    /// two: refused before anything is touched, leaving the tree running, left running or not.
    @Test(arguments: [false, true])
    func aChildSharingItsParentsMemoryIsRefused(kill: Bool) throws {
        let dir = scratchDirectory("sharedvm\(kill)")
        let (program, child) = try holderWithChild("clonevm")
        defer { killTree(program.pid) }
        let run = try wb(["checkpoint", "--tree", "\(program.pid)", "-o", "\(dir)/x.wbimg"] + (kill ? ["--kill"] : []))
        #expect(run.code == 1)
        #expect(run.stderr.split(separator: "\n").count == 1, "\(run.stderr)")
        #expect(run.stderr.contains("pid \(child) shares its memory with its parent \(program.pid)"), "\(run.stderr)")
        #expect(try Paths.list(dir).isEmpty)
        #expect(tracerOf(program.pid) == "0" && tracerOf(child) == "0")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "ALIVE") == "ALIVE 1")
    }

    /// The CLONE_VM child alone: taken, with a note that its memory is no longer shared once
    /// restored; the two processes run on.
    @Test func aChildSharingItsParentsMemoryCheckpointedAloneIsNoted() throws {
        let dir = scratchDirectory()
        let (program, child) = try holderWithChild("clonevm")
        defer { killTree(program.pid) }
        let run = try wb(["checkpoint", "\(child)", "-o", "\(dir)/x.wbimg", "--json"])
        try #require(run.code == 0, "\(run.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        let notes = report["notes"] as? [String] ?? []
        #expect(notes.contains { $0.contains("pid \(child) shares its memory with its parent \(program.pid)") }, "\(notes)")
        #expect(Paths.exists("\(dir)/x.wbimg"))
        #expect(tracerOf(program.pid) == "0" && tracerOf(child) == "0")
        #expect(ProcFS.exists(child))
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "ALIVE") == "ALIVE 1")
    }

    @Test func withoutTreeAProcessWithChildrenIsRefusedNamingTheFlag() throws {
        let dir = scratchDirectory()
        let family = try Child(Products.harness("family"), [])
        _ = try #require(family.line(startingWith: "ready"))
        let run = try wb("checkpoint", "\(family.pid)", "-o", "\(dir)/one.wbimg")
        #expect(run.code != 0)
        #expect(run.stderr.contains("wb checkpoint --tree \(family.pid)"), "\(run.stderr)")
        #expect(!Paths.exists("\(dir)/one.wbimg"))
        #expect(family.line(startingWith: "counter=") != nil)
        killTree(family.pid)
    }
}

/// `wb checkpoint --tree PID -o IMAGE --json`, killing the tree or leaving it running: the
/// processes its report lists.
func checkpointTree(_ pid: Int32, to image: String, kill: Bool) throws -> [[String: Any]] {
    let run = try wb(["checkpoint", "--tree", "\(pid)", "-o", image, "--json"] + (kill ? ["--kill"] : []))
    try #require(run.code == 0, "\(run.stderr)")
    let report = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
    return try #require(report["processes"] as? [[String: Any]])
}

/// Whether a restored program's "counter=N" lines go past `last` by more than 100.
func counterGrows(_ restored: Restored, past last: Int) -> Bool {
    for _ in 0..<200 {
        guard let l = restored.line(startingWith: "counter=", timeout: 10) else { return false }
        if (Int(l.dropFirst(8)) ?? 0) > last + 100 { return true }
    }
    return false
}

/// Kills a process and all its descendants, children first.
func killTree(_ pid: Int32) {
    for child in ProcFS.children(pid) { killTree(child) }
    kill(pid, SIGKILL)
}
