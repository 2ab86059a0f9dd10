import Foundation
import Glibc
import Testing
import WBCore

/// Real gdb on restored processes whose executable no longer exists where it ran.
@Suite(.serialized) struct DebugTests {
    /// Runs a copy of harness program `name` from a scratch directory, checkpoints it with
    /// --kill and deletes the copy: only the image has the executable now.
    func imageOfDeletedProgram(_ name: String, _ args: [String], dir: String) throws -> (image: String, ready: String, pid: Int32) {
        let copy = "\(dir)/\(name)"
        let bytes = try Paths.readBytes(Products.harness(name), limit: 1 << 30)
        #expect(FileManager.default.createFile(atPath: copy, contents: Data(bytes), attributes: [.posixPermissions: 0o755]))
        let program = try Child(copy, args)
        let ready = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/\(name).wbimg"
        try #require(try wb("checkpoint", "\(program.pid)", "-o", image, "--kill").code == 0)
        program.wait()
        Paths.remove(copy)
        #expect(!Paths.exists(copy))
        return (image, ready, program.pid)
    }

    /// The image carries the gdb scripts of the programs it holds (python's, with py-bt) and
    /// gdb loads them from the sysroot, and only from there; --no-gdb-scripts loads none.
    @Test func gdbLoadsTheScriptsTheImageCarries() throws {
        let python = "/usr/bin/python3.11d"
        try #require(Paths.exists(python), "harness/test installs python3-dbg")
        let dir = scratchDirectory()
        let script = "\(dir)/slow.py"
        try "import time\ndef inner_function():\n    while True:\n        time.sleep(0.05)\ndef outer_function():\n    inner_function()\nprint('READY', flush=True)\nouter_function()\n"
            .write(toFile: script, atomically: false, encoding: .utf8)
        let program = try Child(python, [script])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/py.wbimg"
        try checkpointKilled(program, to: image)
        let shown = try wb("inspect", image)
        #expect(shown.stdout.contains("/usr/share/gdb/auto-load/usr/bin/python3.11d-gdb.py"), "\(shown.stdout)")

        let run = try wb("restore", image, "--debug", "--", "-batch", "-ex", "info auto-load python-scripts", "-ex", "py-bt", "-ex", "kill")
        #expect(run.code == 0, "\(run.stderr)")
        #expect(run.stdout.contains("in inner_function") && run.stdout.contains("in outer_function") && run.stdout.contains("slow.py\", line 4"), "\(run.stdout)")
        let loaded = run.stdout.split(separator: "\n").filter { $0.hasPrefix("Yes ") }
        #expect(!loaded.isEmpty && loaded.allSatisfy { $0.contains("/sysroots/") && $0.contains("/usr/share/gdb/auto-load/") }, "\(run.stdout)")

        let without = try wb("restore", image, "--debug", "--no-gdb-scripts", "--", "-batch", "-ex", "py-bt", "-ex", "kill")
        #expect(without.stderr.contains("Undefined command: \"py-bt\""), "\(without.stderr)")
    }

    /// libstdc++'s pretty printers, carried by the image, print a vector of strings as one.
    @Test func gdbPrintsCPlusPlusValuesWithTheImagesPrinters() throws {
        try #require(Paths.exists("/usr/bin/g++"), "a C++ compiler builds the program")
        let dir = scratchDirectory()
        try "#include <vector>\n#include <string>\n#include <cstdio>\n#include <unistd.h>\nint main() { std::vector<std::string> words{\"alpha\", \"beta\"}; std::puts(\"READY\"); std::fflush(stdout); for (;;) pause(); return int(words.size()); }\n"
            .write(toFile: "\(dir)/words.cc", atomically: false, encoding: .utf8)
        let build = try Child("/usr/bin/g++", ["-g", "-O0", "-o", "\(dir)/words", "\(dir)/words.cc"])
        build.wait()
        try #require(build.exitCode == 0, "\(build.stderrText)")
        let program = try Child("\(dir)/words", [])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/words.wbimg"
        try checkpointKilled(program, to: image)
        let run = try wb("restore", image, "--debug", "--", "-batch", "-ex", "frame function main", "-ex", "print words", "-ex", "kill")
        #expect(run.code == 0, "\(run.stderr)")
        #expect(run.stdout.contains("std::vector of length 2, capacity 2 = {\"alpha\", \"beta\"}"), "\(run.stdout)")
        #expect(!run.stderr.contains("Traceback"), "\(run.stderr)")
    }

