import Foundation
import Glibc

/// The memory of an image's process as it was at the checkpoint, readable without restoring
/// it: stored pages from the page section, the rest of file mappings from the files, and
/// zeros for memory never written.
public final class ImageMemory: @unchecked Sendable {
    public let image: Image
    private let mappings: [Mapping]
    private let files: ResolvedFiles
    private var open: [String: FileDescriptor] = [:]

    /// The memory of `process` (default: the image's main process; in an image of a tree,
    /// any of its processes).
    public init(image: Image, files: ResolvedFiles, process: ProcessState? = nil) throws {
        self.image = image
        self.files = files
        mappings = (process ?? image.process).mappings.sorted { $0.start < $1.start }
        // Every page source is mapped up front: a missing one is an error here, not later.
        for s in 0...UInt32((image.metadata.pageSources ?? []).count) { _ = try image.pageRegion(s) }
    }

    /// The mapping holding `address`.
    public func mapping(at address: UInt64) -> Mapping? {
        var lo = 0, hi = mappings.count - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            if address < mappings[mid].start { hi = mid - 1 } else if address >= mappings[mid].end { lo = mid + 1 } else { return mappings[mid] }
        }
        return nil
    }

    /// Where the image holds the page at `address` (page-aligned) as stored data: a pointer
    /// into the mapped page section, valid while this object lives. Nil for pages that come
    /// from a file or are zero.
    public func storedPage(_ address: UInt64) -> UnsafeRawPointer? {
        guard let m = mapping(at: address) else { return nil }
        let page = UInt32((address - m.start) / 4096)
        guard let run = m.run(containing: page),
              let region = try? image.pageRegion(run.source) else { return nil }
        return region.base + Int(run.dataOffset) + Int(page - run.page) * 4096
    }

    /// Reads `count` bytes at `address` (within one page); nil where nothing is mapped.
    public func read(_ address: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, let m = mapping(at: address), UInt64(count) <= m.end - address else { return nil }
        let page = UInt32((address - m.start) / 4096)
        let within = Int(address % 4096)
        guard within + count <= 4096 else {
            // Crosses a page: read the two parts.
            let first = 4096 - within
            guard let a = read(address, count: first), let b = read(address + UInt64(first), count: count - first) else { return nil }
            return a + b
        }
        if let run = m.run(containing: page), let pages = try? image.pageRegion(run.source) {
            let at = Int(run.dataOffset) + Int(page - run.page) * 4096 + within
            return pages.withBytes { Array($0[at..<(at + count)]) }
        }
        if m.kind == .file, let id = m.file, let path = files.path(for: id) {
            if open[path] == nil { open[path] = try? FileDescriptor.open(path, O_RDONLY) }
            guard let fd = open[path] else { return nil }
            var out = [UInt8](repeating: 0, count: count)
            let got = (try? out.withUnsafeMutableBytes { try fd.read(into: $0, at: m.offset + (address - m.start)) }) ?? 0
            if got < count { for i in got..<count { out[i] = 0 } }
            return out
        }
        return [UInt8](repeating: 0, count: count)
    }

    public func readWord(_ address: UInt64) -> UInt64? {
        guard let b = read(address, count: 8) else { return nil }
        return b.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }
}
