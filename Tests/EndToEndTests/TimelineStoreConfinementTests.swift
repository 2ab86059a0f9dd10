import Foundation
import Glibc
import Testing
import WBCore

/// A timeline's store is read beneath the timeline's directory: a link shipped inside it that
/// leads out (to /etc/shadow, say) is refused, naming the store file, in every way of
/// restoring or inspecting an image, while links that stay inside work.
@Suite(.serialized) struct TimelineStoreConfinementTests {
    /// Whether `run` is a failure of one line naming `name`.
    static func refused(_ run: Run, naming name: String) -> Bool {
        run.code == 1 && run.stdout.isEmpty && run.stderr.split(separator: "\n").count == 1 && run.stderr.contains(name)
    }

    @Test func aStoreFileLinkedOutOfTheTimelineIsRefused() throws {
        let dir = scratchDirectory()
        let (timeline, run) = try TimelineTests.record(dir, breakAt: 2000)
        #expect(run.code == 128 + SIGABRT, "\(run.stderr)")
        let images = try Paths.list(timeline).filter { $0.hasSuffix(".wbimg") }.sorted()
        let image = "\(timeline)/\(try #require(images.dropFirst(images.count / 2).first))"
        let meta = try Image(path: image).metadata
        let pack = try #require(meta.pageSources?.first).path
        // The pack, copied outside with the same bytes, and a link to the copy in its place:
        // only where it lies is wrong, so nothing but the confinement can catch it.
        let outside = "\(dir)/outside"
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        let copy = "\(outside)/pages"
        try FileManager.default.copyItem(atPath: "\(timeline)/\(pack)", toPath: copy)
        let original = "\(timeline)/\(pack).moved"
        #expect(rename("\(timeline)/\(pack)", original) == 0)
        #expect(symlink(copy, "\(timeline)/\(pack)") == 0)

        var cases: [[String]] = [
            ["restore", image, "--detach"], ["restore", image, "--detach", "--no-verify"],
            ["restore", image, "--detach", "--map"], ["restore", image, "--detach", "--map", "--no-verify"],
            ["inspect", image],
        ]
        for args in cases {
            let r = try wb(args, timeout: 120)
            #expect(Self.refused(r, naming: pack), "\(args.dropFirst(2)): exit \(r.code): \(r.stderr)")
            if r.code == 0, let pid = Int32(r.stdout.split(separator: "\n").first ?? "") { OwnedProcess.kill(pid, ifRunning: meta.process.exe) }
        }
        // A relative link that climbs out with '..' is refused as well.
        #expect(unlink("\(timeline)/\(pack)") == 0)
        #expect(symlink("../../outside/pages", "\(timeline)/\(pack)") == 0)
        let climbing = try wb("restore", image, "--detach", "--no-verify")
        #expect(Self.refused(climbing, naming: pack), "\(climbing.stderr)")

        // A link that stays inside the timeline is followed.
        #expect(unlink("\(timeline)/\(pack)") == 0)
        let name = Paths.directory(of: pack).isEmpty ? pack : String(pack.split(separator: "/").last!)
        #expect(symlink("\(name).moved", "\(timeline)/\(pack)") == 0)
        for extra in [[], ["--map"]] {
            let restored = try Restored.detach(image, extra + ["--stopped", "--new-pidns"])
            restored.kill()
        }

        // A file the store keeps (the program's executable), linked out of the timeline.
        let stored = try #require(meta.files.compactMap(\.source).first)
        let fileCopy = "\(outside)/file"
        try FileManager.default.copyItem(atPath: "\(timeline)/\(stored)", toPath: fileCopy)
        #expect(unlink("\(timeline)/\(stored)") == 0)
        #expect(symlink(fileCopy, "\(timeline)/\(stored)") == 0)
        cases = [["restore", image, "--detach"], ["restore", image, "--detach", "--map"], ["inspect", image]]
        for args in cases {
            let r = try wb(args, timeout: 120)
            #expect(Self.refused(r, naming: stored), "\(args.dropFirst(2)): exit \(r.code): \(r.stderr)")
            if r.code == 0, let pid = Int32(r.stdout.split(separator: "\n").first ?? "") { OwnedProcess.kill(pid, ifRunning: meta.process.exe) }
        }
    }
}
