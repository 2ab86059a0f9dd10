import Foundation
import Glibc
import Testing
import WBCore

/// `wb restore --map` runs page data straight from the image file, so it checks that data
/// before any process starts, as a copying restore does while it copies.
@Suite(.serialized) struct MappedRestoreTests {
    @Test func aFlippedByteOfMappedPageDataIsCaughtBeforeTheProcessRuns() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("heap"), ["8"])
        let sum = try #require(field(program.line(startingWith: "READY"), "sum"))
        let image = "\(dir)/heap.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image, "--kill")
        try #require(run.code == 0, "\(run.stderr)")
        program.wait()
        // A byte in the middle of a stored page of the heap's buffer: memory --map maps from
        // the image (private anonymous, not growing down).
        let original = try Image(path: image)
        let heap = try #require(original.process.mappings
            .filter { !$0.shared && ($0.kind == .anonymous || $0.kind == .heap) && !$0.vmFlags.contains("gd") && !$0.pages.isEmpty }
            .max { $0.storedPageCount < $1.storedPageCount })
        let at = original.absoluteOffset(.pages, heap.pages[0].dataOffset) + 2048
        let f = try FileDescriptor.open(image, O_RDWR, what: "flipping a byte of page data")
        var byte: UInt8 = 0
        _ = withUnsafeMutableBytes(of: &byte) { pread(f.rawValue, $0.baseAddress, 1, off_t(at)) }
        byte ^= 0x01
        _ = withUnsafeBytes(of: &byte) { pwrite(f.rawValue, $0.baseAddress, 1, off_t(at)) }

        let refused = try wb("restore", image, "--map", "--detach")
        #expect(refused.code == 1)
        let lines = refused.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("checksum mismatch in section PAGE"), "\(refused.stderr)")
        #expect(refused.stdout.isEmpty)
        #expect(!ProcFS_exists(program.pid), "a process was left behind")

        // --no-verify is the one way past the check: the flipped byte then reaches the process,
        // whose own checksums see it.
        let restored = try Restored.detach(image, ["--map", "--no-verify"])
        defer { restored.kill() }
        #expect(restored.pid == program.pid)
        kill(restored.pid, SIGUSR1)
        let verify = restored.line(startingWith: "VERIFY")
        #expect(verify?.hasPrefix("VERIFY FAIL") == true || (verify != nil && field(verify, "sum") != sum), "\(verify ?? "no answer")")
    }
}
