import Foundation
import Glibc
import Testing
import WBCore

/// Guard pages (madvise MADV_GUARD_INSTALL, Linux 6.13+) are page-table markers: a
/// checkpoint records where they are and reads nothing there, and restore puts them back after
/// the pages are in. harness-guards has a 16-page mapping with guards on pages 0, 5, 10 and
/// 13-14, and checks on SIGUSR1 that exactly those pages fault and the rest hold their data.
@Suite(.serialized, .enabled(if: GuardKernel.installs, "this kernel has no MADV_GUARD_INSTALL (Linux 6.13+)"))
struct GuardPageTests {

    /// The guard ranges harness-guards puts on its mapping at `base`.
    static func expectedGuards(_ base: UInt64) -> [[UInt64]] {
        [[0, 1], [5, 6], [10, 11], [13, 15]].map { [base + $0[0] * 4096, base + $0[1] * 4096] }
    }

    /// harness-guards started, with the address of its guarded mapping.
    static func start() throws -> (Child, UInt64) {
        let program = try Child(Products.harness("guards"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        let base = try #require(field(ready, "base").flatMap { UInt64($0.dropFirst(2), radix: 16) })
        return (program, base)
    }

    /// The harness's answer to one SIGUSR1.
    static func verify(_ program: Child) -> String {
        program.signal(SIGUSR1)
        return program.line(startingWith: "VERIFY") ?? "no answer"
    }

    /// The image's mapping holding `base`, which must record exactly the harness's guards and
    /// store none of their pages.
    static func checkImage(_ path: String, base: UInt64) throws {
        let image = try Image(path: path)
        let m = try #require(image.process.mappings.first { $0.contains(base) })
        #expect(m.guards == expectedGuards(base), "\(m.guards.map { $0.map { $0.map(hex) } } ?? [])")
        let guardPages = Set((m.guards ?? []).flatMap { g in stride(from: (g[0] - m.start) / 4096, to: (g[1] - m.start) / 4096, by: 1) })
        let stored = m.pages.flatMap { r in (UInt64(r.page)..<UInt64(r.page + r.count)) }
        #expect(guardPages.isDisjoint(with: stored), "pages under guards were stored")
        #expect(m.guardPageCount == 5)
        // Mappings without guards leave the field out.
        #expect(image.process.mappings.filter { $0.guards != nil }.count == 1)
    }

    @Test func guardPagesComeBackAfterACheckpointThatKills() throws {
        let dir = scratchDirectory()
        let (program, base) = try Self.start()
        #expect(Self.verify(program) == "VERIFY OK")
        let image = "\(dir)/guards.wbimg"
        try checkpointKilled(program, to: image)
        try Self.checkImage(image, base: base)
        let inspect = try wb("inspect", image, "--no-backtrace")
        #expect(inspect.code == 0)
        #expect(inspect.stdout.contains("guard pages \(hex(base))-\(hex(base + 4096)) \(hex(base + 5 * 4096))-"), "\(inspect.stdout)")

        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"])
    }

    @Test func guardPagesComeBackWithPagesMappedFromTheImage() throws {
        let dir = scratchDirectory()
        let (program, base) = try Self.start()
        let image = "\(dir)/guards.wbimg"
        try checkpointKilled(program, to: image)
        try Self.checkImage(image, base: base)
        let restored = try Restored.detach(image, ["--map"])
        defer { restored.kill() }
        #expect(restored.verify(rounds: 2) == ["VERIFY OK", "VERIFY OK"])
    }

    /// The default checkpoint copies memory while the process runs, write-protected through a
    /// userfaultfd: the kernel reports a guard marker there as written until a protecting scan
    /// has seen it, and none of them may be read.
    @Test func guardPagesComeBackAfterACheckpointThatLeavesTheProcessRunning() throws {
        let dir = scratchDirectory()
        let (program, base) = try Self.start()
        let image = "\(dir)/guards.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image)
        try #require(run.code == 0, "\(run.stderr)")
        #expect(Self.verify(program) == "VERIFY OK", "the process ran on changed")
        try Self.checkImage(image, base: base)
        program.signal(SIGKILL)
        program.wait()
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify() == ["VERIFY OK"])
    }

    /// Where PAGEMAP_SCAN has no PAGE_IS_GUARD (before Linux 6.14) a guard marker looks like a
    /// swapped page: the checkpoint refuses in one line naming the mapping, and the process
    /// runs on as it was.
    @Test(arguments: [["--kill"], []])
    func aKernelThatCannotTellGuardPagesGetsARefusalNamingTheMapping(_ extra: [String]) throws {
        let dir = scratchDirectory()
        let (program, base) = try Self.start()
        let run = try wb(["checkpoint", "\(program.pid)", "-o", "\(dir)/guards.wbimg"] + extra, env: ["WB_PAGEMAP_GUARD": "unsupported"])
        #expect(run.code == 1)
        let lines = run.stderr.split(separator: "\n").filter { !$0.hasPrefix("wb: note:") }
        #expect(lines.count == 1 && lines[0].contains("mapping \(hex(base))-") && lines[0].contains("guard pages")
                && !lines[0].contains("EIO"), "\(run.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/guards.wbimg"))
        #expect(Self.verify(program) == "VERIFY OK")
    }

    /// The validator holds guard ranges to page-aligned pairs inside their mapping, in order,
    /// apart, and off the stored pages.
    @Test func forgedGuardRangesAreRefusedInOneLine() throws {
        let dir = scratchDirectory()
        let (program, base) = try Self.start()
        let image = "\(dir)/guards.wbimg"
        try checkpointKilled(program, to: image)
        let original = try Image(path: image)
        let index = try #require(original.process.mappings.firstIndex { $0.contains(base) })
        let m = original.process.mappings[index]
        let data = try #require(m.pages.first).page
        let forged: [(String, [[UInt64]])] = [
            ("outside", [[m.end, m.end + 4096]]),
            ("before", [[m.start - 4096, m.start + 4096]]),
            ("unaligned", [[base + 1, base + 4096]]),
            ("empty", [[base, base]]),
            ("not a pair", [[base, base + 4096, base + 8192]]),
            ("out of order", [[base + 5 * 4096, base + 6 * 4096], [base, base + 4096]]),
            ("overlapping", [[base, base + 2 * 4096], [base + 4096, base + 3 * 4096]]),
            ("on stored data", [[m.start + UInt64(data) * 4096, m.start + UInt64(data + 1) * 4096]]),
        ]
        for (what, guards) in forged {
            let path = "\(dir)/forged.wbimg"
            try original.copy(to: path) { $0.process.mappings[index].guards = guards }
            #expect(throws: WBError.self, "\(what)") { _ = try Image(path: path) }
            let run = try wb("inspect", path)
            #expect(run.code == 1 && run.stderr.split(separator: "\n").count == 1 && run.stderr.contains("guards"), "\(what): \(run.stderr)")
        }
        // Guards on the vdso, which the kernel never has.
        let vdso = try #require(original.process.mappings.firstIndex { $0.kind == .vdso })
        let v = original.process.mappings[vdso]
        try original.copy(to: "\(dir)/forged.wbimg") { $0.process.mappings[vdso].guards = [[v.start, v.start + 4096]] }
        #expect(throws: WBError.self) { _ = try Image(path: "\(dir)/forged.wbimg") }
    }
}

enum GuardKernel {
    /// Whether madvise(MADV_GUARD_INSTALL) works here, tried on a page of this process.
    static let installs: Bool = {
        guard let p = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else { return false }
        defer { munmap(p, 4096) }
        return madvise(p, 4096, 102) == 0
    }()
}
