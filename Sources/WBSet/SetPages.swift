import Foundation
import Glibc
import WBCore

/// A set's images share their page data: every page the members hold is stored once, in the
/// set's page pack (`pages/pages.pack`) under its content hash, and each member image's page
/// runs point into it (a page source beside the image, as a timeline's images point into
/// their store). Ranks of one program hold many identical pages (relocated code and data,
/// buffers of one pattern); each costs the set one copy.
public enum SetPages {
    /// The pack, relative to the set directory.
    public static let pack = "pages/pages.pack"

    /// Moves the page data of the images `names` (in the set directory `dir`) into the pack and
    /// rewrites each image to point there; returns the bytes the set no longer holds twice.
    /// Images that still carry files of their own (SetFiles did not take them) or already
    /// point elsewhere are left as they are. The pack is written under a temporary name,
    /// flushed and renamed into place before any image points to it, and each image is
    /// rewritten to a temporary name, flushed and renamed over the old one: stopped at any
    /// moment, the set is whole.
    @discardableResult
    public static func share(in dir: String, images names: [String]) throws -> UInt64 {
        var index: [ContentHash: UInt64] = [:]
        var checksum = PageChecksum()
        var length: UInt64 = 0
        var saved: UInt64 = 0
        let path = "\(dir)/\(pack)"
        // Images may point into a pack already there: it is never written over.
        if Paths.exists(path) { return 0 }
        try Paths.makeDirectories("\(dir)/pages")
        let partial = "\(path).partial-\(getpid())"
        let out = try FileDescriptor.open(partial, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600, what: "creating \(partial)")
        var batch: [UInt8] = []
        func flush() throws {
            guard !batch.isEmpty else { return }
            try out.write(batch, at: length - UInt64(batch.count))
            batch.removeAll(keepingCapacity: true)
        }
        var rewritten: [(name: String, metadata: ImageMetadata)] = []
        do {
            for name in names {
                let image = try Image(path: "\(dir)/\(name)")
                guard image.metadata.files.allSatisfy({ $0.source != nil }), (image.metadata.pageSources ?? []).isEmpty,
                      let region = try image.pageRegion(0) else { continue }
                var metadata = image.metadata
                func relocate(_ mappings: inout [Mapping]) throws {
                    for k in mappings.indices where !mappings[k].pages.isEmpty {
                        var data = [(source: UInt32, offset: UInt64)?](repeating: nil, count: mappings[k].pageCount)
                        for r in mappings[k].pages {
                            for i in 0..<Int(r.count) where Int(r.page) + i < data.count {
                                let at = Int(r.dataOffset) + i * 4096
                                region.withBytes { b in
                                    let page = UnsafeRawBufferPointer(rebasing: b[at..<(at + 4096)])
                                    let hash = ContentHash.of(page)
                                    if let offset = index[hash] {
                                        saved += 4096
                                        data[Int(r.page) + i] = (1, offset)
                                    } else {
                                        index[hash] = length
                                        checksum.set(first: Int(length / 4096), page)
                                        batch.append(contentsOf: page)
                                        data[Int(r.page) + i] = (1, length)
                                        length += 4096
                                    }
                                }
                                if batch.count >= 8 << 20 { try flush() }
                            }
                        }
                        mappings[k].pages = Mapping.runs(from: data)
                    }
                }
                try relocate(&metadata.process.mappings)
                if var tree = metadata.descendants {
                    for p in tree.indices { try relocate(&tree[p].mappings) }
                    metadata.descendants = tree
                }
                rewritten.append((name, metadata))
            }
            try flush()
            try out.sync()
            out.close()
            guard length > 0 else { Paths.remove(partial); return 0 }
            try Paths.rename(partial, to: path)
            try SetFiles.syncDirectory("\(dir)/pages")
        } catch {
            Paths.remove(partial)
            throw error
        }
        let source = PageSource(path: pack, length: length, checksum: checksum.digest)
        for r in rewritten {
            var metadata = r.metadata
            metadata.pageSources = [source]
            let target = "\(dir)/\(r.name)"
            let temporary = "\(target).partial-\(getpid())"
            do {
                let writer = try ImageWriter(path: temporary)
                try writer.finish(metadata, sync: true)
                try Paths.rename(temporary, to: target)
            } catch {
                Paths.remove(temporary)
                throw error
            }
        }
        try SetFiles.syncDirectory(dir)
        return saved
    }
}
