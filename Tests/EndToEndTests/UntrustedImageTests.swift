import Foundation
import Glibc
import Testing
import WBCore
import WBSystem

/// Images are input from someone else: every forged image ends in success or in one line of
/// error, never in a trap, a signal or a hang, and never touches anything outside wb's own
/// directories.
@Suite(.serialized) struct UntrustedImageTests {
    /// The three images the mutants are made of: a process with much kernel state, one with
    /// eventfd/timerfd/epoll/signalfd, one with several threads.
    static func sources(in dir: String) throws -> [String] {
        var out: [String] = []
        for (name, args) in [("state", [dir]), ("events", []), ("threads", ["3"])] {
            let program = try Child(Products.harness(name), args)
            guard program.line(startingWith: "READY") != nil else { throw WBError.failed("harness-\(name) did not start") }
            let image = "\(dir)/\(name).wbimg"
            let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill")
            guard run.code == 0 else { throw WBError.failed("checkpoint of harness-\(name): \(run.stderr)") }
            program.wait()
            out.append(image)
        }
        return out
    }

    /// Whether a wb run ended as a user error should: exit status 0 or 1, and on failure a
    /// single line on stderr (notes and warnings before it are lines of their own, each
    /// starting with "wb:").
    static func endedCleanly(_ code: Int32, _ stderr: String) -> Bool {
        guard code == 0 || code == 1 else { return false }
        if stderr.contains("Fatal error") || stderr.contains("Stack dump") || stderr.contains("Current stack trace") { return false }
        return stderr.split(separator: "\n").allSatisfy { $0.hasPrefix("wb: ") || $0.hasPrefix("  ") }
    }

    @Test func forgedImagesEndInSuccessOrOneLineError() throws {
        let dir = scratchDirectory()
        let canary = "/tmp/wb-mutant-canary"
        try? FileManager.default.removeItem(atPath: canary)
        let images = try Self.sources(in: dir)
        var decoded = 0, refused = 0, viaCLI = 0, restored = 0
        var failures: [String] = []
        let started = Date()
        for (n, source) in images.enumerated() {
            let original = try Image(path: source)
            let mutants = try ImageMutants(original)
            let path = "\(dir)/mutant-\(n).wbimg", headerPath = "\(dir)/header-mutant-\(n).wbimg"
            var accepted: [(UInt64, String)] = []
            // In-process: decoding and the inspect report of 1,000 metadata mutants and 200
            // header mutants of each image (a trap here ends the test run: the last mutant
            // tried is in last-mutant.txt).
            for seed in UInt64(1)...1200 {
                let what = seed <= 1000 ? try mutants.writeMetadataMutant(seed &* 7919 &+ UInt64(n), to: path)
                                        : try mutants.writeHeaderMutant(seed, from: source, to: headerPath)
                try? "image \(n) seed \(seed): \(what)\n".write(toFile: "\(dir)/last-mutant.txt", atomically: false, encoding: .utf8)
                do {
                    let image = try Image(path: seed <= 1000 ? path : headerPath)
                    _ = ImageReport(image).text
                    decoded += 1
                    if seed <= 1000 { accepted.append((seed &* 7919 &+ UInt64(n), what)) }
                } catch let e as WBError {
                    refused += 1
                    if "\(e)".contains("\n") { failures.append("image \(n) mutant \(seed) (\(what)): a multi-line error: \(e)") }
                }
            }
            // Through the CLI: wb inspect of accepted mutants and some refused ones, and
            // wb restore --detach of accepted ones; every restored process is killed.
            for (k, (seed, what)) in accepted.prefix(60).enumerated() {
                _ = try mutants.writeMetadataMutant(seed, to: path)
                let inspect = try wb(["inspect", path], timeout: 60)
                viaCLI += 1
                if !Self.endedCleanly(inspect.code, inspect.stderr) {
                    failures.append("wb inspect of image \(n) mutant \(seed) (\(what)): exit \(inspect.code): \(inspect.stderr.prefix(400))")
                }
                guard k < 40 else { continue }
                let child = try Child(Products.wb, ["restore", path, "--detach", "--new-pidns"])
                let first = child.line(timeout: 60)
                let owned = first.flatMap { Int32($0) }.map(OwnedProcess.init)
                let code = child.exitCode
                if let owned, code == 0 {
                    restored += 1
                    owned.kill()
                } else if !Self.endedCleanly(code, child.stderrText) {
                    failures.append("wb restore of image \(n) mutant \(seed) (\(what)): exit \(code): \(child.stderrText.prefix(400))")
                }
            }
            for seed in UInt64(5001)...5030 {
                let what = try mutants.writeHeaderMutant(seed, from: source, to: headerPath)
                let inspect = try wb(["inspect", headerPath, "--no-backtrace"], timeout: 60)
                viaCLI += 1
                if !Self.endedCleanly(inspect.code, inspect.stderr) {
                    failures.append("wb inspect of image \(n) header mutant \(seed) (\(what)): exit \(inspect.code): \(inspect.stderr.prefix(400))")
                }
            }
        }
        print("forged images: \(decoded) decoded, \(refused) refused, \(viaCLI) through wb inspect, \(restored) restored, in \(Int(Date().timeIntervalSince(started))) s")
        #expect(failures.isEmpty, "\(failures.count) forged images were not handled cleanly:\n\(failures.prefix(20).joined(separator: "\n"))")
        #expect(refused > 0 && decoded > 0)
        #expect(!Paths.exists(canary), "a forged image made wb create \(canary)")
    }

