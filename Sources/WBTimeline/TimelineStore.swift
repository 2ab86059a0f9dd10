import Foundation
import Glibc
import WBCore

/// The content-addressed store a timeline's images share. A checkpoint is first written as
/// an ordinary image; `intern` then moves its pages and files into the store — each page
/// kept once, under the XXH3-128 hash of its bytes — and writes the final image, whose page
/// runs point into the store's pack files. Unchanged pages cost a checkpoint nothing but an
/// entry in its page table.
public final class TimelineStore {
    public struct Location: Equatable {
        public var pack: Int
        public var offset: UInt64
    }

    let timeline: Timeline
    private var index: [ContentHash: Location] = [:]
    private var indexPath: String { "\(timeline.storeDirectory)/index" }
    static let recordBytes = 32

    public init(timeline: Timeline) throws {
        self.timeline = timeline
        try loadIndex()
    }

    static func packName(_ id: Int) -> String { String(format: "store/pages-%06d", id) }

    private func loadIndex() throws {
        guard let raw = try? Paths.readBytes(indexPath, limit: 1 << 34) else { return }
        let live = Set(timeline.manifest.packs.map(\.id))
        raw.withUnsafeBytes { b in
            var at = 0
            while at + TimelineStore.recordBytes <= b.count {
                let high = b.loadUnaligned(fromByteOffset: at, as: UInt64.self)
                let low = b.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self)
                let pack = Int(b.loadUnaligned(fromByteOffset: at + 16, as: UInt32.self))
                let offset = b.loadUnaligned(fromByteOffset: at + 24, as: UInt64.self)
                if live.contains(pack) { index[ContentHash(high: high, low: low)] = Location(pack: pack, offset: offset) }
                at += TimelineStore.recordBytes
            }
        }
    }

    private static func record(_ hash: ContentHash, _ l: Location) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: recordBytes)
        out.withUnsafeMutableBytes { b in
            b.storeBytes(of: hash.high, toByteOffset: 0, as: UInt64.self)
            b.storeBytes(of: hash.low, toByteOffset: 8, as: UInt64.self)
            b.storeBytes(of: UInt32(l.pack), toByteOffset: 16, as: UInt32.self)
            b.storeBytes(of: l.offset, toByteOffset: 24, as: UInt64.self)
        }
        return out
    }

    public struct Interned {
        public var image: String
        public var imageBytes: UInt64
        public var storedBytes: UInt64
        public var newBytes: UInt64
        public var fullBytes: UInt64
        public var pack: Timeline.Pack?
    }

    /// Moves the pages and files of the image at `temporary` into the store and writes the
    /// image `name` in the timeline that refers to them; `temporary` is removed.
    public func intern(_ temporary: String, as name: String, pack id: Int) throws -> Interned {
        let source = try Image(path: temporary)
        defer { Paths.remove(temporary) }
        var metadata = source.metadata
        let packPath = "\(timeline.directory)/\(TimelineStore.packName(id))"
        let pack = try FileDescriptor.open(packPath, O_WRONLY | O_CREAT | O_TRUNC, what: "writing \(packPath)")
        var packLength: UInt64 = 0
        var packChecksum = PageChecksum()
        var newRecords: [UInt8] = []
        var referenced: [Int: UInt32] = [:]     // pack id -> source number in this image
        var sources: [PageSource] = []
        func sourceNumber(_ pack: Int) -> UInt32 {
            if let n = referenced[pack] { return n }
            sources.append(PageSource(path: TimelineStore.packName(pack), length: 0, checksum: 0))
            let n = UInt32(sources.count)
            referenced[pack] = n
            return n
        }
        var stored: UInt64 = 0
        let region = try source.pageRegion(0)
        var batch: [UInt8] = []
        for (mi, m) in metadata.process.mappings.enumerated() where !m.pages.isEmpty {
            var runs: [PageRun] = []
            for r in m.pages {
                for i in 0..<Int(r.count) {
                    let offset = Int(r.dataOffset) + i * 4096
                    let (hash, location): (ContentHash, Location?) = region!.withBytes { b in
                        let page = UnsafeRawBufferPointer(rebasing: b[offset..<(offset + 4096)])
                        let h = ContentHash.of(page)
                        return (h, index[h])
                    }
                    var at = location
                    if at == nil {
                        let l = Location(pack: id, offset: packLength)
                        region!.withBytes { b in
                            let page = UnsafeRawBufferPointer(rebasing: b[offset..<(offset + 4096)])
                            batch.append(contentsOf: page)
                            packChecksum.set(first: Int(packLength / 4096), page)
                        }
                        packLength += 4096
                        index[hash] = l
                        newRecords += TimelineStore.record(hash, l)
                        at = l
                        if batch.count >= 8 << 20 { try flush(&batch, to: pack, end: packLength) }
                    }
                    let n = sourceNumber(at!.pack)
                    let pageNumber = r.page + UInt32(i)
                    if var last = runs.last, last.source == n, last.page + last.count == pageNumber,
                       last.dataOffset + last.byteCount == at!.offset {
                        last.count += 1
                        runs[runs.count - 1] = last
                    } else {
                        runs.append(PageRun(page: pageNumber, count: 1, dataOffset: at!.offset, source: n))
                    }
                    stored += 4096
                }
            }
            metadata.process.mappings[mi].pages = runs
        }
        try flush(&batch, to: pack, end: packLength)
        pack.close()
        var newPack: Timeline.Pack?
        if packLength > 0 {
            newPack = Timeline.Pack(id: id, length: packLength, checksum: packChecksum.digest)
        } else {
            Paths.remove(packPath)
        }
        // Every pack this image uses, with its length and checksum.
        let packs = Dictionary(uniqueKeysWithValues: (timeline.manifest.packs + (newPack.map { [$0] } ?? [])).map { ($0.id, $0) })
        for (packID, n) in referenced {
            guard let p = packs[packID] else { throw WBError.failed("the timeline's store lost pack \(packID)") }
            sources[Int(n) - 1].length = p.length
            sources[Int(n) - 1].checksum = p.checksum
        }
        metadata.pageSources = sources
        // Files once, by content.
        var newFileBytes: UInt64 = 0
        for (fi, f) in metadata.files.enumerated() {
            let relative = "store/files/\(f.hash)"
            let path = "\(timeline.directory)/\(relative)"
            if !Paths.exists(path) {
                let partial = path + ".partial"
                let out = try FileDescriptor.open(partial, O_WRONLY | O_CREAT | O_TRUNC, what: "writing \(path)")
                try source.contents(of: f).withBytes { try out.write($0, at: 0) }
                out.close()
                try Paths.rename(partial, to: path)
                newFileBytes += f.size
            }
            metadata.files[fi].source = relative
            metadata.files[fi].dataOffset = 0
        }
        if !newRecords.isEmpty {
            let fd = open(indexPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw WBError.system(call: "open", errno: errno, what: "writing \(indexPath)") }
            try FileDescriptor(owning: fd).writeAll(newRecords)
        }
        let final = "\(timeline.directory)/\(name)"
        let writer = try ImageWriter(path: final)
        try writer.finish(metadata, sync: false)
        let imageBytes = try Image(path: final).fileSize
        return Interned(image: name, imageBytes: imageBytes, storedBytes: stored, newBytes: imageBytes + packLength + newFileBytes,
                        fullBytes: source.fileSize, pack: newPack)
    }

    private func flush(_ batch: inout [UInt8], to pack: FileDescriptor, end: UInt64) throws {
        guard !batch.isEmpty else { return }
        try pack.write(batch, at: end - UInt64(batch.count))
        batch.removeAll(keepingCapacity: true)
    }

    /// Removes checkpoints `numbers`, then the packs and files no remaining image uses.
    public func prune(_ numbers: Set<Int>) throws {
        let doomed = timeline.checkpoints.filter { numbers.contains($0.number) }
        for c in doomed { Paths.remove(timeline.imagePath(c)) }
        var usedPacks = Set<String>(), usedFiles = Set<String>()
        for c in timeline.checkpoints where !numbers.contains(c.number) {
            guard let image = try? Image(path: timeline.imagePath(c)) else { continue }
            for s in image.metadata.pageSources ?? [] { usedPacks.insert(s.path) }
            for f in image.metadata.files { if let s = f.source { usedFiles.insert(s) } }
        }
        let deadPacks = Set(timeline.manifest.packs.filter { !usedPacks.contains(TimelineStore.packName($0.id)) }.map(\.id))
        for id in deadPacks { Paths.remove("\(timeline.directory)/\(TimelineStore.packName(id))") }
        for name in (try? Paths.list("\(timeline.storeDirectory)/files")) ?? [] where !usedFiles.contains("store/files/\(name)") {
            Paths.remove("\(timeline.storeDirectory)/files/\(name)")
        }
        try timeline.remove(checkpoints: numbers, packs: deadPacks)
        if !deadPacks.isEmpty {
            // The index keeps only pages of live packs.
            index = index.filter { !deadPacks.contains($0.value.pack) }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(index.count * TimelineStore.recordBytes)
            for (h, l) in index { bytes += TimelineStore.record(h, l) }
            let partial = indexPath + ".partial"
            let fd = try FileDescriptor.open(partial, O_WRONLY | O_CREAT | O_TRUNC, what: "writing \(indexPath)")
            try fd.writeAll(bytes)
            fd.close()
            try Paths.rename(partial, to: indexPath)
        }
    }
}
