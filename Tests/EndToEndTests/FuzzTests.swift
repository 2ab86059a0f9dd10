import Foundation
import Glibc
import Testing
import WBCore
import WBTrace

/// wb fuzz and wb replay on harness-parser: a record parser with a crash behind a key the
/// process computed at start-up and a checksum, and a stack overflow behind magic bytes.
@Suite(.serialized) struct FuzzTests {
    static let corpus = Paths.directory(of: #filePath) + "/../../corpora/parser"

    /// A checkpoint of harness-parser blocked reading stdin (a pipe the test holds open);
    /// returns the image path and the key the process computed.
    static func checkpointParser(_ dir: String, _ extra: [String] = []) throws -> (image: String, key: UInt32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw WBError.failed("pipe failed") }
        defer { close(fds[1]) }
        let child = try Child(Products.harness("parser"), extra, stdin: fds[0])
        close(fds[0])
        let ready = try #require(child.line(startingWith: "READY"))
        let key = try #require(field(ready, "key").flatMap { UInt32($0, radix: 16) })
        let image = "\(dir)/parser.wbimg"
        let run = try wb("checkpoint", "\(child.pid)", "-o", image, "--kill", "-q")
        #expect(run.code == 0, "\(run.stderr)")
        return (image, key)
    }

    /// An input in the parser's format with a correct checksum.
    static func records(_ records: [(String, UInt32)]) -> [UInt8] {
        var body: [UInt8] = []
        for (tag, value) in records {
            body += Array(tag.utf8)
            withUnsafeBytes(of: value.littleEndian) { body += $0 }
        }
        let sum = body.reduce(UInt16(0)) { $0 &+ UInt16($1) }
        return Array("WBFZ".utf8) + [2, UInt8(records.count)] + withUnsafeBytes(of: sum.littleEndian, Array.init) + body
    }