    /// The traps forged metadata used to cause, each by name: a signal number of -1, a
    /// protection of -1, a page run's offset of 2^64-1, a file size of 2^64-4096, a negative
    /// fd or fd flags. Each is refused when the image is opened, naming the field.
    @Test func forgedFieldsAreRefusedByName() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("state"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        let source = "\(dir)/state.wbimg"
        try #require(try wb("checkpoint", "\(program.pid)", "-o", source, "--kill").code == 0)
        program.wait()
        let original = try Image(path: source)
        let cases: [(String, String, (inout ImageMetadata) -> Void)] = [
            ("signal", "the action of signal -1", { $0.process.sigactions[0].signal = -1 }),
            ("protection", "has protection -1", { $0.process.mappings[0].protection = -1 }),
            ("run offset", "has a page run outside the mapping", { m in
                let i = m.process.mappings.firstIndex { !$0.pages.isEmpty }!
                m.process.mappings[i].pages[0].dataOffset = UInt64.max }),
            ("file size", "has a size of 18446744073709547520 bytes", { $0.files[0].size = UInt64.max - 4095 }),
            ("fd", "fd -1 is out of range", { $0.process.fds[0].fd = -1 }),
            ("fd flags", "has open flags 0xffffffff", { $0.process.fds[0].flags = -1 }),
            ("page source", "leaves the image's directory", { $0.pageSources = [PageSource(path: "../../etc/shadow", length: 4096, checksum: 0)] }),
            ("timer", "POSIX timer -5", { $0.process.posixTimers = [PosixTimer(id: -5, clock: 0, notify: .none, signal: 0, value: 0, thread: nil, valueNanoseconds: 0, intervalNanoseconds: 0)] }),
            ("mapping", "lies outside user space", { m in
                let i = m.process.mappings.firstIndex { $0.kind == .anonymous }!
                m.process.mappings[i].end = 0xFFFF_FFFF_FFFF_F000 }),
        ]
        for (name, phrase, change) in cases {
            let path = "\(dir)/forged-\(name.filter(\.isLetter)).wbimg"
            try original.copy(to: path, changingMetadata: change)
            for args in [["inspect", path], ["restore", path, "--detach"]] {
                let run = try wb(args, timeout: 60)
                #expect(run.code == 1, "\(name): \(args[0]) exited \(run.code)")
                #expect(run.stderr.split(separator: "\n").count == 1 && run.stderr.contains(phrase), "\(name): \(run.stderr)")
                #expect(run.stderr.contains("invalid metadata"), "\(name): \(run.stderr)")
            }
        }
    }

    /// The header is read as the format states it: its size and flags, reserved fields,
    /// and no bytes after the end.
    @Test func headerFieldsAndTrailingBytesAreChecked() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("events"), [])
        _ = try #require(program.line(startingWith: "READY"))
        let source = "\(dir)/e.wbimg"
        try #require(try wb("checkpoint", "\(program.pid)", "-o", source, "--kill").code == 0)
        program.wait()
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: source)))
        func forged(_ name: String, _ change: (inout [UInt8]) -> Void) throws -> Run {
            var b = bytes
            change(&b)
            let count = Int(b[16])
            let end = 32 + count * 40
            let sum = b.withUnsafeBytes { Checksum.of(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }
            for k in 0..<8 { b[end + k] = UInt8(truncatingIfNeeded: sum >> (8 * UInt64(k))) }
            let path = "\(dir)/\(name).wbimg"
            try Data(b).write(to: URL(fileURLWithPath: path))
            return try wb("inspect", path, "--no-backtrace")
        }
        let appended = try forged("appended") { $0 += [1, 2, 3] }
        #expect(appended.code == 1 && appended.stderr.contains("3 bytes follow the end of the image"), "\(appended.stderr)")
        let size = try forged("size") { $0[12] = 0; $0[13] = 0x20 }
        #expect(size.code == 1 && size.stderr.contains("a header size of 8192"), "\(size.stderr)")
        let flags = try forged("flags") { $0[20] = 1 }
        #expect(flags.code == 1 && flags.stderr.contains("flags 0x1"), "\(flags.stderr)")
        let reserved = try forged("reserved") { $0[36] = 9 }
        #expect(reserved.code == 1 && reserved.stderr.contains("reserved fields"), "\(reserved.stderr)")
        let clean = try forged("clean") { _ in }
        #expect(clean.code == 0, "\(clean.stderr)")
    }
}