    @Test func gdbSeesEveryThreadWithFunctionsAndLines() throws {
        let dir = scratchDirectory()
        let (image, _, _) = try imageOfDeletedProgram("threads", ["3"], dir: dir)
        let run = try wb("restore", image, "--debug", "--", "-batch", "-ex", "info threads", "-ex", "thread apply all bt")
        #expect(run.code == 0, "\(run.stderr)")
        let traces = run.stdout.components(separatedBy: "\nThread ").dropFirst()
        #expect(traces.count == 4, "\(run.stdout)")
        for t in traces {
            #expect(t.contains(" in ") || t.contains("#0  "), "\(t)")
            #expect(t.contains("main.c:") || t.contains("support.c:"), "no source line in: \(t)")
        }
        #expect(run.stdout.contains("worker"))
        #expect(run.stdout.contains("harness_wait_for_request") || run.stdout.contains("sigsuspend"))
    }

    @Test func gdbPrintsGlobalsAndLocalsAndStopsAtBreakpointsAndWatchpoints() throws {
        let dir = scratchDirectory()
        let (image, _, _) = try imageOfDeletedProgram("service", ["--accounts", "1000", "--interval-ms", "100"], dir: dir)
        let run = try wb("restore", image, "--debug", "--", "-batch",
                         "-ex", "print ledger.count",
                         "-ex", "frame function main", "-ex", "print accounts",
                         "-ex", "break transfer", "-ex", "continue", "-ex", "delete",
                         "-ex", "watch ledger.tick", "-ex", "continue",
                         "-ex", "kill")
        #expect(run.code == 0, "\(run.stderr)")
        #expect(run.stdout.contains("$1 = 1000"), "\(run.stdout)")
        #expect(run.stdout.contains("$2 = 1000"), "\(run.stdout)")
        #expect(run.stdout.contains("Breakpoint 1") && run.stdout.contains(", transfer (from="), "\(run.stdout)")
        #expect(run.stdout.contains("Hardware watchpoint 2: ledger.tick"))
        #expect(run.stdout.contains("Old value = ") && run.stdout.contains("New value = "), "\(run.stdout)")
    }

    @Test func inspectShowsSymbolizedBacktracesWithoutGdb() throws {
        let dir = scratchDirectory()
        let (image, _, _) = try imageOfDeletedProgram("state", [dir], dir: dir)
        let run = try wb("inspect", image)
        #expect(run.code == 0, "\(run.stderr)")
        #expect(run.stdout.contains("in reader+"), "\(run.stdout)")
        #expect(run.stdout.contains("in sleeper+") && run.stdout.contains("in waiter+"))
        #expect(run.stdout.contains("main.c:"))
        let json = try wb("inspect", image, "--json")
        let doc = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as! [String: Any]
        let threads = doc["threads"] as! [[String: Any]]
        let frames = try #require(threads.first?["backtrace"] as? [[String: Any]])
        #expect(frames.count >= 3)
        #expect(frames.contains { ($0["function"] as? String) == "main" })
    }
}

extension DebugTests {
    @Test func monitorCheckpointAndRestoreTravelBackInTime() throws {
        let dir = scratchDirectory()
        let (image, _, _) = try imageOfDeletedProgram("service", ["--accounts", "1000", "--interval-ms", "50"], dir: dir)
        let run = try wb("restore", image, "--debug", "--snapshots", "\(dir)/snaps", "--", "-batch",
                         "-ex", "print ledger.tick",
                         "-ex", "monitor checkpoint before",
                         "-ex", "watch ledger.tick", "-ex", "continue", "-ex", "continue",
                         "-ex", "print ledger.tick",
                         "-ex", "monitor snapshots",
                         "-ex", "monitor restore before",
                         "-ex", "print ledger.tick")
        #expect(run.code == 0, "\(run.stderr)")
        let values = run.stdout.split(separator: "\n").filter { $0.hasPrefix("$") }.compactMap { Int($0.split(separator: "=").last!.trimming(" ")) }
        #expect(values.count == 3, "\(run.stdout)")
        if values.count == 3 {
            #expect(values[1] == values[0] + 2)
            #expect(values[2] == values[0])
        }
        // gdb shows monitor output on stderr.
        #expect((run.stdout + run.stderr).contains("checkpoint before: \(dir)/snaps/before.wbimg"), "\(run.stderr)")
        #expect((run.stdout + run.stderr).contains("restored before"))
        // The snapshot is an ordinary image.
        let snapshot = try Image(path: "\(dir)/snaps/before.wbimg")
        try snapshot.verifyData()
        #expect(try wb("inspect", "\(dir)/snaps/before.wbimg", "--no-backtrace").code == 0)
    }
}