    static func summary(_ run: Run) throws -> [String: Any] {
        let data = try #require(run.stdout.data(using: .utf8))
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    static func buckets(_ summary: [String: Any]) -> [(signal: String, function: String, directory: String)] {
        ((summary["crashes"] as? [[String: Any]]) ?? []).map {
            ($0["signal"] as? String ?? "", $0["function"] as? String ?? "", $0["directory"] as? String ?? "")
        }
    }

    @Test func campaignFindsBucketsAndReplaysThePlantedCrashes() throws {
        let dir = scratchDirectory()
        let (image, _) = try FuzzTests.checkpointParser(dir)
        let out = "\(dir)/findings"
        let run = try wb(["fuzz", image, "--corpus", FuzzTests.corpus, "--out", out, "--duration", "120", "--until-crashes", "2",
                          "--seed", "7", "--json"], timeout: 300)
        #expect(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        #expect(summary["stoppedBecause"] as? String == "crashes found")
        let buckets = FuzzTests.buckets(summary)
        // The key behind the null write is fixed in the snapshot and found by comparison
        // tracing, the checksum repaired the same way.
        let keyed = try #require(buckets.first { $0.function == "crash_with_key" }, "buckets: \(buckets)")
        #expect(keyed.signal == "SIGSEGV")
        #expect(buckets.contains { $0.function == "boom" && $0.signal == "SIGABRT" }, "buckets: \(buckets)")

        // The bucket directory: input, minimized input, reports, replay recipe.
        let bucket = keyed.directory
        let input = try Paths.readBytes("\(bucket)/input"), small = try Paths.readBytes("\(bucket)/input.min")
        #expect(!small.isEmpty && small.count <= input.count)
        let text = try Paths.readText("\(bucket)/report.txt")
        #expect(text.contains("SIGSEGV at address 0x0 in crash_with_key"))
        #expect(text.contains("#1") && text.contains("parse_record"))
        let report = try #require(try JSONSerialization.jsonObject(with: Data(try Paths.readBytes("\(bucket)/report.json"))) as? [String: Any])
        #expect(report["signal"] as? Int == 11)
        #expect(report["faultAddress"] as? String == "0x0")
        let frames = try #require(report["frames"] as? [[String: Any]])
        #expect(frames.first?["function"] as? String == "crash_with_key")
        #expect((report["registers"] as? [String: String])?["rip"] != nil)
        #expect(Paths.exists("\(bucket)/replay.json"))

        // AFL's layout: seeds and finds in queue/, stats and plot data, a coverage plot.
        let queue = try Paths.list("\(out)/queue")
        #expect(queue.contains("id:000000,orig:boom-record"))
        #expect(queue.count >= 4)
        let stats = try Paths.readText("\(out)/fuzzer_stats")
        let execs = stats.split(separator: "\n").first { $0.hasPrefix("execs_done") }.flatMap { Int($0.split(separator: ":").last!.trimming(" ")) }
        #expect((execs ?? 0) > 4)
        #expect(stats.contains("saved_crashes     : 2"))
        #expect(try Paths.readText("\(out)/plot_data").hasPrefix("# relative_time"))
        #expect(try Paths.readText("\(out)/coverage.svg").hasPrefix("<svg"))
        let campaign = try Paths.readText("\(out)/campaign.json")
        #expect(campaign.contains("crash_with_key"))

        // Replay: the same crash, in the same bucket; and in gdb, stopped at the crash.
        let replay = try wb("replay", bucket)
        #expect(replay.code == 0, "\(replay.stderr)")
        #expect(replay.stdout.contains("crashed: SIGSEGV in crash_with_key") && replay.stdout.contains("(as recorded)"))
        let minimized = try wb("replay", bucket, "--minimized")
        #expect(minimized.code == 0, "\(minimized.stdout) \(minimized.stderr)")
        let gdb = try wb(["replay", bucket, "--debug", "--", "-batch", "-ex", "bt"], timeout: 120)
        #expect(gdb.stdout.contains("crash_with_key") && gdb.stdout.contains("parse_record"), "\(gdb.stdout) \(gdb.stderr)")
    }

    /// Hangs are kept only when true: with --hangs, harness-parser spins forever on a count
    /// byte of 0xFE and sleeps 250 ms (slower than the campaign's timeout, but finite) on
    /// 0xFD. Only the first is saved under hangs/; the second is dropped and counted.
    @Test func onlyTrueHangsAreKept() throws {
        let dir = scratchDirectory()
        let (image, _) = try FuzzTests.checkpointParser(dir, ["--hangs"])
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        try writeFile(FuzzTests.records([("NOTE", 1)]), "\(corpus)/one")
        let out = "\(dir)/findings"
        // The timeout is given: the one chosen from the seed's run time can exceed 250 ms on a
        // machine busy with other suites (the 0xFD input would not be slower than it).
        let run = try wb(["fuzz", image, "--corpus", corpus, "--out", out, "--duration", "20", "--seed", "5", "--timeout", "100", "--json"], timeout: 300)
        try #require(run.code == 0, "\(run.stderr)")
        let status = try #require(try FuzzTests.summary(run)["status"] as? [String: Any])
        #expect(status["timeoutMilliseconds"] as? Int == 100, "\(status)")
        #expect((status["hangs"] as? Int ?? 0) >= 1 && (status["droppedHangs"] as? Int ?? 0) >= 1, "\(status)")
        let names = try Paths.list("\(out)/hangs")
        #expect(!names.isEmpty)
        for name in names {
            let input = try Paths.readBytes("\(out)/hangs/\(name)")
            #expect(input.count > 5 && input[5] == 0xFE, "\(name): \(input.prefix(8))")
            #expect(name.contains("in:spin_forever"), "\(name)")
        }
        let first = try #require(names.sorted().first)
        let replay = try wb("replay", "\(out)/hangs/\(first)", "--image", image, "--input", "stdin", "--timeout", "1500", "--json")
        #expect(replay.stdout.contains("still running at the timeout"), "\(replay.stdout) \(replay.stderr)")
    }

    /// Reads of the input do not stop at wb, so a process that reads its input to the end
    /// and goes back to read more (harness-parser --loop, serving inputs on stdin) would spin
    /// on end-of-file: wb sees it keep reading past the timeout once, has such reads stop
    /// from then on, and ends every later run where the process comes back for more.
    @Test func aProcessThatComesBackForMoreInputEndsItsRunThere() throws {
        let dir = scratchDirectory()
        let (image, _) = try FuzzTests.checkpointParser(dir, ["--loop"])
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        try writeFile(FuzzTests.records([("NOTE", 1)]), "\(corpus)/one")
        try writeFile(FuzzTests.records([("NOTE", 1), ("BOOM", 0x474E_4142)]), "\(corpus)/boom")
        let run = try wb(["fuzz", image, "--corpus", corpus, "--out", "\(dir)/out", "--runs", "400", "--seed", "3", "--timeout", "200", "--json"], timeout: 300)
        try #require(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        let status = try #require(summary["status"] as? [String: Any])
        #expect(status["hangs"] as? Int == 0 && status["droppedHangs"] as? Int == 0, "\(status)")
        #expect((status["executions"] as? Int ?? 0) >= 400, "\(status)")
        // At most one run waited for the timeout: 400 runs take far less than 400 x 200 ms.
        #expect((status["seconds"] as? Double ?? 999) < 60, "\(status)")
        #expect(FuzzTests.buckets(summary).contains { $0.function == "boom" }, "\(FuzzTests.buckets(summary))")
    }

    /// The process being fuzzed killed from outside (the OOM killer, a kill -9) ends the
    /// campaign with a one-line error saying how it ended, whether it was in a run or between
    /// runs, and what it found so far stays.
    @Test func aFuzzedProcessKilledFromOutsideIsNamedInTheError() throws {
        let dir = scratchDirectory()
        let (image, _) = try FuzzTests.checkpointParser(dir)
        let fuzz = try Child(Products.wb, ["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/out", "--duration", "120", "-q"])
        // The process being fuzzed: the thread group wb traces.
        func traced() -> Int32? {
            let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
            return pids.first { pid in
                guard let status = try? Paths.readText("/proc/\(pid)/status") else { return false }
                return status.contains("TracerPid:\t\(fuzz.pid)\n") && status.contains("Tgid:\t\(pid)\n")
            }
        }
        var target: Int32?
        for _ in 0..<300 where target == nil {
            usleep(50_000)
            target = traced()
        }
        let pid = try #require(target, "no process traced by wb fuzz: \(fuzz.stderrText)")
        // Well into the campaign: runs are going on.
        usleep(1_000_000)
        kill(pid, SIGKILL)
        let code = fuzz.exitCode
        let lines = fuzz.stderrText.split(separator: "\n").filter { $0.hasPrefix("wb: error:") }
        #expect(code == 1 && lines.count == 1 && lines[0].contains("killed by SIGKILL") && lines[0].contains("from outside wb"),
                "\(code) \(fuzz.stderrText)")
        #expect(Paths.exists("\(dir)/out/campaign.json") || Paths.exists("\(dir)/out/queue"), "nothing of the campaign kept")
    }

