import Foundation
import Glibc

/// An image opened for reading. Opening checks the header, the metadata checksum and the
/// structure of the metadata; `verifyData()` also checks the page and file sections.
public final class Image: @unchecked Sendable {
    public let path: String
    public let header: ImageHeader
    public let metadata: ImageMetadata
    public let fileSize: UInt64
    /// The path the image was opened at (`path` may be a display name).
    public let filePath: String
    let fd: FileDescriptor
    private var sourceRegions: [UInt32: MappedRegion] = [:]
    private let sourceLock = NSLock()

    public var process: ProcessState { metadata.process }

    /// Opens and checks an image. `displayName` is the name errors use (default `path`).
    public init(path: String, displayName: String? = nil) throws {
        self.path = displayName ?? path
        filePath = path
        let fd: FileDescriptor
        let name = displayName ?? path
        do {
            fd = try FileDescriptor.open(path, O_RDONLY, what: "opening image \(name)")
        } catch let WBError.system(_, code, _) where code == ENOENT {
            throw WBError.invalidArgument("\(name): no such image file")
        }
        self.fd = fd
        let path = name
        let st = try fd.stat()
        guard st.isRegular else { throw WBError.badImage(path: path, problem: "not a regular file") }
        let fileSize = st.size
        self.fileSize = fileSize
        var page = [UInt8](repeating: 0, count: ImageFormat.headerSize)
        let got = try page.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
        page = Array(page[0..<got])
        if got == 0 { throw WBError.badImage(path: path, problem: "empty file: not a wb image") }
        let header = try ImageHeader.decode(page, path: path, fileSize: fileSize)
        self.header = header
        let meta = header.section(.metadata)!
        guard meta.length < 1 << 31 else {
            throw WBError.badImage(path: path, problem: "corrupted header: metadata section of \(meta.length) bytes")
        }
        var json = [UInt8](repeating: 0, count: Int(meta.length))
        _ = try json.withUnsafeMutableBytes { try fd.read(into: $0, at: meta.offset) }
        let sum = Checksum.of(json)
        guard sum == meta.checksum else {
            throw WBError.badImage(path: path, problem: "corrupted metadata: checksum mismatch in section META (bytes \(meta.offset)-\(meta.end - 1))")
        }
        do {
            metadata = try JSONDecoder().decode(ImageMetadata.self, from: Data(json))
        } catch let error as DecodingError {
            throw WBError.badImage(path: path, problem: "invalid metadata: \(Image.describe(error))")
        }
        try validateStructure()
    }

    /// The checksum of every section, including page data and embedded files (or only the
    /// sections in `only`).
    public func verifyData(only: Set<ImageFormat.SectionKind>? = nil) throws {
        // Page data, in the PAGE section and in files beside the image (a timeline's store):
        // a verifier that saw no copy hashes it all.
        if only == nil || only!.contains(.pages) { try PageVerifier(image: self).finish() }
        for s in header.sections where s.kind != .metadata && s.kind != .pages && (only?.contains(s.kind) ?? true) {
            let region = try MappedRegion(file: fd, offset: s.offset, count: Int(s.length))
            region.adviseSequential()
            guard region.withBytes({ Checksum.of($0) }) == s.checksum else { throw sectionMismatch(s) }
        }
        // Files kept beside the image.
        if only == nil || only!.contains(.files) {
            for f in metadata.files where f.source != nil {
                let sum = try contents(of: f).withBytes { ContentHash.of($0) }
                guard sum == f.hash else {
                    throw WBError.badImage(path: path, problem: "corrupted data: \(f.source!) does not hold the file it should (\(f.paths.first ?? "?"))")
                }
            }
        }
    }

    /// The directory the image lies in: where its page sources' paths start.
    public var directory: String { Paths.directory(of: Paths.absolute(filePath)) }

