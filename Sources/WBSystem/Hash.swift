import CWBNative

/// 64-bit checksums of image sections (XXH3).
public struct Checksum {
    private let state: UnsafeMutableRawPointer

    public init() { state = wb_hash_stream_new() }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        if bytes.count > 0 { wb_hash_stream_update(state, bytes.baseAddress, bytes.count) }
    }

    /// The digest; the checksum can no longer be used afterwards.
    public consuming func finish() -> UInt64 {
        let d = wb_hash_stream_digest(state)
        wb_hash_stream_free(state)
        return d
    }

    public static func of(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        wb_hash64(bytes.baseAddress, bytes.count, 0)
    }

    public static func of(_ bytes: [UInt8]) -> UInt64 {
        bytes.withUnsafeBytes { of($0) }
    }
}

/// A 128-bit content address (XXH3-128), written as 32 hex digits.
public struct ContentHash: Hashable, Sendable, CustomStringConvertible, Codable {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) { self.high = high; self.low = low }

    public static func of(_ bytes: UnsafeRawBufferPointer) -> ContentHash {
        let h = wb_hash128_of(bytes.baseAddress, bytes.count)
        return ContentHash(high: h.high, low: h.low)
    }

    public var description: String { hex(high) + hex(low) }

    public init?(hex text: String) {
        guard text.count == 32, let h = UInt64(text.prefix(16), radix: 16), let l = UInt64(text.suffix(16), radix: 16) else { return nil }
        high = h; low = l
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let value = ContentHash(hex: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a 32-digit content hash"))
        }
        self = value
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    private func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// Streaming 128-bit content hashing.
public struct ContentHasher {
    private let state: UnsafeMutableRawPointer
    public init() { state = wb_hash128_stream_new() }
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        if bytes.count > 0 { wb_hash128_stream_update(state, bytes.baseAddress, bytes.count) }
    }
    public consuming func finish() -> ContentHash {
        let h = wb_hash128_stream_digest(state)
        wb_hash128_stream_free(state)
        return ContentHash(high: h.high, low: h.low)
    }
}

/// The checksum of a page section: XXH3-64 over the XXH3-64 of each 4096-byte page, so a
/// page stored again in place changes only its own entry.
public struct PageChecksum {
    private var hashes: [UInt64] = []

    public init() {}

    /// The checksum of pages whose hashes (XXH3-64 of each page) are known already.
    public init(hashes: [UInt64]) { self.hashes = hashes }

    /// The XXH3-64 of each 4096-byte page of `bytes`, into `out` (one entry per page).
    public static func hash(pages bytes: UnsafeRawBufferPointer, into out: UnsafeMutablePointer<UInt64>) {
        wb_page_hashes(bytes.baseAddress, bytes.count / 4096, out)
    }

    /// Records the pages of `bytes` as pages `first`, `first + 1`, ... of the section.
    public mutating func set(first: Int, _ bytes: UnsafeRawBufferPointer) {
        let pages = bytes.count / 4096
        if hashes.count < first + pages { hashes.append(contentsOf: repeatElement(0, count: first + pages - hashes.count)) }
        hashes.withUnsafeMutableBufferPointer { wb_page_hashes(bytes.baseAddress, pages, $0.baseAddress! + first) }
    }

    public var digest: UInt64 { hashes.withUnsafeBytes { Checksum.of($0) } }
}