    @Test func runsStartFromTheSnapshotNotFromThePreviousRun() throws {
        let dir = scratchDirectory()
        let (image, key) = try FuzzTests.checkpointParser(dir)
        // "KEY!" with the right key sets a global that lets a later "CRSH" record crash. Run
        // alone, the CRSH input must not crash: the first run's writes are undone.
        let apart = "\(dir)/apart", together = "\(dir)/together"
        try Paths.makeDirectories(apart)
        try Paths.makeDirectories(together)
        try writeFile(FuzzTests.records([("KEY!", key)]), "\(apart)/a-key")
        try writeFile(FuzzTests.records([("CRSH", 0)]), "\(apart)/b-crash")
        try writeFile(FuzzTests.records([("KEY!", key), ("CRSH", 0)]), "\(together)/both")
        let first = try wb("fuzz", image, "--corpus", apart, "--out", "\(dir)/o1", "--runs", "2", "--json")
        #expect(first.code == 0, "\(first.stderr)")
        #expect(FuzzTests.buckets(try FuzzTests.summary(first)).isEmpty)
        let second = try wb("fuzz", image, "--corpus", together, "--out", "\(dir)/o2", "--runs", "1", "--json")
        #expect(second.code == 0, "\(second.stderr)")
        #expect(FuzzTests.buckets(try FuzzTests.summary(second)).map(\.function) == ["crash_with_key"])
    }

