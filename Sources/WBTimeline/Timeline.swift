import Foundation
import Glibc
import WBCore

/// A timeline directory: checkpoints of one program taken over its life (`wb run
/// --timeline`), sharing their pages through a content-addressed store.
///
///     timeline.json          the program, and every checkpoint: when, why, sizes
///     000001.wbimg ...       the images (restorable with wb restore; they need store/)
///     store/pages-000001     pages first seen in checkpoint 1, 4 KiB each
///     store/index            page hash -> (pack, offset), 32-byte records
///     store/files/HASH       executables and libraries, once
///     record/000001.log      with --record: what the program read after checkpoint 1
public final class Timeline {
    public struct Checkpoint: Codable, Sendable, Equatable {
        public var number: Int
        public var image: String
        /// Seconds since the program started.
        public var seconds: Double
        public var time: String
        /// scheduled, fault (the program was about to die of `signal`), or exit.
        public var reason: String
        public var signal: Int32?
        /// Memory the checkpoint holds.
        public var storedBytes: UInt64
        /// Disk this checkpoint added: its image, its new pages and new files.
        public var newBytes: UInt64
        /// What a self-contained image of it would have taken.
        public var fullBytes: UInt64
        public var pauseSeconds: Double
    }

    public struct Pack: Codable, Sendable, Equatable {
        public var id: Int
        public var length: UInt64
        public var checksum: UInt64
    }

    public struct Manifest: Codable, Sendable {
        public var version = 1
        public var program: [String]
        public var pid: Int32
        public var started: String
        public var every: Double?
        public var keep: Int?
        public var recording: Bool
        public var checkpoints: [Checkpoint] = []
        public var packs: [Pack] = []
        /// How the program ended ("exited with status 0", "killed by SIGSEGV"), once it has.
        public var ended: String?
        public var nextNumber = 1
    }

    public let directory: String
    public private(set) var manifest: Manifest
    public var manifestPath: String { "\(directory)/timeline.json" }
    public var storeDirectory: String { "\(directory)/store" }
    public var recordDirectory: String { "\(directory)/record" }

    /// Starts a new timeline in `directory` (created; it must not hold one already).
    public init(creating directory: String, program: [String], pid: Int32, every: Double?, keep: Int?, recording: Bool) throws {
        self.directory = Paths.absolute(directory)
        if Paths.exists("\(self.directory)/timeline.json") {
            throw WBError.invalidArgument("--timeline \(directory) already holds a timeline: pick another directory, or remove it first")
        }
        try Paths.makeDirectories("\(self.directory)/store/files")
        if recording { try Paths.makeDirectories("\(self.directory)/record") }
        manifest = Manifest(program: program, pid: pid, started: ISO8601DateFormatter().string(from: Date()),
                            every: every, keep: keep, recording: recording)
        try save()
    }

    /// Opens an existing timeline.
    public init(opening directory: String) throws {
        self.directory = Paths.absolute(directory)
        let path = "\(self.directory)/timeline.json"
        guard let raw = try? Paths.readBytes(path) else {
            throw WBError.invalidArgument("\(directory): not a timeline (no timeline.json); make one with wb run --timeline DIR --every D -- PROGRAM")
        }
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: Data(raw))
        } catch {
            throw WBError.badImage(path: path, problem: "not a timeline manifest (\(error))")
        }
        // A timeline travels like an image: its names must stay in its directory.
        for c in manifest.checkpoints where c.image.isEmpty || c.image.contains("/" as Character) || c.image.hasPrefix(".") || c.image.utf8.contains(0) {
            throw WBError.badImage(path: path, problem: "checkpoint \(c.number) names image '\(c.image)', which is not a file of the timeline's directory")
        }
    }

    public func save() throws {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try e.encode(manifest)
        let temporary = manifestPath + ".tmp"
        let fd = try FileDescriptor.open(temporary, O_WRONLY | O_CREAT | O_TRUNC, what: "writing \(manifestPath)")
        try fd.writeAll(Array(data) + [10])
        fd.close()
        try Paths.rename(temporary, to: manifestPath)
    }

    public var checkpoints: [Checkpoint] { manifest.checkpoints }

    public func imagePath(_ c: Checkpoint) -> String { "\(directory)/\(c.image)" }

    /// The next checkpoint's number and image name.
    func takeNumber() -> (Int, String) {
        let n = manifest.nextNumber
        manifest.nextNumber += 1
        return (n, String(format: "%06d.wbimg", n))
    }

    /// Gives back the number of a checkpoint that was not taken, so numbers have no gaps.
    func giveBack(_ n: Int) {
        if manifest.nextNumber == n + 1 { manifest.nextNumber = n }
    }

    func append(_ c: Checkpoint, packs: [Pack]) throws {
        manifest.checkpoints.append(c)
        manifest.packs += packs
        try save()
    }

    func setEnded(_ text: String) throws {
        manifest.ended = text
        try save()
    }

    func remove(checkpoints numbers: Set<Int>, packs ids: Set<Int>) throws {
        manifest.checkpoints.removeAll { numbers.contains($0.number) }
        manifest.packs.removeAll { ids.contains($0.id) }
        try save()
    }

    /// Disk the whole directory takes.
    public var diskBytes: UInt64 {
        func walk(_ dir: String) -> UInt64 {
            var total: UInt64 = 0
            for name in (try? Paths.list(dir)) ?? [] {
                let p = "\(dir)/\(name)"
                var st = stat()
                guard lstat(p, &st) == 0 else { continue }
                if st.st_mode & S_IFMT == S_IFDIR { total += walk(p) } else { total += UInt64(st.st_blocks) * 512 }
            }
            return total
        }
        return walk(directory)
    }
}
