import Foundation

/// The on-disk layout of an image file (docs/image-format.md is the specification):
///
///     offset 0     header: magic, version, section table, header checksum (one 4 KiB page)
///     4096 ...     PAGE section: page data, every run page-aligned so it can be mapped
///     ...          FILE section: embedded files, each starting on a page boundary
///     ...          META section: the metadata as JSON
///
/// Every section has an XXH3-64 checksum in the section table; the header has its own.
public enum ImageFormat {
    /// "\x89WBI\r\n\x1a\n": a high byte to catch 7-bit transfers, CR LF and ^Z to catch
    /// newline conversion, as PNG does.
    public static let magic: [UInt8] = [0x89, 0x57, 0x42, 0x49, 0x0D, 0x0A, 0x1A, 0x0A]
    /// The newest version this wb reads and writes. Version 1: self-contained images;
    /// version 2: page data or files may live in files beside the image (a timeline).
    public static let version: UInt32 = 2
    public static let headerSize = 4096
    public static let pageSize: UInt64 = 4096
    static let fixedHeaderBytes = 32
    static let sectionEntryBytes = 40
    public static let maxSections = 16

    public enum SectionKind: UInt32, Sendable, CaseIterable {
        case pages = 0x4547_4150   // "PAGE"
        case files = 0x454C_4946   // "FILE"
        case metadata = 0x4154_454D // "META"

        public var name: String {
            switch self {
            case .pages: return "PAGE"
            case .files: return "FILE"
            case .metadata: return "META"
            }
        }
    }

    public struct Section: Sendable, Equatable {
        public var kind: SectionKind
        public var offset: UInt64
        public var length: UInt64
        public var checksum: UInt64
        public var end: UInt64 { offset + length }
    }

    public static func align(_ value: UInt64) -> UInt64 { (value + pageSize - 1) & ~(pageSize - 1) }
}

/// The decoded fixed header.
public struct ImageHeader: Sendable, Equatable {
    public var version: UInt32
    public var fileSize: UInt64
    public var sections: [ImageFormat.Section]

    public func section(_ kind: ImageFormat.SectionKind) -> ImageFormat.Section? {
        sections.first { $0.kind == kind }
    }