    @Test func multiThreadedSnapshotsAndSeveralWorkers() throws {
        let dir = scratchDirectory()
        let (image, _) = try FuzzTests.checkpointParser(dir, ["--threads", "3"])
        let out = "\(dir)/findings"
        let run = try wb(["fuzz", image, "--corpus", FuzzTests.corpus, "--out", out, "--jobs", "2", "--duration", "120",
                          "--until-crashes", "1", "--seed", "3", "--json"], timeout: 300)
        #expect(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        #expect(!FuzzTests.buckets(summary).isEmpty)
        #expect((summary["status"] as? [String: Any])?["workers"] as? Int == 2)
        // The second worker restored its own copy, ran inputs and said so.
        let second = try #require(try JSONSerialization.jsonObject(with: Data(try Paths.readBytes("\(out)/.wb/worker-1.json"))) as? [String: Any])
        #expect((second["executions"] as? Int ?? 0) > 0)
        #expect(second["error"] == nil)
        #expect(try Paths.readText("\(out)/fuzzer_stats").contains("workers           : 2"))
    }

    @Test func inputsThroughAFileAndThroughMemory() throws {
        let dir = scratchDirectory()
        // A file the process opens once stdin ends.
        let (fileImage, _) = try FuzzTests.checkpointParser(dir, ["--file", "\(dir)/fuzz-input"])
        let byFile = try wb(["fuzz", fileImage, "--input", "file:\(dir)/fuzz-input", "--corpus", FuzzTests.corpus, "--out", "\(dir)/of",
                             "--duration", "120", "--until-crashes", "1", "--json"], timeout: 300)
        #expect(byFile.code == 0, "\(byFile.stderr)")
        #expect(!FuzzTests.buckets(try FuzzTests.summary(byFile)).isEmpty)

        // A snapshot taken in gdb at parse_input(), fuzzed by writing parser_input and parser_length.
        let memDir = "\(dir)/mem"
        try Paths.makeDirectories(memDir)
        let (image, _) = try FuzzTests.checkpointParser(memDir)
        let gdb = try wb(["restore", image, "--debug", "--snapshots", "\(dir)/snaps", "--", "-batch", "-ex", "break parse_input",
                          "-ex", "continue", "-ex", "monitor checkpoint at-parse"], timeout: 120)
        #expect((gdb.stdout + gdb.stderr).contains("checkpoint at-parse"), "\(gdb.stdout) \(gdb.stderr)")
        let byMemory = try wb(["fuzz", "\(dir)/snaps/at-parse.wbimg", "--input", "mem:parser_input:parser_length", "--corpus", FuzzTests.corpus,
                               "--out", "\(dir)/om", "--duration", "120", "--until-crashes", "1", "--json"], timeout: 300)
        #expect(byMemory.code == 0, "\(byMemory.stderr)")
        #expect(!FuzzTests.buckets(try FuzzTests.summary(byMemory)).isEmpty)
        // An unknown symbol is named.
        let missing = try wb("fuzz", "\(dir)/snaps/at-parse.wbimg", "--input", "mem:no_such_buffer", "--corpus", FuzzTests.corpus, "--out", "\(dir)/ox")
        #expect(missing.code == 1)
        #expect(missing.stderr.contains("no symbol no_such_buffer"))
    }

