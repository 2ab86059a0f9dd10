import Foundation
import Glibc

/// Writes an image file front to back: pages, then embedded files, then the metadata, then
/// the header. The bytes go to a temporary file beside the destination, which is renamed into
/// place only once it is complete, so a crash or an interrupted checkpoint never leaves a
/// half-written image under the user's name.
public final class ImageWriter {
    public let path: String
    public let temporaryPath: String
    private let fd: FileDescriptor
    /// The same file opened with O_DIRECT, for page data, where the file system allows it:
    /// gigabytes of pages go straight to the disk instead of into new page-cache pages (which
    /// cost more to allocate than to fill, and would push the machine's cached files out).
    private var direct: FileDescriptor?
    private var cursor = UInt64(ImageFormat.headerSize)
    private var sections: [ImageFormat.Section] = []
    private var current: (kind: ImageFormat.SectionKind, start: UInt64, checksum: Checksum)?
    private var embedded: [ContentHash: EmbeddedFile] = [:]
    private var embeddedOrder: [ContentHash] = []
    private var finished = false
    private var pageChecksum = PageChecksum()

    public init(path: String) throws {
        self.path = path
        let dir = Paths.directory(of: path)
        let name = path.split(separator: "/").last.map(String.init) ?? path
        temporaryPath = "\(dir)/.\(name).partial-\(getpid())"
        fd = try FileDescriptor.open(temporaryPath, O_RDWR | O_CREAT | O_TRUNC, mode: 0o600,
                                     what: "creating the image next to \(path)")
        if ProcessInfo.processInfo.environment["WB_IMAGE_BUFFERED"] == nil {
            direct = try? FileDescriptor.open(temporaryPath, O_WRONLY | ImageWriter.O_DIRECT)
        }
        try begin(.pages)
    }

    /// Not exported by Glibc's module without _GNU_SOURCE (x86-64 value).
    static let O_DIRECT: Int32 = 0o40000

    /// Page writes run in order on one background thread (even the ones a caller waits for,
    /// so they keep their order): reading the next pages out of a process overlaps writing
    /// these. A write's first error is kept and thrown by the next page call.
    private let pageQueue = DispatchQueue(label: "wb.image.pages")
    private let pageFailure = PageWriteFailure()

    /// Writes `bytes` at `offset` in the file: at once, or with `group` in the background
    /// (the caller leaves the bytes alone until the group is done).
    private func submitPages(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, group: DispatchGroup?) throws {
        try pageFailure.check()
        guard let group else {
            try pageQueue.sync { try writePages(bytes, at: offset) }
            return
        }
        let job = PageWrite(writer: self, bytes: bytes, offset: offset)
        group.enter()
        pageQueue.async {
            do { try job.writer.writePages(job.bytes, at: job.offset) } catch { job.writer.pageFailure.keep(error) }
            group.leave()
        }
    }

    /// Waits for every page write handed to the background; throws the first that failed.
    public func waitForPages() throws {
        pageQueue.sync {}
        try pageFailure.check()
    }

    /// Whether O_DIRECT can write `bytes` at `offset`: memory, length and offset page-aligned.
    private static func directOK(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) -> Bool {
        Int(bitPattern: bytes.baseAddress) % 4096 == 0 && bytes.count % 4096 == 0 && offset % 4096 == 0
    }

    /// Writes pages again in several places at once (see `rewritePages(_:group:)`).
    private func writePages(many writes: [(bytes: UnsafeRawBufferPointer, offset: UInt64)]) throws {
        if writes.count > 1, let d = direct, writes.allSatisfy({ ImageWriter.directOK($0.bytes, at: $0.offset) }) {
            do {
                try withContext("writing image \(path)") { try d.write(many: writes) }
                return
            } catch WBError.system(_, let errno, _) where errno == EINVAL {
                direct = nil
            }
        }
        for w in writes { try writePages(w.bytes, at: w.offset) }
    }

