import Foundation
import Glibc
import WBCore

/// A directory that looks like the checkpoint host's file system to a debugger: every file
/// the process had mapped appears at its original path, as a link to the copy on this
/// machine (the original when it is the same file, else the one the image carries). gdb's
/// `set sysroot` then finds the executable and every shared library with their symbols.
public enum Sysroot {
    /// Builds (or refreshes) the sysroot of `image`; returns its directory.
    public static func build(for image: Image, files: ResolvedFiles, cache: FileCache) throws -> String {
        let id = String(image.header.section(.metadata)!.checksum, radix: 16)
        let root = "\(cache.directory)/sysroots/\(id)"
        var links: [(String, String)] = []
        for m in image.process.mappings where m.kind == .file {
            guard let path = m.path, let id = m.file, let local = files.path(for: id) else { continue }
            links.append((path, local))
        }
        if let exe = files.exe { links.append((image.process.exe, exe)) }
        // The names the loader used, matched to files by where they are loaded.
        if let memory = try? ImageMemory(image: image, files: files) {
            for entry in memory.linkMap() where entry.name.hasPrefix("/") {
                let first = image.process.mappings.first { $0.kind == .file && $0.offset == 0 && $0.start == entry.base }
                    ?? image.process.mappings.first { $0.kind == .file && $0.start &- $0.offset == entry.base }
                if let m = first, let id = m.file, let local = files.path(for: id) { links.append((entry.name, local)) }
            }
        }
        // Every name an embedded file had.
        for f in image.metadata.files {
            guard let local = links.first(where: { l in f.paths.contains(l.0) })?.1 else { continue }
            for p in f.paths { links.append((p, local)) }
        }
        // The loader names libraries by the paths it searched (/lib/... on a merged-/usr
        // system, where maps show /usr/lib/...): the sysroot gets this machine's top-level
        // links, and each file also appears under its own local path.
        for dir in ["/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"] {
            if let target = try? Paths.readLink(dir) {
                _ = unlink(root + dir)
                try Paths.makeDirectories(target.hasPrefix("/") ? root + target : root + "/" + target)
                _ = symlink(target, root + dir)
            }
        }
        for (_, local) in links { links.append((local, local)) }
        for (path, local) in links where path.hasPrefix("/") {
            let target = root + path
            if path == local && Paths.exists(target) { continue }
            try Paths.makeDirectories(Paths.directory(of: target))
            _ = unlink(target)
            guard symlink(local, target) == 0 else {
                throw WBError.system(call: "symlink(\(target))", errno: errno, what: "building the debugger's sysroot")
            }
        }
        return root
    }
}