    @Test func badArgumentsGetOneLineErrors() throws {
        let dir = scratchDirectory()
        let (image, _) = try FuzzTests.checkpointParser(dir)
        let cases: [([String], String)] = [
            (["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/o", "--input", "pipe"], "expected stdin, fd:N, file:PATH, mem:SYMBOL"),
            (["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/o", "--input", "tcp:http"], "expected tcp:PORT or tcp:HOST:PORT"),
            (["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/o", "--input", "tcp:8080"], "has no socket listening there and no client connection to it (it holds no listening socket)"),
            (["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/o", "--input-split", "@@"], "--input-split is for a server's input"),
            (["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/o", "--input", "unix:/tmp/s", "--jobs", "2"], "fuzz a Unix socket server with one job"),
            (["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/o", "--slurm", "0"], "--slurm takes the number of workers"),
            (["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/o", "--partition", "x"], "--partition and --time are for --slurm"),
            (["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/o", "--sync-name", "a/b"], "--sync-name a/b: use letters"),
            (["fuzz", "--status", "\(dir)/nowhere"], "--status \(dir)/nowhere: no such directory"),
            (["fuzz", "--status", dir], "no campaign there"),
            (["fuzz", "--corpus", FuzzTests.corpus, "--out", "\(dir)/o"], "missing the image to fuzz"),
            (["fuzz", image, "--corpus", "\(dir)/nowhere", "--out", "\(dir)/o"], "--corpus \(dir)/nowhere: no such directory"),
            (["fuzz", image, "--corpus", FuzzTests.corpus, "--out", "\(dir)/o", "--duration", "soon"], "--duration soon"),
            (["fuzz", "\(dir)/missing.wbimg", "--corpus", FuzzTests.corpus, "--out", "\(dir)/o"], "missing.wbimg"),
            (["replay", dir], "no replay.json there"),
        ]
        for (args, message) in cases {
            let run = try wb(args)
            #expect(run.code != 0, "\(args)")
            #expect(run.stderr.contains(message), "\(args): \(run.stderr)")
            #expect(!run.stderr.contains("Fatal error") && run.stderr.split(separator: "\n").count <= 3, "\(run.stderr)")
        }
        // An output directory that holds a campaign is not overwritten.
        let empty = "\(dir)/empty"
        try Paths.makeDirectories(empty)
        try writeFile([1], "\(empty)/seed")
        let first = try wb("fuzz", image, "--corpus", empty, "--out", "\(dir)/twice", "--runs", "1")
        #expect(first.code == 0, "\(first.stderr)")
        let again = try wb("fuzz", image, "--corpus", empty, "--out", "\(dir)/twice", "--runs", "1")
        #expect(again.code == 1)
        #expect(again.stderr.contains("already holds a campaign"))
    }

