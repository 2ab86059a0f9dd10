import Foundation
import Glibc
import Testing
import WBCore

/// Memory hardening real services run with: sealed mappings (mseal, Linux 6.10+) and
/// memory-deny-write-execute (PR_SET_MDWE, which systemd sets for MemoryDenyWriteExecute=).
/// A checkpoint must work on such a process without the executable scratch memory it would
/// otherwise inject (MDWE refuses it), and restore must seal and deny again, last.
@Suite struct HardenedMemoryTests {
    /// Checkpointed once leaving it running (it verifies itself afterwards) and once with
    /// --kill; restored, its sealed pages hold their data and are sealed, and MDWE holds.
    @Test func sealedMemoryAndWriteExecuteDenialComeBack() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("hardened"), [])
        let ready = try #require(program.line(startingWith: "READY") ?? program.line(startingWith: "UNSUPPORTED"))
        try #require(ready.hasPrefix("READY"), "this kernel lacks mseal or PR_SET_MDWE: \(ready)")
        let sealed = try #require(field(ready, "sealed").flatMap { UInt64($0.dropFirst(2), radix: 16) })

        let running = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/running.wbimg")
        #expect(running.code == 0, "\(running.stderr)")
        kill(program.pid, SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")

        let image = "\(dir)/hardened.wbimg"
        try checkpointKilled(program, to: image)
        let p = try Image(path: image).process
        #expect(p.knobs?.mdwe == 1)
        #expect(p.mappings.first { $0.start == sealed }?.vmFlags.contains("sl") == true)
        #expect(try wb("inspect", image).stdout.contains("memory-deny-write-execute 1"))
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"], "\(restored.wb.stderrText)")
    }
}
