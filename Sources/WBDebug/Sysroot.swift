import Foundation
import Glibc
import WBCore

/// A directory that looks like the checkpoint host's file system to a debugger: every file
/// the process had mapped appears at its original path, as a link to the copy on this
/// machine (the original when it is the same file, else the one the image carries). gdb's
/// `set sysroot` then finds the executable and every shared library with their symbols.
public enum Sysroot {
    public static func build(for image: Image, files: ResolvedFiles, cache: FileCache) throws -> String {
        let id = String(image.header.section(.metadata)!.checksum, radix: 16)
        let root = "\(cache.directory)/sysroots/\(id)"
        var links: [(String, String)] = []
        for m in image.process.mappings where m.kind == .file {
            guard let path = m.path, let id = m.file, let local = files.path(for: id) else { continue }
            links.append((path, local))
        }
        if let exe = files.exe { links.append((image.process.exe, exe)) }
        // Every name an embedded file had.
        for f in image.metadata.files {
            guard let local = links.first(where: { l in f.paths.contains(l.0) })?.1 else { continue }
            for p in f.paths { links.append((p, local)) }
        }
        for (path, local) in links where path.hasPrefix("/") {
            let target = root + path
            try Paths.makeDirectories(Paths.directory(of: target))
            _ = unlink(target)
            guard symlink(local, target) == 0 else {
                throw WBError.system(call: "symlink(\(target))", errno: errno, what: "building the debugger's sysroot")
            }
        }
        return root
    }
}
