import Foundation
import Glibc

/// Files unpacked from images, by content hash, so a restore on a machine without the
/// original executables and libraries maps the image's own copies.
public struct FileCache: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// $WB_CACHE_DIR, else $XDG_CACHE_HOME/wb, else ~/.cache/wb, else /tmp/wb-cache-UID
    /// (which anyone could have made first: `open()` refuses it unless it is ours).
    public static var defaultDirectory: String {
        let env = ProcessInfo.processInfo.environment
        if let d = env["WB_CACHE_DIR"], !d.isEmpty { return d }
        if let d = env["XDG_CACHE_HOME"], !d.isEmpty { return d + "/wb" }
        if let h = env["HOME"], !h.isEmpty { return h + "/.cache/wb" }
        return "/tmp/wb-cache-\(getuid())"
    }

    /// The cache directory, created 0700 when missing. Refused when it is a symbolic link or
    /// belongs to someone else: wb unpacks files there that restored processes map and
    /// builds gdb's sysroot there, often as root.
    public func open() throws -> ConfinedDirectory {
        try FileCache.withHint { try ConfinedDirectory(opening: directory) }
    }

    /// A directory inside the cache ("files", "sysroots/ID"), made 0700 when missing.
    public func open(subdirectory: String) throws -> ConfinedDirectory {
        try FileCache.withHint { try ConfinedDirectory(opening: directory).subdirectory(subdirectory) }
    }

    /// A refusal of the cache says what to do about it.
    private static func withHint<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch WBError.refused(let why) {
            throw WBError.refused("\(why); set WB_CACHE_DIR to a directory of your own for wb's cache")
        }
    }

    /// The unpacked copy of an embedded file, written on first use. An entry already there
    /// counts only as a regular file of ours of the right size; anything else (a link, say)
    /// is replaced by a new copy, written to a file made for it and renamed into place.
    public func path(for file: EmbeddedFile, from image: Image) throws -> String {
        let name = "\(file.hash)"
        let files = try open(subdirectory: "files")
        let what = "unpacking \(file.paths.first ?? "a file") into \(files.path)"
        if let e = try files.status(of: name), e.kind == .regular, e.size == file.size, e.owner == geteuid() {
            return try files.path(of: name)
        }
        let data = try image.contents(of: file)
        // A name of our own, made exclusively: one left behind (or planted) is never reused.
        var temp = "", out: FileDescriptor?
        for attempt in 0..<8 {
            temp = "\(name).partial-\(getpid())-\(UInt32.random(in: 0 ... .max))"
            do {
                out = try files.createFile(temp, mode: file.code ? 0o755 : 0o644)
                break
            } catch WBError.system(_, EEXIST, _) where attempt < 7 {
                continue
            }
        }
        guard let out else { throw WBError.failed("\(what): no free temporary name") }
        do {
            try withContext(what) { try data.withBytes { try out.write($0, at: 0) } }
            out.close()
            try withContext(what) { try files.rename(temp, to: name) }
        } catch {
            try? files.remove(temp)
            throw error
        }
        return try files.path(of: name)
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
    /// Files mapped shared that no longer exist here, by "device:inode": the process maps a
    /// copy of the image's, linked nowhere (as a deleted file's).
    public var copiedShared: Set<String> = []

    public init() {}

    public func path(for identity: FileIdentity) -> String? { mapped["\(identity.device):\(identity.inode)"] }

    /// Whether the shared mapping of `identity` gets a copy of the image's bytes.
    public func copied(_ identity: FileIdentity) -> Bool { copiedShared.contains("\(identity.device):\(identity.inode)") }
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
                if out.mapped[key] != nil || out.copiedShared.contains(key) { continue }
                if m.shared && !m.deleted {
                    // Shared: the live file is the one to share, as it is now.
                    if let st = try? Paths.stat(path) {
                        if st.device != id.device || st.inode != id.inode {
                            out.notes.append("\(path), mapped shared, is another file here than at the checkpoint; the process shares this one")
                        }
                        out.mapped[key] = path
                    } else if id.content != nil {
                        out.notes.append("\(path), mapped shared, no longer exists here: the process maps a copy of the image's, linked nowhere")
                        out.copiedShared.insert(key)
                    } else {
                        throw WBError.failed("\(path) is missing here and the image does not carry it (it was mapped shared and larger than wb stores); restore on a machine that has it")
                    }
                    continue
                }
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