    /// Writes whole pages at `offset` in the file: through O_DIRECT when the memory is
    /// page-aligned, else (or if the file system refuses) through the page cache.
    private func writePages(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        if let d = direct, ImageWriter.directOK(bytes, at: offset) {
            do {
                try withContext("writing image \(path)") { try d.write(bytes, at: offset) }
                return
            } catch WBError.system(_, let errno, _) where errno == EINVAL {
                direct = nil
            }
        }
        try withContext("writing image \(path)") { try fd.write(bytes, at: offset) }
    }

    deinit { if !finished { abandon() } }

    /// Removes the partial file.
    public func abandon() {
        finished = true
        pageQueue.sync {}
        direct?.close()
        fd.close()
        Paths.remove(temporaryPath)
    }

    /// Bytes written so far.
    public var bytesWritten: UInt64 { cursor }

    private func begin(_ kind: ImageFormat.SectionKind) throws {
        try pad()
        current = (kind, cursor, Checksum())
    }

    private func end() throws {
        guard let c = current else { return }
        if c.kind == .pages { try waitForPages() }
        try pad()
        let sum = c.kind == .pages ? pageChecksum.digest : c.checksum.finish()
        sections.append(.init(kind: c.kind, offset: c.start, length: cursor - c.start, checksum: sum))
        current = nil
    }

    private func pad() throws {
        let aligned = ImageFormat.align(cursor)
        if aligned > cursor {
            let zeros = [UInt8](repeating: 0, count: Int(aligned - cursor))
            try write(zeros.withUnsafeBytes { $0 })
        }
    }

    private func write(_ bytes: UnsafeRawBufferPointer) throws {
        try withContext("writing image \(path)") { try fd.write(bytes, at: cursor) }
        if current?.kind != .pages { current?.checksum.update(bytes) }
        cursor += UInt64(bytes.count)
    }

    // MARK: Pages

    /// Appends whole pages; returns their offset within the page section. With `group` the
    /// bytes are written in the background (see `submitPages`).
    public func appendPages(_ bytes: UnsafeRawBufferPointer, group: DispatchGroup? = nil) throws -> UInt64 {
        precondition(current?.kind == .pages && UInt64(bytes.count) % ImageFormat.pageSize == 0)
        let offset = cursor - current!.start
        pageChecksum.set(first: Int(offset / 4096), bytes)
        try submitPages(bytes, at: cursor, group: group)
        cursor += UInt64(bytes.count)
        return offset
    }

    /// Writes pages that changed since they were stored again, each at its offset within the
    /// page section, in one background job (with `group`) whose writes are in flight together:
    /// pages a pass found rewritten lie scattered over the image.
    public func rewritePages(_ runs: [(bytes: UnsafeRawBufferPointer, offset: UInt64)], group: DispatchGroup) throws {
        guard let start = current?.start, current?.kind == .pages else { preconditionFailure("not in the page section") }
        try pageFailure.check()
        var writes: [(bytes: UnsafeRawBufferPointer, offset: UInt64)] = []
        for r in runs {
            precondition(r.offset + UInt64(r.bytes.count) <= cursor - start)
            pageChecksum.set(first: Int(r.offset / 4096), r.bytes)
            writes.append((r.bytes, start + r.offset))
        }
        let job = PageWrites(writer: self, writes: writes)
        group.enter()
        pageQueue.async {
            do { try job.writer.writePages(many: job.writes) } catch { job.writer.pageFailure.keep(error) }
            group.leave()
        }
    }

    /// Offset within the page section where the next pages will go.
    public var nextPageOffset: UInt64 { cursor - (current?.start ?? cursor) }

    // MARK: Files