    /// Serializes the header into its 4096-byte page.
    public func encoded() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: ImageFormat.headerSize)
        out.replaceSubrange(0..<8, with: ImageFormat.magic)
        put32(&out, 8, version)
        put32(&out, 12, UInt32(ImageFormat.headerSize))
        put32(&out, 16, UInt32(sections.count))
        put32(&out, 20, 0)
        put64(&out, 24, fileSize)
        var at = ImageFormat.fixedHeaderBytes
        for s in sections {
            put32(&out, at, s.kind.rawValue)
            put32(&out, at + 4, 0)
            put64(&out, at + 8, s.offset)
            put64(&out, at + 16, s.length)
            put64(&out, at + 24, s.checksum)
            put64(&out, at + 32, 0)
            at += ImageFormat.sectionEntryBytes
        }
        let sum = out.withUnsafeBytes { Checksum.of(UnsafeRawBufferPointer(rebasing: $0[0..<at])) }
        put64(&out, at, sum)
        return out
    }

    /// Parses and checks a header page. `path` and `fileSize` name the file in errors.
    public static func decode(_ page: [UInt8], path: String, fileSize: UInt64) throws -> ImageHeader {
        func bad(_ problem: String) -> WBError { .badImage(path: path, problem: problem) }
        guard page.count >= 8, Array(page[0..<8]) == ImageFormat.magic else {
            if page.count >= 4 && page[0..<4] == [0x7F, 0x45, 0x4C, 0x46] {
                throw bad("not a wb image: this is an ELF file (an executable or core dump)")
            }
            if page.starts(with: [0x89, 0x57, 0x42, 0x49]) {
                throw bad("not a wb image: the magic bytes were altered in transfer (newline conversion?)")
            }
            throw bad("not a wb image: the first bytes are not the wb image magic")
        }
        guard page.count >= ImageFormat.headerSize else {
            throw bad("truncated: the header needs \(ImageFormat.headerSize) bytes but the file has \(fileSize)")
        }
        let version = get32(page, 8)
        guard version <= ImageFormat.version, version >= 1 else {
            throw bad("image format version \(version) is not supported by this wb (it reads version \(ImageFormat.version)); use a newer wb")
        }
        let count = Int(get32(page, 16))
        guard count <= ImageFormat.maxSections else {
            throw bad("corrupted header at byte 16: \(count) sections (at most \(ImageFormat.maxSections))")
        }
        let tableEnd = ImageFormat.fixedHeaderBytes + count * ImageFormat.sectionEntryBytes
        let stored = get64(page, tableEnd)
        let computed = page.withUnsafeBytes { Checksum.of(UnsafeRawBufferPointer(rebasing: $0[0..<tableEnd])) }
        guard stored == computed else {
            throw bad("corrupted header: checksum mismatch in bytes 0-\(tableEnd - 1)")
        }
        let declared = get64(page, 24)
        if let stray = page[(tableEnd + 8)..<ImageFormat.headerSize].firstIndex(where: { $0 != 0 }) {
            throw bad("corrupted header: byte \(stray) after the section table is not zero")
        }
        guard get32(page, 12) == UInt32(ImageFormat.headerSize) else {
            throw bad("corrupted header at byte 12: a header size of \(get32(page, 12)) (the format's is \(ImageFormat.headerSize))")
        }
        guard get32(page, 20) == 0 else {
            throw bad("corrupted header at byte 20: flags 0x\(String(get32(page, 20), radix: 16)) (this format defines none)")
        }
        var sections: [ImageFormat.Section] = []
        for i in 0..<count {
            let at = ImageFormat.fixedHeaderBytes + i * ImageFormat.sectionEntryBytes
            let raw = get32(page, at)
            guard let kind = ImageFormat.SectionKind(rawValue: raw) else {
                throw bad("corrupted header: unknown section kind 0x\(String(raw, radix: 16)) at byte \(at)")
            }
            guard get32(page, at + 4) == 0, get64(page, at + 32) == 0 else {
                throw bad("corrupted header: the reserved fields of section \(kind.name) at byte \(at) are not zero")
            }
            guard !sections.contains(where: { $0.kind == kind }) else {
                throw bad("corrupted header: section \(kind.name) appears twice")
            }
            let s = ImageFormat.Section(kind: kind, offset: get64(page, at + 8), length: get64(page, at + 16),
                                        checksum: get64(page, at + 24))
            guard s.offset >= UInt64(ImageFormat.headerSize), s.offset % ImageFormat.pageSize == 0,
                  s.offset.addingReportingOverflow(s.length).overflow == false else {
                throw bad("corrupted header: section \(kind.name) has an invalid offset \(s.offset)")
            }
            sections.append(s)
        }
        if fileSize < declared {
            throw bad("truncated: the image should be \(declared) bytes but the file has \(fileSize) (cut off in section \(sectionName(at: fileSize, in: sections)))")
        }
        for s in sections where s.end > fileSize {
            throw bad("truncated: section \(s.kind.name) (bytes \(s.offset)-\(s.end - 1)) extends past the end of the file (\(fileSize) bytes)")
        }
        if fileSize > declared {
            throw bad("\(fileSize - declared) bytes follow the end of the image (it is \(declared) bytes): appended data is refused; was the file joined with another?")
        }
        for s in sections where s.end > declared {
            throw bad("corrupted header: section \(s.kind.name) (bytes \(s.offset)-\(s.end - 1)) extends past the image's size (\(declared) bytes)")
        }
        let ordered = sections.sorted { $0.offset < $1.offset }
        for (a, b) in zip(ordered, ordered.dropFirst()) where a.end > b.offset {
            throw bad("corrupted header: sections \(a.kind.name) and \(b.kind.name) overlap")
        }
        for kind in ImageFormat.SectionKind.allCases where !sections.contains(where: { $0.kind == kind }) {
            throw bad("corrupted header: the \(kind.name) section is missing")
        }
        return ImageHeader(version: version, fileSize: declared, sections: sections)
    }

    static func sectionName(at offset: UInt64, in sections: [ImageFormat.Section]) -> String {
        sections.first { offset >= $0.offset && offset < $0.end }?.kind.name ?? "header"
    }
}

@inline(__always) func put32(_ b: inout [UInt8], _ at: Int, _ v: UInt32) {
    for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
}
@inline(__always) func put64(_ b: inout [UInt8], _ at: Int, _ v: UInt64) {
    for i in 0..<8 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
}
@inline(__always) func get32(_ b: [UInt8], _ at: Int) -> UInt32 {
    (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) }
}
@inline(__always) func get64(_ b: [UInt8], _ at: Int) -> UInt64 {
    (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) }
}
