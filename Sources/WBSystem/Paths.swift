import Glibc

/// Small file-system helpers for /proc and the image's neighbourhood.
public enum Paths {
    /// readlink(2) as a String.
    public static func readLink(_ path: String) throws -> String {
        var buf = [UInt8](repeating: 0, count: 4097)
        let n = try syscallValue("readlink(\(path))", "reading link \(path)") {
            buf.withUnsafeMutableBufferPointer { readlink(path, UnsafeMutableRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), 4096) }
        }
        return String(decoding: buf[0..<n], as: UTF8.self)
    }

    /// The entry names of a directory, without "." and "..".
    public static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else {
            throw WBError.system(call: "opendir(\(path))", errno: errno, what: "listing \(path)")
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// A whole small file (proc files report size 0, so this reads to EOF).
    public static func readBytes(_ path: String, limit: Int = 64 << 20) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, O_RDONLY, what: "reading \(path)")
        return try fd.readAll(limit: limit)
    }

    public static func readText(_ path: String) throws -> String {
        String(decoding: try readBytes(path), as: UTF8.self)
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// stat(2), following symlinks (an O_PATH open and fstat).
    public static func stat(_ path: String) throws -> FileDescriptor.Status {
        try FileDescriptor.open(path, 0o10000000 /* O_PATH */, what: "reading the status of \(path)").stat()
    }

    /// The directory part of a path ("." when there is none).
    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }

    /// Creates a directory and its parents, like `mkdir -p`.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, mode) != 0 && errno != EEXIST {
                throw WBError.system(call: "mkdir(\(current))", errno: errno, what: "creating \(path)")
            }
        }
    }

    /// Renames atomically.
    public static func rename(_ from: String, to: String) throws {
        try syscallValue("rename(\(from), \(to))", "moving the finished image into place") { Glibc.rename(from, to) }
    }

    public static func remove(_ path: String) { _ = unlink(path) }

    /// `path` made absolute against the working directory.
    public static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buf = [CChar](repeating: 0, count: 4097)
        guard getcwd(&buf, 4096) != nil else { return path }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + path
    }
}

extension StringProtocol {
    /// The string without leading and trailing characters from `set`.
    public func trimming(_ set: String) -> String {
        let chars = Set(set)
        var s = Substring(self)
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

extension Paths {
    /// Writes a whole file, created or replaced.
    public static func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        let fd = try FileDescriptor.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: mode, what: "writing \(path)")
        try fd.writeAll(bytes)
    }

    /// Writes a small text file that already exists (a /proc control file).
    public static func writeText(_ path: String, _ text: String) throws {
        let fd = try FileDescriptor.open(path, O_WRONLY, what: "writing \(path)")
        try fd.writeAll(Array(text.utf8))
    }
}

extension String {
    /// The path without the " (deleted)" the kernel appends, and whether it was there.
    public var deletedStripped: (path: String, deleted: Bool) {
        hasSuffix(" (deleted)") ? (String(dropLast(" (deleted)".count)), true) : (self, false)
    }
}
