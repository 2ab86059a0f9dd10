import Foundation
import Glibc
import WBTrace

/// Copies of the files a restored process may write, for runs that take a process forward
/// only to look at it (bisect, replays): every file it had open for writing, and every file
/// it had mapped shared and writable, is copied into a directory of the run's own and the
/// process gets the copy, so its writes never reach the user's real files. One copy per file,
/// shared by its fds and mappings, as the original was.
final class PrivateFiles {
    let directory: String
    private var copies: [String: String] = [:]

    /// `base`: where the fresh directory for the copies is made (mkdtemp: a name nobody
    /// could have planted, made 0700, then opened to 0711 so that the process reaches it).
    init(base: String) throws {
        var template = Array("\(base)/files-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw WBError.system(call: "mkdtemp", errno: errno, what: "making a directory for the restored process's file copies in \(base)")
        }
        directory = String(cString: made)
        // The restored process may run as another user: it must reach its copies.
        _ = chmod(directory, 0o711)
    }

    /// Copy path → original path.
    var names: [String: String] { Dictionary(uniqueKeysWithValues: copies.map { ($0.value, $0.key) }) }

    /// Whether the process gets a copy of `path`, and which.
    func copy(of path: String) -> String? { copies[path] }

    /// The copy of `path`, made on first use. Callers have opened the original in the
    /// restored process with its own rights first, so only a file it may open is copied; the
    /// copy keeps the original's mode and owner.
    func make(_ path: String) throws -> String {
        if let c = copies[path] { return c }
        let source = try FileDescriptor.open(path, O_RDONLY, what: "copying \(path)")
        let name = "\(directory)/\(copies.count)-\(path.split(separator: "/").last.map(String.init) ?? "file")"
        let st = try source.stat()
        let out = try FileDescriptor.open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: st.mode & 0o7777,
                                          what: "copying \(path) for the restored process")
        var at: UInt64 = 0
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try chunk.withUnsafeMutableBytes { try source.read(into: $0, at: at) }
            if n == 0 { break }
            try chunk.withUnsafeBytes { try out.write(UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: at) }
            at += UInt64(n)
        }
        _ = fchown(out.rawValue, st.uid, st.gid)
        copies[path] = name
        return name
    }

    /// Removes the copies (once the run that used them is over).
    func remove() {
        for (_, c) in copies { unlink(c) }
        rmdir(directory)
    }
}