    /// Embeds a file once per content; returns its entry (existing or new).
    public func embed(file source: FileDescriptor, path: String, code: Bool) throws -> EmbeddedFile {
        if current?.kind == .pages { try end(); try begin(.files) }
        let size = try source.size
        let region = try MappedRegion(file: source, offset: 0, count: Int(size))
        let hash = region.withBytes { ContentHash.of($0) }
        if var known = embedded[hash] {
            if !known.paths.contains(path) { known.paths.append(path) }
            known.code = known.code || code
            embedded[hash] = known
            return known
        }
        try pad()
        let offset = cursor - current!.start
        try region.withBytes { bytes in
            // Whole pages, written as page data is (the mapping reads zeros past the end of
            // the file: they are the padding before what comes next).
            // Written in the background, the next file hashed meanwhile: the mapping stays
            // until the writes are done (`complete`).
            let pages = UnsafeRawBufferPointer(start: bytes.baseAddress, count: Int(ImageFormat.align(UInt64(bytes.count))))
            try submitPages(pages, at: cursor, group: fileWrites)
            writtenRegions.append(region)
            current?.checksum.update(pages)
            cursor += UInt64(pages.count)
        }
        let entry = EmbeddedFile(hash: hash, size: size, dataOffset: offset, paths: [path], code: code)
        embedded[hash] = entry
        embeddedOrder.append(hash)
        return entry
    }

    /// Embeds bytes held in memory (a deleted file read through /proc).
    public func embed(bytes: [UInt8], path: String) throws -> EmbeddedFile {
        if current?.kind == .pages { try end(); try begin(.files) }
        let hash = bytes.withUnsafeBytes { ContentHash.of($0) }
        if let known = embedded[hash] { return known }
        try pad()
        let offset = cursor - current!.start
        try bytes.withUnsafeBytes { try write($0) }
        let entry = EmbeddedFile(hash: hash, size: UInt64(bytes.count), dataOffset: offset, paths: [path], code: false)
        embedded[hash] = entry
        embeddedOrder.append(hash)
        return entry
    }

    public var embeddedFiles: [EmbeddedFile] { embeddedOrder.map { embedded[$0]! } }

    /// Embedded files' mappings whose background writes may not be done yet.
    private var writtenRegions: [MappedRegion] = []
    private let fileWrites = DispatchGroup()

    // MARK: Finish

    /// Writes the metadata and the header and renames the file into place (see `complete`
    /// and `commit` to check the file in between).
    public func finish(_ metadata: ImageMetadata, sync: Bool) throws {
        try complete(metadata, sync: sync)
        try commit()
    }

    /// Writes the metadata and the header, and flushes the file to disk when `sync` is set.
    /// The image is then whole at `temporaryPath`, not yet under its name.
    public func complete(_ metadata: ImageMetadata, sync: Bool) throws {
        try waitForPages()
        writtenRegions = []
        if current?.kind == .pages { try end(); try begin(.files) }
        try end()
        try begin(.metadata)
        let encoder = JSONEncoder()
        let json: Data
        do { json = try encoder.encode(metadata) } catch {
            throw WBError.failed("encoding the image metadata: \(error)")
        }
        try json.withUnsafeBytes { try write($0) }
        // The metadata section's length is its JSON, without padding.
        let c = current!
        sections.append(.init(kind: .metadata, offset: c.start, length: cursor - c.start, checksum: c.checksum.finish()))
        current = nil
        let header = ImageHeader(version: metadata.isSelfContained ? 1 : 2, fileSize: cursor, sections: sections)
        try withContext("writing image \(path)") {
            try fd.write(header.encoded(), at: 0)
            try fd.truncate(to: cursor)
            if sync { try fd.sync() }
        }
    }

    /// Renames the completed image into place.
    public func commit() throws {
        try Paths.rename(temporaryPath, to: path)
        finished = true
        direct?.close()
        fd.close()
    }
}

extension Image {
    /// Writes a copy of this image to `path` with its metadata changed by `change`; page data
    /// and embedded files are copied as they are.
    public func copy(to path: String, changingMetadata change: (inout ImageMetadata) -> Void) throws {
        var metadata = self.metadata
        change(&metadata)
        try copy(to: path, metadataJSON: [UInt8](try JSONEncoder().encode(metadata)))
    }

