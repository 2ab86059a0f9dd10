import Foundation
import Glibc
import Testing
@testable import WBSystem

/// `ConfinedDirectory.openForReading`: files beside an image are read beneath its directory,
/// links inside followed (with openat2), none out of it, and only regular files opened.
@Suite struct ConfinedReadTests {
    typealias Scene = ConfinedDirectoryTests.Scene

    func read(_ scene: Scene, _ path: String, _ resolution: ConfinedDirectory.Resolution) throws -> String {
        let f = try ConfinedDirectory.openForReading(beneath: scene.root, path: path, resolution: resolution)
        var buf = [UInt8](repeating: 0, count: 64)
        let n = try buf.withUnsafeMutableBytes { try f.read(into: $0, at: 0) }
        return String(decoding: buf[0..<n], as: UTF8.self)
    }

    func refusal(_ body: () throws -> Void) -> String? {
        do { try body(); return nil } catch let WBError.refused(why) { return why } catch { return "not a refusal: \(error)" }
    }

    /// root/store/pack ("data"), and links planted in root: out (absolute, to the canary's
    /// victim), up (relative, climbing out), dir-out (a directory outside), inside (relative,
    /// to store/pack), store/again (relative, `..` that stays inside).
    func planted() -> Scene {
        let scene = Scene()
        mkdir(scene.root, 0o755)
        mkdir("\(scene.root)/store", 0o755)
        _ = FileManager.default.createFile(atPath: "\(scene.root)/store/pack", contents: Data("data".utf8))
        scene.link(scene.victim, at: "\(scene.root)/out")
        scene.link("../canary/victim.txt", at: "\(scene.root)/up")
        scene.link(scene.canary, at: "\(scene.root)/dir-out")
        scene.link("store/pack", at: "\(scene.root)/inside")
        scene.link("../store/pack", at: "\(scene.root)/store/again")
        mkfifo("\(scene.root)/fifo", 0o600)
        return scene
    }

    @Test(arguments: ConfinedDirectoryTests.resolutions)
    func linksOutAreRefusedAndOnlyRegularFilesOpened(resolution: ConfinedDirectory.Resolution) throws {
        let scene = planted()
        #expect(try read(scene, "store/pack", resolution) == "data")
        for path in ["out", "up", "dir-out/victim.txt"] {
            let why = refusal { _ = try read(scene, path, resolution) }
            // (The walk names the link it met: dir-out.)
            #expect(why?.hasPrefix("refusing \(scene.root)/\(path.split(separator: "/")[0])") == true, "\(path): \(why ?? "read")")
        }
        // A FIFO is neither opened (which would block) nor read; nor is a directory.
        #expect(refusal { _ = try read(scene, "fifo", resolution) } == "refusing \(scene.root)/fifo: it is not a regular file")
        #expect(refusal { _ = try read(scene, "store", resolution) } == "refusing \(scene.root)/store: it is a directory")
        #expect(refusal { _ = try read(scene, "../canary/victim.txt", resolution) }?.contains("'..'") == true)
        do { _ = try read(scene, "store/none", resolution); Issue.record("opened a missing file") } catch let WBError.system(_, e, _) {
            #expect(e == ENOENT)
        }
        scene.expectCanaryUntouched()
    }

    @Test func linksThatStayInsideAreFollowedWithOpenat2() throws {
        guard ConfinedDirectory.Resolution.kernel == .openat2 else { return }
        let scene = planted()
        #expect(try read(scene, "inside", .openat2) == "data")
        #expect(try read(scene, "store/again", .openat2) == "data")
        // Where openat2 is missing, the walk refuses every link instead.
        #expect(refusal { _ = try read(scene, "inside", .walk) }?.contains("symbolic link") == true)
        let why = refusal { _ = try read(scene, "out", .openat2) }
        #expect(why == "refusing \(scene.root)/out: it leads outside \(scene.root)")
    }
}
