import Foundation
import Glibc

/// Files unpacked from images, by content hash, so a restore on a machine without the
/// original executables and libraries maps the image's own copies.
public struct FileCache: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// $WB_CACHE_DIR, else $XDG_CACHE_HOME/wb, else ~/.cache/wb, else /tmp/wb-cache-UID.
    public static var defaultDirectory: String {
        let env = ProcessInfo.processInfo.environment
        if let d = env["WB_CACHE_DIR"], !d.isEmpty { return d }
        if let d = env["XDG_CACHE_HOME"], !d.isEmpty { return d + "/wb" }
        if let h = env["HOME"], !h.isEmpty { return h + "/.cache/wb" }
        return "/tmp/wb-cache-\(getuid())"
    }

    /// The unpacked copy of an embedded file, written on first use.
    public func path(for file: EmbeddedFile, from image: Image) throws -> String {
        let dir = "\(directory)/files"
        let path = "\(dir)/\(file.hash)"
        if let st = try? Paths.stat(path), st.size == file.size { return path }
        try Paths.makeDirectories(dir)
        let temp = "\(path).partial-\(getpid())"
        let out = try FileDescriptor.open(temp, O_WRONLY | O_CREAT | O_TRUNC, mode: file.code ? 0o755 : 0o644,
                                          what: "unpacking \(file.paths.first ?? "a file") into \(dir)")
        let data = try image.contents(of: file)
        try withContext("unpacking \(file.paths.first ?? "a file") into \(dir)") { try data.withBytes { try out.write($0, at: 0) } }
        out.close()
        try Paths.rename(temp, to: path)
        return path
    }
}

/// Where each file an image needs comes from on this machine.
public struct ResolvedFiles: Sendable {
    /// Mapped files by "device:inode" of the checkpoint host: the local path to map.
    public var mapped: [String: String] = [:]
    /// The executable's local path (the root process's, in an image of a tree).
    public var exe: String?
    /// Every process's executable, by pid.
    public var exes: [Int32: String] = [:]
    public var notes: [String] = []

    public init() {}

    public func path(for identity: FileIdentity) -> String? { mapped["\(identity.device):\(identity.inode)"] }
}

/// Decides, for every file an image's process had mapped, which file on this machine to use.
public struct FileResolver {
    public let image: Image
    public let cache: FileCache

    public init(image: Image, cache: FileCache) { self.image = image; self.cache = cache }

    public func resolveAll() throws -> ResolvedFiles {
        var out = ResolvedFiles()
        for p in image.metadata.processes {
            for m in p.mappings where m.kind == .file {
                guard let id = m.file, let path = m.path else { continue }
                let key = "\(id.device):\(id.inode)"
                if out.mapped[key] != nil { continue }
                out.mapped[key] = try resolve(path: path, identity: id, deleted: m.deleted, note: &out.notes)
            }
            if let exe = p.exeFile {
                out.exes[p.pid] = out.path(for: exe) ?? (try? resolve(path: p.exe, identity: exe, deleted: false, note: &out.notes))
            }
        }
        out.exe = out.exes[image.process.pid]
        return out
    }

    /// The original path when the file there is the same one (by identity, or by content),
    /// else the image's copy.
    public func resolve(path: String, identity id: FileIdentity, deleted: Bool, note: inout [String]) throws -> String {
        if !deleted, let st = try? Paths.stat(path), st.size == id.size {
            if st.device == id.device && st.inode == id.inode && st.mtimeSeconds == id.mtimeSeconds && st.mtimeNanoseconds == id.mtimeNanoseconds {
                return path
            }
            if let content = id.content {
                let fd = try FileDescriptor.open(path, O_RDONLY, what: "comparing \(path) with the image's copy")
                let region = try MappedRegion(file: fd, offset: 0, count: Int(st.size))
                if region.withBytes({ ContentHash.of($0) }) == content { return path }
            } else if st.mtimeSeconds == id.mtimeSeconds {
                return path
            }
        }
        guard let content = id.content, let file = image.metadata.file(content) else {
            throw WBError.failed("\(path) is \(deleted ? "deleted" : "missing or different") here and the image does not carry it; restore on a machine that has the original file")
        }
        if !deleted { note.append("\(path) differs here: using the image's copy") }
        return try cache.path(for: file, from: image)
    }
}
