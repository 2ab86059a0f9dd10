import Foundation
import Glibc
import WBCore

/// A set's images share the files they embed: every executable and library (and the other
/// files an image carries) is stored once, in the set's `files/` directory under its content
/// hash, and each member image refers to it there (an embedded file with a `source`, as a
/// timeline's images refer to their store). Four ranks of one program on one host carry its
/// binary and libraries once instead of four times.
public enum SetFiles {
    /// The directory, inside the set, holding the shared files.
    public static let directory = "files"

    /// Moves the embedded files of the images `names` (in the set directory `dir`) into
    /// `dir/files/` and rewrites each image to refer to them; returns the bytes the set no
    /// longer holds twice. Each file is written under a temporary name, flushed and renamed
    /// into place before any image refers to it, and each image is rewritten to a temporary
    /// name, flushed and renamed over the old one: stopped at any moment, the set is whole.
    @discardableResult
    public static func share(in dir: String, images names: [String]) throws -> UInt64 {
        var saved: UInt64 = 0
        let files = "\(dir)/\(directory)"
        try Paths.makeDirectories(files)
        for name in names {
            let path = "\(dir)/\(name)"
            let image = try Image(path: path)
            guard image.metadata.files.contains(where: { $0.source == nil }) else { continue }
            var metadata = image.metadata
            for (i, f) in metadata.files.enumerated() where f.source == nil {
                let relative = "\(directory)/\(f.hash)"
                let target = "\(dir)/\(relative)"
                if Paths.exists(target) {
                    saved += f.size
                } else {
                    let partial = "\(target).partial-\(getpid())"
                    try withContext("storing \(f.paths.first ?? "a file") in \(files)") {
                        let out = try FileDescriptor.open(partial, O_WRONLY | O_CREAT | O_TRUNC, mode: f.code ? 0o755 : 0o644,
                                                          what: "creating \(partial)")
                        try image.contents(of: f).withBytes { try out.write($0, at: 0) }
                        try out.sync()
                        out.close()
                        try Paths.rename(partial, to: target)
                    }
                }
                metadata.files[i].source = relative
                metadata.files[i].dataOffset = 0
            }
            try syncDirectory(files)
            let partial = "\(path).partial-\(getpid())"
            do {
                try image.rewriteWithFilesBeside(to: partial, metadata: metadata)
                try Paths.rename(partial, to: path)
            } catch {
                Paths.remove(partial)
                throw error
            }
        }
        try syncDirectory(dir)
        return saved
    }

    /// Flushes a directory (the renames into it).
    static func syncDirectory(_ path: String) throws {
        let fd = try FileDescriptor.open(path, O_RDONLY | O_DIRECTORY, what: "opening \(path)")
        try fd.sync()
    }
}
