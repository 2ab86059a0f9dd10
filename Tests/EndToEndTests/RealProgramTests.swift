import Foundation
import Glibc
import Testing
import WBCore

/// Programs nobody here wrote, from Debian's packages (installed by harness/test).
@Suite struct RealProgramTests {
    /// sqlite3 in the middle of a write transaction holds POSIX locks on its database: a
    /// checkpoint with --kill and a restore must leave it holding them, so a second sqlite3
    /// waits for the commit instead of reading around it (or rolling back its journal), and
    /// the data is whole afterwards.
    @Test func sqliteKeepsItsWriteLockAcrossCheckpointAndRestore() throws {
        let dir = scratchDirectory()
        let db = "\(dir)/books.db"
        let sqlite = "/usr/bin/sqlite3"
        try #require(Paths.exists(sqlite), "sqlite3 is installed by harness/test (Debian package sqlite3)")
        let setup = try Child(sqlite, [db, "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);"])
        try #require(setup.exitCode == 0)

        // The writer reads its statements from a pipe we hold.
        var input: [Int32] = [0, 0]
        try #require(pipe(&input) == 0)
        defer { close(input[1]) }
        func say(_ text: String) { _ = text.withCString { write(input[1], $0, strlen($0)) } }
        let writer = try Child(sqlite, [db], stdin: input[0])
        say("BEGIN EXCLUSIVE; INSERT INTO t VALUES (4); SELECT 'inserted';\n")
        #expect(writer.line(timeout: 20) == "inserted")
        #expect(try locks(of: writer.pid) > 0)

        let image = "\(dir)/writer.wbimg"
        let run = try wb("checkpoint", "\(writer.pid)", "-o", image, "--kill")
        try #require(run.code == 0, "\(run.stderr)")
        writer.wait()
        // Restored, its stdin is this restore's stdin: a new pipe of ours.
        var again: [Int32] = [0, 0]
        try #require(pipe(&again) == 0)
        defer { close(again[1]) }
        let restore = try Child(Products.wb, ["restore", image, "--detach"], stdin: again[0])
        close(again[0])
        let pid = try #require(restore.line(timeout: 60).flatMap { Int32($0) }, "\(restore.stderrText)")
        let owned = OwnedProcess(pid)
        defer { owned.kill() }
        #expect(try locks(of: pid) > 0, "the restored sqlite3 holds no lock")

        // A reader waits for the lock (busy timeout) rather than reading past the writer.
        let reader = try Child(sqlite, ["-cmd", ".timeout 20000", db, "SELECT count(*) FROM t;"])
        usleep(700_000)
        var status: Int32 = 0
        #expect(waitpid(reader.pid, &status, WNOHANG) == 0, "the reader did not wait for the writer's lock")
        _ = "COMMIT; SELECT 'committed';\n.quit\n".withCString { write(again[1], $0, strlen($0)) }
        #expect(restore.line(timeout: 20) == "committed")
        #expect(reader.line(timeout: 30) == "4")
        let check = try Child(sqlite, [db, "PRAGMA integrity_check; SELECT group_concat(x) FROM t;"])
        #expect(check.rest() == "ok\n1,2,3,4")
    }

    /// The POSIX locks `pid` holds, from /proc/locks.
    private func locks(of pid: Int32) throws -> Int {
        try Paths.readText("/proc/locks").split(separator: "\n").filter { $0.contains("POSIX") && $0.contains(" \(pid) ") }.count
    }
}
