import Foundation
import Glibc

extension Image {
    /// Opens `relative`, a file the image keeps beside it (a timeline's page pack or stored
    /// file, `what` names which), beneath the image's directory: links inside the directory
    /// are followed, none out of it (`ConfinedDirectory.openForReading`). A timeline is often
    /// copied from elsewhere and restored as root, and a link shipped inside it must not put
    /// the bytes of /etc/shadow into a restored process. A missing file is `missing`; a
    /// refused one is named with why.
    func openBeside(_ relative: String, what: String, missing: @autoclosure () -> String) throws -> FileDescriptor {
        do {
            return try ConfinedDirectory.openForReading(beneath: directory, path: relative)
        } catch let WBError.system(_, code, _) where code == ENOENT || code == ENOTDIR {
            throw WBError.badImage(path: path, problem: missing())
        } catch let WBError.refused(why) {
            throw WBError.badImage(path: path, problem: "\(what) \(relative) cannot be used: \(why)")
        }
    }

    /// The path of page source `source`'s file beside the image as the kernel names it once
    /// opened beneath the image's directory (`openBeside`): every link inside resolved, so a
    /// process that opens it by this path follows none. Worked out once per image and source
    /// (`wb restore --map` asks for every page run).
    func resolvedBeside(_ source: UInt32) throws -> String {
        if let known = ResolvedSources.shared.path(self, source) { return known }
        let name = metadata.pageSources![Int(source) - 1].path
        let f = try openBeside(name, what: "its page store file", missing: "its page data \(name) is missing beside it")
        let real = try Paths.readLink("/proc/self/fd/\(f.rawValue)")
        ResolvedSources.shared.remember(real, self, source)
        return real
    }
}

/// `Image.resolvedBeside`'s answers, by image: a table beside the class, each entry holding its
/// image weakly so that an entry is never taken for a later image at the same address.
private final class ResolvedSources: @unchecked Sendable {
    static let shared = ResolvedSources()
    private struct Entry {
        weak var image: Image?
        var paths: [UInt32: String]
    }
    private var entries: [ObjectIdentifier: Entry] = [:]
    private let lock = NSLock()

    func path(_ image: Image, _ source: UInt32) -> String? {
        lock.lock()
        defer { lock.unlock() }
        guard let e = entries[ObjectIdentifier(image)], e.image === image else { return nil }
        return e.paths[source]
    }

    func remember(_ path: String, _ image: Image, _ source: UInt32) {
        lock.lock()
        defer { lock.unlock() }
        let key = ObjectIdentifier(image)
        if entries[key]?.image !== image {
            entries = entries.filter { $0.value.image != nil }
            entries[key] = Entry(image: image, paths: [:])
        }
        entries[key]!.paths[source] = path
    }
}
