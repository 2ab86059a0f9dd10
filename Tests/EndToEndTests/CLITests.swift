import Foundation
import Glibc
import Testing
import WBCore

/// Golden tests of help text and of the one-line errors users meet.
@Suite struct CLITests {
    static let goldenDirectory = Paths.directory(of: #filePath) + "/Golden"

    @Test(arguments: [["--help"], ["checkpoint", "--help"], ["restore", "--help"], ["inspect", "--help"], ["run", "--help"], ["fuzz", "--help"], ["replay", "--help"], ["timeline", "--help"], ["bisect", "--help"], ["coordinator", "--help"], ["agent", "--help"], ["explore", "--help"]])
    func helpMatchesGolden(args: [String]) throws {
        let run = try wb(args)
        #expect(run.code == 0)
        let name = args.count == 1 ? "wb" : args[0]
        let path = "\(CLITests.goldenDirectory)/\(name)-help.txt"
        if ProcessInfo.processInfo.environment["WB_UPDATE_GOLDEN"] == "1" {
            try (run.stdout + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        }
        let golden = try String(contentsOfFile: path, encoding: .utf8)
        #expect(run.stdout + "\n" == golden)
    }

    @Test func errorsAreOneLineWithTheCause() throws {
        let dir = scratchDirectory()
        let cases: [([String], String)] = [
            (["inspect", "/bin/true"], "wb: error: /bin/true: not a wb image: this is an ELF file (an executable or core dump)"),
            (["inspect", "\(dir)/nothing.wbimg"], "wb: error: \(dir)/nothing.wbimg: no such image file"),
            (["restore", "\(dir)/nothing.wbimg"], "wb: error: \(dir)/nothing.wbimg: no such image file"),
            (["checkpoint", "999999999", "-o", "\(dir)/x.wbimg"], "wb: error: checkpoint of pid 999999999: no process with pid 999999999"),
            (["checkpoint", "1", "-o", "\(dir)/x.wbimg", "--kill", "--leave-running"], "Error: --leave-running and --kill exclude each other"),
            // pid 2 is kthreadd on every Linux.
            (["checkpoint", "2", "-o", "\(dir)/x.wbimg"], "wb: error: checkpoint of pid 2: pid 2 is a kernel thread (it has no program"),
            (["checkpoint", "--tree", "2", "-o", "\(dir)/x.wbimg"], "wb: error: checkpoint of the process tree of pid 2: pid 2 is a kernel thread (it has no program"),
            // The test process is an ancestor of the wb it starts.
            (["checkpoint", "--tree", "\(getpid())", "-o", "\(dir)/x.wbimg"], "wb: error: checkpoint of the process tree of pid \(getpid()): wb itself runs in the tree of pid \(getpid())"),
        ]
        let program = try Child(Products.harness("heap"), ["1"])
        _ = try #require(program.line(startingWith: "READY"))
        for (args, expected) in cases {
            let run = try wb(args)
            #expect(run.code != 0, "\(args)")
            let first = run.stderr.split(separator: "\n").first.map(String.init) ?? ""
            #expect(first.contains(expected), "\(args): \(run.stderr)")
            #expect(!run.stderr.contains("Fatal error") && !run.stderr.contains("Stack dump"))
        }
        let run = try wb("checkpoint", "\(program.pid)", "-o", "/nonexistent-dir/x.wbimg")
        #expect(run.code == 1)
        #expect(run.stderr.hasPrefix("wb: error: creating the image next to /nonexistent-dir/x.wbimg: open("), "\(run.stderr)")
        #expect(run.stderr.hasSuffix("failed: ENOENT (No such file or directory)\n"), "\(run.stderr)")
        #expect(tracerOf(program.pid) == "0")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "VERIFY")?.hasPrefix("VERIFY OK") == true)
    }

    @Test func damagedImagesAreNamedNotCrashedOn() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["4"])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/good.wbimg"
        try #require(try wb("checkpoint", "\(program.pid)", "-o", image, "--kill").code == 0)
        program.wait()
        let size = try Paths.stat(image).size
        let bytes = try Paths.readBytes(image, limit: Int(size))
        // Truncated.
        let cut = "\(dir)/cut.wbimg"
        _ = FileManager.default.createFile(atPath: cut, contents: Data(bytes.prefix(Int(size / 2))))
        for cmd in ["inspect", "restore"] {
            let run = try wb(cmd, cut)
            #expect(run.code == 1)
            #expect(run.stderr.split(separator: "\n").count == 1, "\(run.stderr)")
            #expect(run.stderr.contains("truncated"), "\(run.stderr)")
        }
        // One flipped byte in the page data.
        var flipped = bytes
        flipped[4096 + 100] ^= 0x40
        let bad = "\(dir)/flipped.wbimg"
        _ = FileManager.default.createFile(atPath: bad, contents: Data(flipped))
        let run = try wb("restore", bad)
        #expect(run.code == 1)
        #expect(run.stderr.contains("checksum mismatch in section PAGE"), "\(run.stderr)")
        #expect(!ProcFS_exists(program.pid))
    }

    @Test func inspectJSONCarriesTheProcess() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("threads"), ["2"])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/t.wbimg"
        try #require(try wb("checkpoint", "\(program.pid)", "-o", image, "--leave-running").code == 0)
        let run = try wb("inspect", image, "--json")
        #expect(run.code == 0)
        let doc = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as! [String: Any]
        #expect(doc["pid"] as? Int == Int(program.pid))
        let threads = doc["threads"] as! [[String: Any]]
        #expect(threads.count == 3)
        let regs = threads[0]["registers"] as! [String: String]
        #expect(regs["rip"]?.hasPrefix("0x") == true && regs["fs_base"] != nil)
        #expect((doc["mappings"] as! [[String: Any]]).contains { ($0["kind"] as? String) == "stack" })
        #expect((doc["files"] as! [[String: Any]]).contains { (($0["paths"] as? [String]) ?? []).contains { $0.hasSuffix("libc.so.6") } })
        let checkpoint = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/u.wbimg", "--json")
        let result = try JSONSerialization.jsonObject(with: Data(checkpoint.stdout.utf8)) as! [String: Any]
        #expect(result["threads"] as? Int == 3 && (result["pauseSeconds"] as? Double ?? -1) >= 0)
    }
}

func ProcFS_exists(_ pid: Int32) -> Bool {
    guard let s = try? Paths.readText("/proc/\(pid)/stat") else { return false }
    return !s.contains(") Z")
}