    /// A snapshot of `program` (a harness program that prints READY) blocked reading stdin.
    static func checkpointHarness(_ program: String, _ dir: String, _ arguments: [String] = []) throws -> String {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[1]) }
        let child = try Child(Products.harness(program), arguments, stdin: fds[0])
        close(fds[0])
        try #require(child.line(startingWith: "READY") != nil)
        let image = "\(dir)/\(program).wbimg"
        let checkpoint = try wb("checkpoint", "\(child.pid)", "-o", image, "--kill", "-q")
        try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
        return image
    }

    /// harness-sums crashes behind d[6] + d[7] == 0x100, a masked and xor'ed key byte and a
    /// big-endian field with an offset: operands computed from the input, solved through the
    /// bytes they depend on. (Found in seconds on an idle machine; the campaign may take up
    /// to 120 s so that a loaded CI machine, running other suites' campaigns, still finds it.
    /// Time to first crash is measured in harness/bench/fuzz.)
    @Test func comparisonsOfComputedValuesAreSolved() throws {
        let dir = scratchDirectory()
        let image = try FuzzTests.checkpointHarness("sums", dir)
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        try writeFile(Array("SUMS".utf8) + [1, 0, 0x41, 0x42, 0, 0, 0, 0], "\(corpus)/seed")
        let run = try wb(["fuzz", image, "--corpus", corpus, "--out", "\(dir)/out", "--duration", "120", "--until-crashes", "1",
                          "--seed", "11", "--json"], timeout: 300)
        try #require(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        let buckets = FuzzTests.buckets(summary)
        #expect(buckets.map(\.function) == ["crash_behind_sums"], "\(buckets)")
        let input = try Paths.readBytes("\(buckets.first?.directory ?? dir)/input")
        #expect(input.count >= 11 && Int(input[6]) + Int(input[7]) == 0x100 && (Int(input[9]) << 8 | Int(input[10])) == 0x1234 + 7)
    }

    /// harness-checksums crashes behind a CRC-32 (stored big-endian, which the compiler folds
    /// into a compare of crc ^ stored against ~0) over an Adler-32 (stored little-endian) over
    /// a chunk holding a tag and a sum: every mutation of the chunk breaks both. wb finds the
    /// two checksum compares, passes them in its runs and repairs what it keeps, in the order
    /// the program checks them: the saved input crashes the program as it is, outside wb.
    @Test func checksumsOverTheInputArePassedAndTheFindingsRepaired() throws {
        let dir = scratchDirectory()
        let image = try FuzzTests.checkpointHarness("checksums", dir)
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        try writeFile(FuzzTests.checksummed(Array("........".utf8)), "\(corpus)/seed")
        let run = try wb(["fuzz", image, "--corpus", corpus, "--out", "\(dir)/out", "--duration", "120", "--until-crashes", "1",
                          "--seed", "3", "--json"], timeout: 300)
        try #require(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        let buckets = FuzzTests.buckets(summary)
        #expect(buckets.map(\.function) == ["crash_behind_checksums"], "\(buckets)")
        let status = try #require(summary["status"] as? [String: Any])
        #expect(status["checksums"] as? Int == 2, "\(status)")
        #expect((status["repaired"] as? Int ?? 0) >= 1 && status["dropped"] as? Int == 0, "\(status)")
        // The finding, and its minimized form, are valid inputs: both checksums hold.
        for name in ["input", "input.min"] {
            let path = "\(buckets.first?.directory ?? dir)/\(name)"
            let input = try Paths.readBytes(path)
            #expect(input.count >= 14 && FuzzTests.checksummed(Array(input[10..<(input.count - 4)])) == input, "\(name): \(input)")
            let fd = open(path, O_RDONLY)
            try #require(fd >= 0)
            let native = try Child(Products.harness("checksums"), [], stdin: fd)
            close(fd)
            #expect(native.exitCode == 128 + SIGSEGV, "\(name) run outside wb")
        }
    }

    /// harness-checksums chunks: three chunks, each with a CRC-32 of its own that one compare
    /// instruction checks (as PNG's): each execution of the compare gets its chunk's field,
    /// and the crash in the third chunk is kept as an input whose every CRC holds.
    @Test func aChecksumPerChunkIsPassedForEveryChunk() throws {
        let dir = scratchDirectory()
        let image = try FuzzTests.checkpointHarness("checksums", dir, ["chunks"])
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        let dots = Array("....".utf8)
        try writeFile(Array("CHKS".utf8) + FuzzTests.crcChunk(dots) + FuzzTests.crcChunk(dots) + FuzzTests.crcChunk(dots), "\(corpus)/seed")
        let run = try wb(["fuzz", image, "--corpus", corpus, "--out", "\(dir)/out", "--duration", "120", "--until-crashes", "1",
                          "--seed", "5", "--json"], timeout: 300)
        try #require(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        let buckets = FuzzTests.buckets(summary)
        #expect(buckets.map(\.function) == ["crash_in_third_chunk"], "\(buckets)")
        let path = "\(buckets.first?.directory ?? dir)/input"
        var input = try Paths.readBytes(path)
        // Every chunk's CRC holds.
        #expect(input.starts(with: Array("CHKS".utf8)))
        input.removeFirst(min(4, input.count))
        while input.count >= 6 {
            let length = Int(input[0]) | Int(input[1]) << 8
            guard length + 6 <= input.count else { break }
            let chunk = Array(input[0..<(length + 6)])
            #expect(FuzzTests.crcChunk(Array(chunk[2..<(2 + length)])) == chunk, "\(chunk)")
            input.removeFirst(length + 6)
        }
        let fd = open(path, O_RDONLY)
        try #require(fd >= 0)
        let native = try Child(Products.harness("checksums"), ["chunks"], stdin: fd)
        close(fd)
        #expect(native.exitCode == 128 + SIGSEGV, "the finding run outside wb")
    }

    /// A chunk of harness-checksums chunks: length, bytes, CRC-32 (big-endian).
    static func crcChunk(_ bytes: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: UInt16(bytes.count).littleEndian, Array.init) + bytes + withUnsafeBytes(of: FuzzTests.crc32(bytes).bigEndian, Array.init)
    }

    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = (crc >> 1) ^ (0xEDB8_8320 & (0 &- (crc & 1))) }
        }
        return ~crc
    }

    /// harness-checksums' format around `chunk`: "CKSM", the CRC-32 (big-endian) of the
    /// rest, the chunk's length, the chunk, its Adler-32 (little-endian).
    static func checksummed(_ chunk: [UInt8]) -> [UInt8] {
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in chunk { a = (a + UInt32(byte)) % 65521; b = (b + a) % 65521 }
        let body = withUnsafeBytes(of: UInt16(chunk.count).littleEndian, Array.init) + chunk + withUnsafeBytes(of: (b << 16 | a).littleEndian, Array.init)
        return Array("CKSM".utf8) + withUnsafeBytes(of: FuzzTests.crc32(body).bigEndian, Array.init) + body
    }

    /// harness-pool: three worker threads in the snapshot, and a helper thread each run
    /// makes and joins. Runs reset every thread and end the ones they made (each run checks
    /// it starts with the snapshot's threads); the planted bug in a worker, behind a
    /// strncmp with "KILL" no seed holds, is found.
    @Test func threadPoolRunsEndTheThreadsTheyMake() throws {
        let dir = scratchDirectory()
        let image = try FuzzTests.checkpointHarness("pool", dir)
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        try writeFile(Array("hello\nworld\n".utf8), "\(corpus)/a")
        try writeFile(Array("GET x\n".utf8), "\(corpus)/b")
        let run = try wb(["fuzz", image, "--corpus", corpus, "--out", "\(dir)/out", "--duration", "120", "--until-crashes", "1",
                          "--seed", "4", "--json"], timeout: 300)
        try #require(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        #expect(FuzzTests.buckets(summary).map(\.function) == ["handle_line"], "\(FuzzTests.buckets(summary))")
        let status = try #require(summary["status"] as? [String: Any])
        #expect(status["dropped"] as? Int == 0, "runs found threads left over, or crashed where a fresh restore does not: \(status)")
        let replay = try wb("replay", FuzzTests.buckets(summary).first?.directory ?? dir)
        #expect(replay.code == 0, "\(replay.stdout) \(replay.stderr)")
    }

    /// Each run of harness-resetzoo unmaps, shrinks, discards, maps over and reprotects its
    /// memory, takes a guard page away and guards another, overwrites pages of 80 MiB that
    /// wb keeps in huge pages, and closes, replaces and moves its fds; the next run checks all
    /// of it is back (and crashes in a function named for what is not). Its probes of the
    /// guard pages catch their SIGSEGV: no crash. A run that times out with signals queued
    /// leaves none of them to the next run.
    @Test func everyRunFindsWhatThePreviousRunUndidPutBack() throws {
        let dir = scratchDirectory()
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[1]) }
        let child = try Child(Products.harness("resetzoo"), ["\(dir)/scratch"], stdin: fds[0])
        close(fds[0])
        let ready = try #require(child.line(startingWith: "READY"))
        // Linux 6.13+ has guard pages (this machine's kernel has).
        #expect(ready.contains("guards=1") || !PageScanner.knowsGuards, "\(ready)")
        let image = "\(dir)/resetzoo.wbimg"
        let checkpoint = try wb("checkpoint", "\(child.pid)", "-o", image, "--kill", "-q")
        try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        try writeFile(Array("x".utf8), "\(corpus)/x")
        try writeFile(Array("abc".utf8), "\(corpus)/abc")
        try writeFile(Array("h".utf8), "\(corpus)/h")
        let run = try wb("fuzz", image, "--corpus", corpus, "--out", "\(dir)/out", "--runs", "300", "--seed", "5", "--timeout", "200", "--json")
        try #require(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        #expect(FuzzTests.buckets(summary).isEmpty, "a run found its state missing: \(FuzzTests.buckets(summary))")
        let status = try #require(summary["status"] as? [String: Any])
        // The one hang is the seed "h"; the signals it left queued are gone with it.
        #expect(status["dropped"] as? Int == 0 && status["hangs"] as? Int == 1, "\(status)")
        #expect((status["executions"] as? Int ?? 0) >= 300)
        #expect((status["reset"] as? String ?? "").contains("MiB in huge pages"), "\(status)")
    }

    /// harness-kvserver snapshotted in accept (blocking) or in epoll_wait (non-blocking
    /// sockets): each run is one connection, cut into messages at "@@", and the bug behind
    /// the second message (DEL of a key not there, after HELLO) is found, replays, and
    /// replays in gdb with the messages paced as the server reads them.
    @Test(arguments: [["--port", "0"], ["--epoll", "--unix", "SOCKET"]])
    func serversAreFuzzedOneConnectionPerRun(_ arguments: [String]) throws {
        let dir = scratchDirectory()
        let path = "\(dir)/kv.sock"
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[1]) }
        let child = try Child(Products.harness("kvserver"), arguments.map { $0 == "SOCKET" ? path : $0 }, stdin: fds[0])
        close(fds[0])
        let ready = try #require(child.line(startingWith: "READY"))
        let port = try #require(ready.split(separator: " ").first { $0.hasPrefix("port=") }.map { String($0.dropFirst(5)) })
        let image = "\(dir)/kv.wbimg"
        let checkpoint = try wb("checkpoint", "\(child.pid)", "-o", image, "--kill", "-q")
        try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        try writeFile(Array("HELLO bob\n@@GET a\n".utf8), "\(corpus)/get")
        try writeFile(Array("HELLO x\n@@SET b 1\n@@GET b\n".utf8), "\(corpus)/set")
        let input = arguments.contains("--unix") ? "unix:\(path)" : "tcp:\(port)"
        let run = try wb(["fuzz", image, "--input", input, "--input-split", "@@", "--corpus", corpus, "--out", "\(dir)/out",
                          "--duration", "120", "--until-crashes", "1", "--seed", "3", "--json"], timeout: 300)
        try #require(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        let buckets = FuzzTests.buckets(summary)
        #expect(buckets.map(\.function) == ["delete_entry"], "\(buckets)")
        let status = try #require(summary["status"] as? [String: Any])
        #expect(status["dropped"] as? Int == 0 && status["hangs"] as? Int == 0, "\(status)")
        let bucket = try #require(buckets.first?.directory)
        let crashing = String(decoding: try Paths.readBytes("\(bucket)/input"), as: UTF8.self)
        #expect(crashing.hasPrefix("HELLO ") && crashing.contains("@@DEL "), "\(crashing)")
        let replay = try wb("replay", bucket)
        #expect(replay.code == 0 && replay.stdout.contains("delete_entry"), "\(replay.stdout) \(replay.stderr)")
        let debug = try wb("replay", bucket, "--debug", "--", "-batch", "-ex", "bt")
        #expect(debug.stdout.contains("delete_entry (e=0x0)") && debug.stdout.contains("DEL "), "\(debug.stdout) \(debug.stderr)")
    }

    /// harness-kvserver snapshotted in the middle of a client's session (blocked reading
    /// the connection, after the client's HELLO): each run's connection takes that client's
    /// place, so one message reaches the bug.
    @Test func aServerMidSessionGetsTheInputOnItsClientsConnection() throws {
        let dir = scratchDirectory()
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[1]) }
        let child = try Child(Products.harness("kvserver"), [], stdin: fds[0])
        close(fds[0])
        let ready = try #require(child.line(startingWith: "READY"))
        let port = try #require(ready.split(separator: " ").first { $0.hasPrefix("port=") }.flatMap { UInt16($0.dropFirst(5)) })
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, 16) } }
        try #require(connected == 0)
        #expect(write(client, "HELLO bob\n", 10) == 10)
        var reply = [UInt8](repeating: 0, count: 64)
        #expect(read(client, &reply, 64) > 0 && String(decoding: reply.prefix(7), as: UTF8.self) == "WELCOME")
        let image = "\(dir)/kv.wbimg"
        let checkpoint = try wb("checkpoint", "\(child.pid)", "-o", image, "--kill", "-q")
        try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
        let corpus = "\(dir)/seeds"
        try Paths.makeDirectories(corpus)
        try writeFile(Array("GET a\n".utf8), "\(corpus)/get")
        let run = try wb(["fuzz", image, "--input", "tcp:\(port)", "--corpus", corpus, "--out", "\(dir)/out",
                          "--duration", "120", "--until-crashes", "1", "--seed", "3", "--json"], timeout: 300)
        try #require(run.code == 0, "\(run.stderr)")
        let summary = try FuzzTests.summary(run)
        let buckets = FuzzTests.buckets(summary)
        #expect(buckets.map(\.function) == ["delete_entry"], "\(buckets)")
        let bucket = try #require(buckets.first?.directory)
        let crashing = String(decoding: try Paths.readBytes("\(bucket)/input"), as: UTF8.self)
        #expect(crashing.hasPrefix("DEL "), "the run did not continue the client's session: \(crashing)")
        let replay = try wb("replay", bucket)
        #expect(replay.code == 0 && replay.stdout.contains("delete_entry"), "\(replay.stdout) \(replay.stderr)")
    }
}

/// Writes a small file.
func writeFile(_ bytes: [UInt8], _ path: String) throws {
    let fd = try FileDescriptor.open(path, O_WRONLY | O_CREAT | O_TRUNC, what: "writing \(path)")
    try fd.writeAll(bytes)
}
