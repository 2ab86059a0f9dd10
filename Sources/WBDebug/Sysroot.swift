import Foundation
import Glibc
import WBCore

/// A directory that looks like the checkpoint host's file system to a debugger: every file
/// the process had mapped appears at its original path, as a link to the copy on this
/// machine (the original when it is the same file, else the one the image carries). gdb's
/// `set sysroot` then finds the executable and every shared library with their symbols.
///
/// The paths come from the image (mappings, the executable, the loader's link map in the
/// image's memory, embedded files' names), and `wb restore --debug` often runs as root: the
/// directory is built through `ConfinedDirectory`, so no path, however it was forged, and no
/// link planted in the cache creates, removes or replaces anything outside it. Paths it
/// refuses (a `..`, a link in the way) are left out and listed in `skipped`.
public struct Sysroot: Sendable {
    /// The sysroot, for gdb's `set sysroot`.
    public let directory: String
    /// Each path left out, with why: one line each, for the caller to show as notes.
    public let skipped: [String]

    /// Builds (or refreshes) the sysroot of `image` in the cache.
    public static func build(for image: Image, files: ResolvedFiles, cache: FileCache) throws -> Sysroot {
        let id = String(image.header.section(.metadata)!.checksum, radix: 16)
        let root = try cache.open(subdirectory: "sysroots/\(id)")
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
        var skipped: [String] = []
        // The loader names libraries by the paths it searched (/lib/... on a merged-/usr
        // system, where maps show /usr/lib/...): the sysroot gets this machine's top-level
        // links, and each file also appears under its own local path. The confined directory
        // follows no link, these included, so paths under them are placed where the link
        // leads by rewriting their first component.
        var aliases: [String: [String]] = [:]
        for dir in ["lib", "lib64", "lib32", "libx32", "bin", "sbin"] {
            guard let target = try? Paths.readLink("/" + dir) else { continue }
            do {
                let leadsTo = try ConfinedDirectory.components(of: target)
                try root.makeDirectories(leadsTo.joined(separator: "/"))
                try root.symlink(target: target, at: dir)
                aliases[dir] = leadsTo
            } catch let WBError.refused(why) {
                skipped.append("/\(dir) (a link to \(target) here): \(why)")
            }
        }
        for (_, local) in links { links.append((local, local)) }
        links += debuggerScripts(of: image, cache: cache, objects: links)
        // A file's own local path does not replace a link this build made for an image path.
        var made = Set<[String]>()
        for (path, local) in links where path.hasPrefix("/") {
            do {
                var at = try ConfinedDirectory.components(of: path)
                if let first = at.first, let leadsTo = aliases[first] { at = leadsTo + at.dropFirst() }
                guard !at.isEmpty else { continue }
                if path == local && made.contains(at) { continue }
                try root.makeDirectories(at.dropLast().joined(separator: "/"))
                try root.symlink(target: local, at: at.joined(separator: "/"))
                made.insert(at)
            } catch let WBError.refused(why) {
                // A file has several mappings, each naming its path: one line per path.
                if !skipped.contains(why) { skipped.append(why) }
            }
        }
        // Printers that import modules from a directory beside their library's (libstdc++'s
        // from /usr/share/gcc/python, found relative to the library in the sysroot) get this
        // machine's, which the image does not carry.
        if image.metadata.files.contains(where: { $0.paths.contains { $0.hasPrefix(autoLoad + "/") && $0.contains("/libstdc++.so") } }),
           (try? Paths.stat("/usr/share/gcc/python"))?.isDirectory == true, (try? root.status(of: "usr/share/gcc")) == nil {
            try? root.makeDirectories("usr/share")
            try? root.symlink(target: "/usr/share/gcc", at: "usr/share/gcc")
        }
        return Sysroot(directory: root.path, skipped: skipped)
    }

    /// The sysroot's auto-load directory, where gdb finds the scripts the image carries.
    public static func autoLoadDirectory(_ sysroot: String) -> String { sysroot + autoLoad }
    private static let autoLoad = "/usr/share/gdb/auto-load"

    /// gdb's auto-load scripts the image carries (pretty printers, python's py-bt), each at
    /// its path under the auto-load directory and at the name gdb looks for: the auto-load
    /// directory + the real path of the object's file (gdb follows the sysroot's link to
    /// the file on this machine or in the cache) + "-gdb.py".
    private static func debuggerScripts(of image: Image, cache: FileCache, objects: [(String, String)]) -> [(String, String)] {
        var out: [(String, String)] = []
        for f in image.metadata.files {
            for script in f.paths where script.hasPrefix(autoLoad + "/") && script.hasSuffix("-gdb.py") && !f.code {
                guard let local = try? cache.path(for: f, from: image) else { continue }
                out.append((script, local))
                let object = String(script.dropFirst(autoLoad.count).dropLast("-gdb.py".count))
                let forms = [object, object.hasPrefix("/usr/") ? String(object.dropFirst(4)) : "/usr" + object]
                for (path, file) in objects where forms.contains(path) {
                    guard let real = realpath(file, nil) else { continue }
                    out.append((autoLoad + String(cString: real) + "-gdb.py", local))
                    free(real)
                }
            }
        }
        return out
    }
}
