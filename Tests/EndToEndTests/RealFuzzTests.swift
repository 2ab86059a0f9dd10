import Foundation
import Glibc
import Testing
import WBCore

/// wb fuzz on programs from Debian's packages (installed by harness/test), each checkpointed
/// blocked reading stdin: every finding must replay, coverage must grow past the seeds.
@Suite(.serialized) struct RealFuzzTests {
    /// Seconds each campaign runs (WB_FUZZ_SECONDS; 60 by default).
    static let seconds = ProcessInfo.processInfo.environment["WB_FUZZ_SECONDS"] ?? "60"

    /// A checkpoint of `program` blocked reading stdin (a pipe the test holds open).
    static func snapshot(_ program: String, _ arguments: [String], in dir: String) throws -> String {
        try #require(Paths.exists(program), "\(program) is installed by harness/test (Debian packages jq, libxml2-utils, python3)")
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[1]) }
        let child = try Child(program, arguments, stdin: fds[0])
        close(fds[0])
        // Blocked in read(0 or a dup of it) on the pipe.
        let deadline = Clock.monotonic + 20
        while Clock.monotonic < deadline {
            if let s = try? Paths.readText("/proc/\(child.pid)/syscall"), s.hasPrefix("0 ") { break }
            usleep(20_000)
        }
        usleep(100_000)
        let image = "\(dir)/\(program.split(separator: "/").last!).wbimg"
        let run = try wb("checkpoint", "\(child.pid)", "-o", image, "--kill", "-q")
        try #require(run.code == 0, "\(run.stderr)")
        return image
    }

    static func seeds(_ files: [String: String], in dir: String) throws -> String {
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        for (name, text) in files { try Data(text.utf8).write(to: URL(fileURLWithPath: "\(corpus)/\(name)")) }
        return corpus
    }

    /// A campaign, then every crash and hang it kept replayed in a fresh restore.
    static func campaignWithTrueFindings(_ image: String, corpus: String, out: String, _ extra: [String] = []) throws -> [String: Any] {
        let run = try wb(["fuzz", image, "--corpus", corpus, "--out", out, "--duration", seconds, "--seed", "3", "--json"] + extra,
                         timeout: Double(seconds)! + 300)
        try #require(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        let status = try #require(summary["status"] as? [String: Any])
        for bucket in FuzzTests.buckets(summary) {
            let replay = try wb("replay", bucket.directory)
            #expect(replay.code == 0, "crash \(bucket.directory) did not replay: \(replay.stdout) \(replay.stderr)")
        }
        let timeout = status["timeoutMilliseconds"] as? Int ?? 1000
        for hang in (try? Paths.list("\(out)/hangs")) ?? [] where !hang.hasPrefix(".") {
            let replay = try wb("replay", "\(out)/hangs/\(hang)", "--image", image, "--input", "stdin", "--timeout", "\(timeout)", "--json")
            #expect(replay.stdout.contains("still running at the timeout"), "hang \(hang) did not replay: \(replay.stdout) \(replay.stderr)")
        }
        return status
    }

    /// jq blocked in fgets (stripped jq and libjq, which name only their exported functions):
    /// a frame that no symbol covers is placed by its offset in its file, never "+0x0", and
    /// one an exported symbol covers gets that name.
    @Test func framesInStrippedFilesAreNamedOrPlacedInTheirFile() throws {
        let dir = scratchDirectory()
        let image = try RealFuzzTests.snapshot("/usr/bin/jq", ["."], in: dir)
        let run = try wb("inspect", image, "--no-verify")
        try #require(run.code == 0, "\(run.stderr)")
        let frames = run.stdout.split(separator: "\n").filter { $0.trimming(" ").hasPrefix("#") }
        #expect(frames.contains { $0.contains(" in read") && $0.contains("libc.so") }, "\(frames)")
        #expect(frames.contains { $0.contains("in jq_util_input_next_input") }, "an exported libjq function: \(frames)")
        #expect(frames.contains { $0.contains("(libjq.so") && $0.contains("+0x") && !$0.contains(" in ") }, "a static libjq function, by offset: \(frames)")
        #expect(!frames.contains { $0.hasSuffix("+0x0)") }, "\(frames)")
    }

    @Test func jqFindingsAreTrueAndCoverageGrowsInLibjq() throws {
        let dir = scratchDirectory()
        let image = try RealFuzzTests.snapshot("/usr/bin/jq", ["."], in: dir)
        let corpus = try RealFuzzTests.seeds(["object": #"{"a": [1, 2.5, "x", null, true], "b": {"c": "d"}}"#, "array": "[1,2,3]\n"], in: dir)
        let status = try RealFuzzTests.campaignWithTrueFindings(image, corpus: corpus, out: "\(dir)/out")
        // jq's parser lives in libjq: covered by default, and said so.
        let covers = status["covers"] as? [String] ?? []
        #expect(covers.contains { $0.hasPrefix("libjq") } && covers.contains("jq") && !covers.contains { $0.hasPrefix("libc.so") }, "covers: \(covers)")
        #expect((status["found"] as? Int ?? 0) > 0, "no input beyond the seeds reached new code: \(status)")
        #expect((status["warnings"] as? [String] ?? []).isEmpty)
    }

    @Test func xmllintReadsTheInputThroughItsDuplicateOfStdin() throws {
        let dir = scratchDirectory()
        let image = try RealFuzzTests.snapshot("/usr/bin/xmllint", ["--noout", "-"], in: dir)
        // A valid and a malformed document take different paths.
        var covered: [Set<UInt64>] = []
        for (name, text) in [("valid", "<a x=\"1\"><b>t</b><c/></a>\n"), ("malformed", "<a><b x=>\n")] {
            let corpus = try RealFuzzTests.seeds([name: text], in: "\(dir)/\(name)")
            let run = try wb("fuzz", image, "--corpus", corpus, "--out", "\(dir)/\(name)/out", "--runs", "1", "--json")
            try #require(run.code == 0, "\(run.stderr)")
            let raw = try Paths.readBytes("\(dir)/\(name)/out/.wb/worker-0.covered")
            covered.append(Set(stride(from: 0, to: raw.count - 7, by: 8).map { i in
                raw[i..<(i + 8)].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            }))
        }
        #expect(!covered[0].isEmpty && !covered[1].isEmpty)
        #expect(!covered[1].subtracting(covered[0]).isEmpty && !covered[0].subtracting(covered[1]).isEmpty,
                "a malformed document covered nothing a valid one did not (\(covered[0].count) and \(covered[1].count) blocks)")
        let corpus = try RealFuzzTests.seeds(["doc": "<?xml version=\"1.0\"?>\n<r a='1'><b>t&amp;</b><!-- c --><c/></r>\n"], in: dir)
        let status = try RealFuzzTests.campaignWithTrueFindings(image, corpus: corpus, out: "\(dir)/out")
        #expect((status["found"] as? Int ?? 0) > 0, "no input beyond the seeds reached new code: \(status)")
        #expect((status["warnings"] as? [String] ?? []).isEmpty)
    }

    @Test func pythonJsonRunsAreResetWholeBetweenRuns() throws {
        let dir = scratchDirectory()
        // The interpreter frees and unmaps its arenas at exit: each run must find them again.
        let image = try RealFuzzTests.snapshot("/usr/bin/python3", ["-c", "import json,sys; json.load(sys.stdin)"], in: dir)
        let corpus = try RealFuzzTests.seeds(["doc": #"{"a": [1, 2.5, "x", null, true], "b": {"c": "\u00e9"}}"#], in: dir)
        let status = try RealFuzzTests.campaignWithTrueFindings(image, corpus: corpus, out: "\(dir)/out")
        #expect((status["executions"] as? Int ?? 0) > 100)
        #expect((status["found"] as? Int ?? 0) > 0, "no input beyond the seeds reached new code: \(status)")
        #expect(status["dropped"] as? Int == 0, "runs crashed that a fresh restore does not: \(status)")
    }

    /// A process that reads something other than what --input names: wb says so within
    /// seconds and names the fd it does read.
    @Test func anInputNobodyReadsIsReported() throws {
        let dir = scratchDirectory()
        let image = try RealFuzzTests.snapshot("/usr/bin/jq", ["."], in: dir)
        let corpus = try RealFuzzTests.seeds(["one": "1\n"], in: dir)
        let run = try wb("fuzz", image, "--corpus", corpus, "--out", "\(dir)/out", "--input", "fd:7", "--duration", "5", "--json")
        try #require(run.code == 0, "\(run.stderr)")
        #expect(run.stderr.contains("warning: no run has read the input given with --input fd:7"), "\(run.stderr)")
        #expect(run.stderr.contains("the process reads fd 0"), "\(run.stderr)")
    }
}
