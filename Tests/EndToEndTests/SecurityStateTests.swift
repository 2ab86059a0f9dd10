import Foundation
import Glibc
import Testing
import WBCore
import WBTrace

/// What a process may do comes back exactly: every capability set, securebits, user, group
/// and fs ids, supplementary groups, no_new_privs and the seccomp filters of each thread in
/// their order, the root directory, the login uid. Root restoring another user's image opens
/// its files as that user; a thread in seccomp strict mode is refused at checkpoint. Each
/// harness-security mode checks itself ("VERIFY OK" or "VERIFY BAD <what differs>"), once
/// before the checkpoint so that a BAD after the restore is the restore's.
@Suite(.serialized) struct SecurityStateTests {
    /// Sends SIGUSR1 to `pid` and returns its VERIFY line (`next` reads the program's stdout).
    static func verify(_ pid: Int32, _ next: (String) -> String?) -> String? {
        kill(pid, SIGUSR1)
        return next("VERIFY")
    }

    /// The security lines of /proc/PID/task/TID/status of every thread, by tid.
    static func securityStatus(_ pid: Int32) throws -> [Int32: [String: String]] {
        let keys = ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                    "NoNewPrivs", "Seccomp", "Seccomp_filters"]
        var out: [Int32: [String: String]] = [:]
        for tid in try ProcFS.tasks(pid) {
            let status = try ProcFS.status(pid, thread: tid)
            out[tid] = Dictionary(uniqueKeysWithValues: keys.map { ($0, status[$0] ?? "(absent)") })
        }
        return out
    }

    /// "tid T Key: before 'x', now 'y'" for every line that differs.
    static func differences(_ before: [Int32: [String: String]], _ after: [Int32: [String: String]]) -> String {
        var lines: [String] = []
        for tid in Set(before.keys).union(after.keys).sorted() {
            guard let b = before[tid] else { lines.append("tid \(tid) is new"); continue }
            guard let a = after[tid] else { lines.append("tid \(tid) is missing"); continue }
            for key in b.keys.sorted() where a[key] != b[key] {
                lines.append("tid \(tid) \(key): before '\(b[key]!)', now '\(a[key] ?? "")'")
            }
        }
        return lines.joined(separator: "; ")
    }

    /// Runs harness-security MODE, checks it verifies itself, checkpoints it with --kill and
    /// restores it with --detach. `check` sees the running program before the checkpoint.
    static func roundTrip(_ mode: String, _ args: [String] = [], dir: String,
                          check: (Child, String) throws -> Void = { _, _ in }) throws
        -> (ready: String, before: [Int32: [String: String]], restored: Restored) {
        let program = try Child(Products.harness("security"), [mode] + args)
        let ready = try #require(program.line(startingWith: "READY"), "harness-security \(mode): \(program.stderrText)")
        let first = verify(program.pid) { program.line(startingWith: $0) }
        try #require(first?.hasPrefix("VERIFY OK") == true, "before the checkpoint: \(first ?? "no answer")")
        try check(program, ready)
        let before = try securityStatus(program.pid)
        let image = "\(dir)/\(mode).wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill")
        try #require(run.code == 0, "\(run.stderr)")
        #expect(program.wait() & 0x7f == SIGKILL)
        return (ready, before, try Restored.detach(image))
    }

    @Test func droppedCapabilitiesSecurebitsGroupsAndIdsComeBackInEveryThread() throws {
        let dir = scratchDirectory()
        let (ready, before, restored) = try Self.roundTrip("caps", dir: dir) { program, ready in
            let worker = try #require(field(ready, "worker").flatMap { Int32($0) })
            // The two threads differ on purpose: capabilities and securebits are per thread.
            let status = try ProcFS.status(program.pid, thread: worker)
            #expect(status["CapEff"] == "0000000000000000" && status["Uid"] == "1001\t1001\t1002\t1002")
        }
        defer { restored.kill() }
        #expect(field(ready, "pid") == "\(restored.pid)")
        let changed = Self.differences(before, try Self.securityStatus(restored.pid))
        #expect(changed.isEmpty, "\(changed)")
        let verify = Self.verify(restored.pid) { restored.line(startingWith: $0) }
        #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
    }

    @Test func seccompFiltersOfEveryThreadComeBackInTheirOrder() throws {
        let dir = scratchDirectory()
        let (ready, before, restored) = try Self.roundTrip("seccomp", dir: dir)
        defer { restored.kill() }
        let workers = try #require(field(ready, "workers")).split(separator: ",").compactMap { Int32($0) }
        try #require(workers.count == 2, "\(ready)")
        #expect(before[workers[1]]?["Seccomp_filters"] == "2")
        let changed = Self.differences(before, try Self.securityStatus(restored.pid))
        #expect(changed.isEmpty, "\(changed)")
        for _ in 0..<2 {
            let verify = Self.verify(restored.pid) { restored.line(startingWith: $0) }
            #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        }
    }

    @Test func aChrootedProcessComesBackInItsRoot() throws {
        let dir = scratchDirectory()
        let root = "\(dir)/root"
        try #require(mkdir(root, 0o755) == 0)
        try #require(FileManager.default.createFile(atPath: "\(root)/marker", contents: Data("the marker inside the chroot\n".utf8)))
        let st = try Paths.stat(root)
        let (ready, _, restored) = try Self.roundTrip("chroot", [root], dir: dir) { program, _ in
            let link = try Paths.readLink("/proc/\(program.pid)/root")
            #expect(link == root)
        }
        defer { restored.kill() }
        #expect(field(ready, "root") == "\(st.device):\(st.inode)")
        let fd = try #require(field(ready, "fd"))
        #expect((try? Paths.readLink("/proc/\(restored.pid)/root")) == root)
        #expect((try? Paths.readLink("/proc/\(restored.pid)/cwd")) == root)
        #expect((try? Paths.readLink("/proc/\(restored.pid)/fd/\(fd)")) == "\(root)/marker")
        let verify = Self.verify(restored.pid) { restored.line(startingWith: $0) }
        #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
    }

    @Test func theLoginUidComesBack() throws {
        let dir = scratchDirectory()
        let (_, _, restored) = try Self.roundTrip("loginuid", dir: dir) { program, ready in
            // Where the kernel refuses the write (an immutable login uid without
            // CAP_AUDIT_CONTROL), the program says why and the test is cancelled with that.
            if field(ready, "skip") == "loginuid" {
                let reason = ready.range(of: "reason=").map { String(ready[$0.upperBound...]) } ?? "(none given)"
                try Test.cancel("the login uid cannot be set on this machine: \(reason)")
            }
            #expect(try Paths.readText("/proc/\(program.pid)/loginuid") == "4242")
        }
        defer { restored.kill() }
        #expect((try? Paths.readText("/proc/\(restored.pid)/loginuid")) == "4242")
        let verify = Self.verify(restored.pid) { restored.line(startingWith: $0) }
        #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
    }

    /// Pids of every process holding `path` open.
    static func holders(of path: String) -> [Int32] {
        let pids = ((try? Paths.list("/proc")) ?? []).compactMap { Int32($0) }
        return pids.filter { pid in
            ((try? Paths.list("/proc/\(pid)/fd")) ?? []).contains { (try? Paths.readLink("/proc/\(pid)/fd/\($0)")) == path }
        }
    }

    /// Waits (up to 10 s) until `pid` is gone, so that a restore can have it again.
    static func waitUntilGone(_ pid: Int32) {
        for _ in 0..<1000 where Paths.exists("/proc/\(pid)") { usleep(10_000) }
    }

    /// The image names a file its process could not have opened (root's, mode 0600): root
    /// restoring it opens files with the process's credentials, so the restore fails naming
    /// the file, or at least the restored process never holds it.
    @Test func rootRestoringAnotherUsersImageOpensItsFilesAsThatUser() throws {
        let setpriv = "/usr/bin/setpriv"
        try #require(Paths.exists(setpriv), "util-linux's setpriv starts the program as uid 1001")
        let dir = scratchDirectory()
        // mkdtemp made it 0700: uid 1001 must reach its own file in it (and through every
        // directory above it: WB_TEST_DIR is made 0755 for this).
        try #require(chmod(dir, 0o755) == 0)
        var above = Paths.directory(of: dir)
        while above.hasPrefix("/") && above != "/" {
            try #require((try Paths.stat(above)).mode & 0o001 != 0, "uid 1001 cannot pass \(above): make it 0755")
            above = Paths.directory(of: above)
        }
        let own = "\(dir)/own.txt", secret = "\(dir)/secret.txt"
        try #require(FileManager.default.createFile(atPath: own, contents: Data("uid 1001's own file\n".utf8)))
        try #require(chown(own, 1001, 1001) == 0 && chmod(own, 0o600) == 0)
        try #require(FileManager.default.createFile(atPath: secret, contents: Data("root's secret\n".utf8)))
        try #require(chown(secret, 0, 0) == 0 && chmod(secret, 0o600) == 0)

        let program = try Child(setpriv, ["--reuid=1001", "--regid=1001", "--clear-groups", Products.harness("security"), "file", own])
        let ready = try #require(program.line(startingWith: "READY"), "\(program.stderrText)")
        #expect(field(ready, "uid") == "1001" && field(ready, "gid") == "1001")
        let fd = try #require(field(ready, "fd").flatMap { Int32($0) })
        let first = Self.verify(program.pid) { program.line(startingWith: $0) }
        try #require(first?.hasPrefix("VERIFY OK") == true, "before the checkpoint: \(first ?? "no answer")")
        let image = "\(dir)/user.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill")
        try #require(run.code == 0, "\(run.stderr)")
        program.wait()

        // The image as taken restores: uid 1001 again, holding its own file.
        do {
            let restored = try Restored.detach(image)
            defer { restored.kill(); Self.waitUntilGone(restored.pid) }
            #expect(try ProcFS.status(restored.pid)["Uid"] == "1001\t1001\t1001\t1001")
            #expect((try? Paths.readLink("/proc/\(restored.pid)/fd/\(fd)")) == own)
            let verify = Self.verify(restored.pid) { restored.line(startingWith: $0) }
            #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        }

        let forged = "\(dir)/forged.wbimg"
        let original = try Image(path: image)
        let held = try #require(original.process.fds.first { $0.fd == fd })
        try #require(held.kind == .file && held.path == own && held.accessMode == O_RDWR, "\(held)")
        try original.copy(to: forged) { m in
            for i in m.process.fds.indices where m.process.fds[i].fd == fd { m.process.fds[i].path = secret }
        }
        let restore = try Child(Products.wb, ["restore", forged, "--detach"])
        if let line = restore.line(timeout: 120), let pid = Int32(line) {
            // It restored: then without the file (and not as root).
            let owned = OwnedProcess(pid)
            defer { owned.kill(); Self.waitUntilGone(pid) }
            let links = ((try? Paths.list("/proc/\(pid)/fd")) ?? []).map { ((try? Paths.readLink("/proc/\(pid)/fd/\($0)")) ?? "?") }
            #expect(!links.contains(secret), "the restored process \(pid) holds \(secret), which uid 1001 cannot open: fds \(links)")
            #expect(try ProcFS.status(pid)["Uid"] == "1001\t1001\t1001\t1001")
        } else {
            #expect(restore.exitCode == 1)
            let stderr = restore.stderrText
            #expect(stderr.split(separator: "\n").count == 1, "\(stderr)")
            #expect(stderr.contains(secret), "\(stderr)")
            #expect(stderr.contains("Permission denied") || stderr.contains("EACCES"), "\(stderr)")
            #expect(!ProcFS_exists(program.pid))
        }
        #expect(Self.holders(of: secret).isEmpty, "processes holding \(secret): \(Self.holders(of: secret))")
    }

    /// Any call but read, write, exit and sigreturn kills a thread in strict mode: wb must
    /// refuse before it makes one, even with --kill, and leave the process as it was.
    @Test func aThreadInSeccompStrictModeIsRefusedBeforeTheProcessIsTouched() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("security"), ["strict"])
        let ready = try #require(program.line(startingWith: "READY"), "\(program.stderrText)")
        let tid = try #require(field(ready, "strict").flatMap { Int32($0) })
        let first = Self.verify(program.pid) { program.line(startingWith: $0) }
        try #require(first?.hasPrefix("VERIFY OK") == true, "before the checkpoint: \(first ?? "no answer")")
        #expect(try ProcFS.status(program.pid, thread: tid)["Seccomp"] == "1")

        let image = "\(dir)/strict.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill")
        #expect(run.code == 1)
        #expect(run.stderr.split(separator: "\n").count == 1, "\(run.stderr)")
        #expect(run.stderr.contains("thread \(tid)"), "\(run.stderr)")
        #expect(run.stderr.contains("seccomp strict mode"), "\(run.stderr)")
        #expect(!Paths.exists(image))
        #expect(try Paths.list(dir).isEmpty)
        // Never attached, alive, and the strict thread still answers on its pipe.
        #expect(ProcFS_exists(program.pid) && kill(program.pid, 0) == 0)
        #expect(tracerOf(program.pid) == "0")
        #expect(try ProcFS.tasks(program.pid) == [program.pid, tid].sorted())
        for _ in 0..<2 {
            let verify = Self.verify(program.pid) { program.line(startingWith: $0) }
            #expect(verify?.hasPrefix("VERIFY OK") == true, "\(verify ?? "no answer")")
        }
    }
}