    /// Writes this image again to `path` with `metadata` whose embedded files all lie beside
    /// it (each file's `source` set): the page data is copied, the file section is empty.
    /// The new image is flushed to disk before this returns.
    public func rewriteWithFilesBeside(to path: String, metadata: ImageMetadata) throws {
        guard metadata.files.allSatisfy({ $0.source != nil }) else {
            throw WBError.failed("rewriting \(self.path): a file of its metadata is not beside it")
        }
        let meta = [UInt8](try JSONEncoder().encode(metadata))
        let out = try FileDescriptor.open(path, O_RDWR | O_CREAT | O_TRUNC, mode: 0o600, what: "creating \(path)")
        var cursor = UInt64(ImageFormat.headerSize)
        let pages = header.section(.pages)!
        if pages.length > 0 {
            let region = try map(.pages, offset: 0, length: pages.length)
            try region.withBytes { try out.write($0, at: cursor) }
        }
        var sections: [ImageFormat.Section] = [.init(kind: .pages, offset: cursor, length: pages.length, checksum: pages.checksum)]
        cursor += pages.length
        sections.append(.init(kind: .files, offset: cursor, length: 0, checksum: Checksum.of([UInt8]())))
        try out.write(meta, at: cursor)
        sections.append(.init(kind: .metadata, offset: cursor, length: UInt64(meta.count), checksum: Checksum.of(meta)))
        cursor += UInt64(meta.count)
        try out.write(ImageHeader(version: header.version, fileSize: cursor, sections: sections).encoded(), at: 0)
        try out.truncate(to: cursor)
        try out.sync()
    }

    /// Writes a copy of this image to `path` whose metadata section holds `meta` as it is,
    /// with every checksum and the header made to match: tests and the decoder's fuzzer forge
    /// images with it, as someone handing wb an image could.
    public func copy(to path: String, metadataJSON meta: [UInt8]) throws {
        let out = try FileDescriptor.open(path, O_RDWR | O_CREAT | O_TRUNC, mode: 0o600, what: "creating \(path)")
        var sections: [ImageFormat.Section] = []
        var cursor = UInt64(ImageFormat.headerSize)
        for kind in [ImageFormat.SectionKind.pages, .files] {
            let s = header.section(kind)!
            let region = try map(kind, offset: 0, length: s.length)
            try region.withBytes { try out.write($0, at: cursor) }
            sections.append(.init(kind: kind, offset: cursor, length: s.length, checksum: s.checksum))
            cursor += s.length
        }
        try out.write(meta, at: cursor)
        sections.append(.init(kind: .metadata, offset: cursor, length: UInt64(meta.count), checksum: Checksum.of(meta)))
        cursor += UInt64(meta.count)
        try out.write(ImageHeader(version: header.version, fileSize: cursor, sections: sections).encoded(), at: 0)
        try out.truncate(to: cursor)
    }
}

/// A page write for the background thread: the writer and the caller's bytes, which the
/// caller keeps alive and untouched until the write's group is done.
private struct PageWrite: @unchecked Sendable {
    let writer: ImageWriter
    let bytes: UnsafeRawBufferPointer
    let offset: UInt64
}

/// Scattered page writes for the background thread (see `PageWrite`).
private struct PageWrites: @unchecked Sendable {
    let writer: ImageWriter
    let writes: [(bytes: UnsafeRawBufferPointer, offset: UInt64)]
}

/// The first error of a background page write.
private final class PageWriteFailure: @unchecked Sendable {
    private let lock = NSLock()
    private var error: Error?
    func keep(_ e: Error) { lock.lock(); if error == nil { error = e }; lock.unlock() }
    func check() throws {
        lock.lock(); let e = error; lock.unlock()
        if let e { throw e }
    }
}