    /// Where runs with `source` have their bytes: a file and the offset of the data in it.
    /// The restored process opens the file by this path itself (`wb restore --map`), so for
    /// a file beside the image it is the file as wb finds it beneath the image's directory,
    /// with the links inside resolved (`resolvedBeside`): it has none left to follow. A file
    /// that cannot be had that way is refused, as `pageRegion` refuses it.
    public func pageLocation(_ source: UInt32) throws -> (path: String, base: UInt64) {
        if source == 0 { return (Paths.absolute(filePath), header.section(.pages)!.offset) }
        return (try resolvedBeside(source), 0)
    }

    /// All the page data of `source` (0: the PAGE section), mapped once and kept; nil when
    /// there is none.
    public func pageRegion(_ source: UInt32) throws -> MappedRegion? {
        sourceLock.lock()
        defer { sourceLock.unlock() }
        if let r = sourceRegions[source] { return r }
        let region: MappedRegion
        if source == 0 {
            let s = header.section(.pages)!
            guard s.length > 0 else { return nil }
            region = try MappedRegion(file: fd, offset: s.offset, count: Int(s.length))
        } else {
            let info = metadata.pageSources![Int(source) - 1]
            let f = try openBeside(info.path, what: "its page store file",
                                   missing: "its page data \(info.path) is missing beside it (\(directory)/\(info.path)); copy the whole timeline directory")
            guard (try f.size) >= info.length else {
                throw WBError.badImage(path: path, problem: "truncated page store file \(info.path): \((try? f.size) ?? 0) bytes of \(info.length)")
            }
            guard info.length > 0 else { return nil }
            region = try MappedRegion(file: f, offset: 0, count: Int(info.length))
        }
        sourceRegions[source] = region
        return region
    }

    /// Maps `length` bytes at `offset` within a section.
    public func map(_ kind: ImageFormat.SectionKind, offset: UInt64, length: UInt64) throws -> MappedRegion {
        let s = header.section(kind)!
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= s.length else {
            throw WBError.badImage(path: path, problem: "bytes \(offset)-\(offset &+ length) lie outside section \(kind.name)")
        }
        return try MappedRegion(file: fd, offset: s.offset + offset, count: Int(length))
    }

    /// Absolute file offset of a position within a section (for mapping straight from the image).
    public func absoluteOffset(_ kind: ImageFormat.SectionKind, _ offset: UInt64) -> UInt64 {
        header.section(kind)!.offset + offset
    }

    /// The bytes of an embedded file.
    public func contents(of file: EmbeddedFile) throws -> MappedRegion {
        guard let source = file.source else { return try map(.files, offset: file.dataOffset, length: file.size) }
        let at = "\(directory)/\(source)"
        let missing = "the file it keeps beside it, \(source), is missing or changed (\(at)); copy the whole timeline directory"
        let f = try openBeside(source, what: "its stored file", missing: missing)
        guard (try? f.size) == file.size else { throw WBError.badImage(path: path, problem: missing) }
        return try MappedRegion(file: f, offset: 0, count: Int(file.size))
    }

    /// The open image file, for restore code that maps page data from it.
    public var descriptor: Int32 { fd.rawValue }

    private func validateStructure() throws {
        try MetadataValidator(path: path, metadata: metadata, pageBytes: header.section(.pages)!.length,
                              fileBytes: header.section(.files)!.length).validate()
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [CodingKey]) -> String {
            keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimming(".")
        }
        switch error {
        case let .keyNotFound(key, ctx):
            let at = path(ctx.codingPath)
            return "field '\(key.stringValue)' is missing" + (at.isEmpty ? "" : " in \(at)")
        case let .typeMismatch(type, ctx):
            return "field '\(path(ctx.codingPath))' is not a \(type)"
        case let .valueNotFound(type, ctx):
            return "field '\(path(ctx.codingPath))' is null, expected \(type)"
        case let .dataCorrupted(ctx):
            let at = path(ctx.codingPath)
            return at.isEmpty ? "the metadata is not valid JSON" : "field '\(at)': \(ctx.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }
}

/// "0x7f12345000"
public func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
