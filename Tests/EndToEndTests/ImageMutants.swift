import Foundation
import Glibc
import WBCore
import WBSystem

/// Forged images, as someone handing wb an image could make them: the metadata changed field
/// by field to boundary values (with every checksum recomputed, so the change reaches the
/// decoder and beyond), header fields changed with the header checksum recomputed, and bytes
/// appended or cut off.
struct ImageMutants {
    /// A small deterministic generator (SplitMix64): a failing mutant is found again by its seed.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    let image: Image
    let json: Any
    /// Every place in the metadata a mutant may change: a path of keys and indices.
    let places: [[PathPart]]

    enum PathPart { case key(String), index(Int) }

    init(_ image: Image) throws {
        self.image = image
        let meta = image.header.section(.metadata)!
        let bytes = try image.map(.metadata, offset: 0, length: meta.length).withBytes { Array($0) }
        json = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        var out: [[PathPart]] = []
        ImageMutants.collect(json, [], &out)
        places = out
    }

    private static func collect(_ value: Any, _ path: [PathPart], _ out: inout [[PathPart]]) {
        out.append(path)
        if let d = value as? [String: Any] {
            for (k, v) in d.sorted(by: { $0.key < $1.key }) { collect(v, path + [.key(k)], &out) }
        } else if let a = value as? [Any] {
            // Long arrays (page runs, xstate bytes) are sampled: their elements are alike.
            for (i, v) in a.enumerated() where i < 4 || i == a.count - 1 { collect(v, path + [.index(i)], &out) }
        }
    }

    nonisolated(unsafe) static let numbers: [Any] = [
        -1, 0, 1, 64, 65, 4095, 4096, Int(Int32.max), Int(Int32.min), Int(UInt32.max), Int64.max, Int64.min,
        NSNumber(value: UInt64.max), NSNumber(value: UInt64.max - 4095), NSNumber(value: UInt64(1) << 63), 1.5, true, false,
    ]
    nonisolated(unsafe) static let strings: [Any] = [
        "", "/../../../../tmp/wb-mutant-canary/x", "../../x", String(repeating: "a", count: 5000), "a\u{0}b", "-1",
        "relative", "/proc/self/mem",
    ]

    /// Mutant number `seed`: its description and the metadata bytes.
    func mutant(_ seed: UInt64) -> (String, [UInt8]) {
        var g = Generator(state: seed)
        var copy = json
        var changes: [String] = []
        let n = Int(g.next() % 3) + 1
        for _ in 0..<n {
            let place = places[Int(g.next() % UInt64(places.count))]
            let name = place.map { if case let .key(k) = $0 { return ".\(k)" } else if case let .index(i) = $0 { return "[\(i)]" }; return "" }.joined()
            let (value, what) = ImageMutants.replacement(for: ImageMutants.value(json, at: place), &g)
            copy = ImageMutants.setting(copy, at: place[...], to: value)
            changes.append("\(name)=\(what)")
        }
        let bytes = (try? JSONSerialization.data(withJSONObject: copy, options: [.fragmentsAllowed])) ?? Data()
        return (changes.joined(separator: " "), [UInt8](bytes))
    }

    private static func value(_ root: Any, at path: [PathPart]) -> Any? {
        var v: Any? = root
        for p in path {
            switch p {
            case let .key(k): v = (v as? [String: Any])?[k]
            case let .index(i): v = (v as? [Any]).flatMap { i < $0.count ? $0[i] : nil }
            }
        }
        return v
    }

    /// A boundary value of the same kind as `old` (or, now and then, of another kind).
    private static func replacement(for old: Any?, _ g: inout Generator) -> (Any?, String) {
        func pick(_ from: [Any]) -> Any { from[Int(g.next() % UInt64(from.count))] }
        if g.next() % 10 == 0 { return (nil, "removed") }
        switch old {
        case is String:
            let s = pick(strings); return (s, "\"\(String(describing: s).prefix(40))\"")
        case let a as [Any]:
            switch g.next() % 3 {
            case 0: return ([Any](), "[]")
            case 1: return (a + a.prefix(1), "first element twice")
            default: return (Array(a.dropLast()), "last element dropped")
            }
        case is [String: Any]:
            return (pick(numbers), "a number")
        default:
            let v = pick(numbers); return (v, "\(v)")
        }
    }

    private static func setting(_ root: Any, at path: ArraySlice<PathPart>, to value: Any?) -> Any {
        guard let first = path.first else { return value ?? NSNull() }
        switch first {
        case let .key(k):
            var d = root as? [String: Any] ?? [:]
            if path.count == 1 && value == nil { d[k] = nil } else { d[k] = setting(d[k] ?? NSNull(), at: path.dropFirst(), to: value) }
            return d
        case let .index(i):
            var a = root as? [Any] ?? []
            guard i < a.count else { return a }
            if path.count == 1 && value == nil { a.remove(at: i) } else { a[i] = setting(a[i], at: path.dropFirst(), to: value) }
            return a
        }
    }

    /// Writes mutant `seed` of the metadata to `path`. The page and file sections are the
    /// original's: a file at `path` that is already a copy of the image keeps them, and only
    /// the metadata and the header are written again.
    func writeMetadataMutant(_ seed: UInt64, to path: String) throws -> String {
        let (what, meta) = mutant(seed)
        let metaSection = image.header.section(.metadata)!
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0, let st = try? Paths.stat(path), st.size >= metaSection.offset else {
            if fd >= 0 { close(fd) }
            try image.copy(to: path, metadataJSON: meta)
            return what
        }
        defer { close(fd) }
        // The header: the META entry's length and checksum, the total size, the header's checksum.
        var header = [UInt8](repeating: 0, count: 4096)
        let source = open(image.filePath, O_RDONLY | O_CLOEXEC)
        _ = pread(source, &header, 4096, 0)
        close(source)
        let count = Int(header[16])
        func put(_ v: UInt64, at: Int) { for k in 0..<8 { header[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) } }
        for i in 0..<count where header[32 + i * 40] == 0x4D && header[33 + i * 40] == 0x45 {   // "ME"TA
            put(UInt64(meta.count), at: 32 + i * 40 + 16)
            put(Checksum.of(meta), at: 32 + i * 40 + 24)
        }
        put(metaSection.offset + UInt64(meta.count), at: 24)
        let end = 32 + count * 40
        put(header.withUnsafeBytes { Checksum.of(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }, at: end)
        _ = pwrite(fd, meta, meta.count, off_t(metaSection.offset))
        _ = ftruncate(fd, off_t(metaSection.offset) + off_t(meta.count))
        _ = pwrite(fd, header, 4096, 0)
        return what
    }

    /// A header mutant: one field of the header page set to a boundary value, the header
    /// checksum recomputed; or bytes appended; or the file cut. A file at `path` that is
    /// already a copy of the image is put back to the original's header and size first.
    func writeHeaderMutant(_ seed: UInt64, from source: String, to path: String) throws -> String {
        var g = Generator(state: seed)
        let size = try Paths.stat(source).size
        var header = [UInt8](repeating: 0, count: 4096)
        let input = open(source, O_RDONLY | O_CLOEXEC)
        _ = pread(input, &header, 4096, 0)
        close(input)
        if (try? Paths.stat(path))?.size ?? 0 < 4096 {
            try Data(contentsOf: URL(fileURLWithPath: source)).write(to: URL(fileURLWithPath: path))
        }
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw WBError.failed("opening \(path)") }
        defer { close(fd) }
        _ = ftruncate(fd, off_t(size))
        let count = Int(header[16])
        var what: String
        switch g.next() % 8 {
        case 0:
            let extra = Int(g.next() % 8192) + 1
            let bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: g.next()), count: extra)
            _ = pwrite(fd, bytes, extra, off_t(size))
            what = "\(extra) bytes appended"
        case 1:
            let cut = g.next() % size
            _ = ftruncate(fd, off_t(cut))
            what = "cut to \(cut) bytes"
        default:
            // A 4- or 8-byte field of the fixed header or the section table.
            var fields: [Int] = [8, 12, 16, 20, 24]
            for i in 0..<min(count, 16) {
                let entry: Int = 32 + i * 40
                fields += [entry, entry + 4, entry + 8, entry + 16, entry + 24, entry + 32]
            }
            let at = fields[Int(g.next() % UInt64(fields.count))]
            let wide: Bool = at == 24 || (at >= 32 && (at - 32) % 40 >= 8)
            let values: [UInt64] = [0, 1, 4095, 4096, 0xFFFF_FFFF, UInt64.max, UInt64.max - 4095, 1 << 63, g.next()]
            let v = values[Int(g.next() % UInt64(values.count))]
            for k in 0..<(wide ? 8 : 4) { header[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
            what = "header byte \(at) = \(v)"
            let newCount = Int(header[16]) | Int(header[17]) << 8 | Int(header[18]) << 16 | Int(header[19]) << 24
            let end = newCount <= 16 ? 32 + newCount * 40 : 32 + count * 40
            let sum = header.withUnsafeBytes { Checksum.of(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }
            for k in 0..<8 { header[end + k] = UInt8(truncatingIfNeeded: sum >> (8 * UInt64(k))) }
        }
        _ = pwrite(fd, header, 4096, 0)
        return what
    }
}
