// libFuzzer harness for the image decoder: Image(path:) (header decode, the JSON metadata,
// MetadataValidator) and ImageReport(image).text, on forged images as someone handing wb an
// image could make them. Built and run by harness/bench/image-fuzz (swiftc -sanitize=fuzzer,
// with WBCore and WBSystem instrumented); not part of the package or of the test suite.
//
// An input is one byte of mode and a payload. The images it forges are copies of seed images
// (WB_FUZZ_SEEDS: image paths separated by ':'), kept in WB_FUZZ_WORK (a tmpfs directory),
// whose page and file sections stay as they are:
//
//   mode & 0x80 == 0   the payload is the META JSON; every checksum and the header are made
//                      to match, so the bytes reach the JSON decoder and the validator
//   mode & 0x80 != 0   the payload is edits of the header page, 10 bytes each: a 16-bit
//                      word w and a 64-bit value v (little-endian). w & 0xfff is the offset,
//                      w & 0x1000 writes 8 bytes (else 4); w & 0x2000 leaves the header
//                      checksum as it is (else it is made to match); w >> 14 == 1 cuts the
//                      file to v % size bytes, == 2 appends v % 8192 + 1 bytes
//
// mode & 0x3 picks the seed image. A custom mutator changes the JSON as a structure half of
// the time (a value set to a boundary value of its kind or another kind, an element dropped
// or doubled, a field removed) and leaves the rest to libFuzzer's byte mutations.
import Foundation
import Glibc
import WBCore

/// One seed image and its working copy.
final class Seed {
    let bytes: [UInt8]
    let header: [UInt8]
    let metaOffset: Int
    let metaEntry: Int
    let work: String
    let fd: Int32
    /// The working copy differs from `bytes` from this offset on (nil: only header and META).
    var dirtyFrom: Int?

    init(path: String, index: Int, directory: String) throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let header = Array(bytes[0..<4096])
        self.bytes = bytes
        self.header = header
        let image = try Image(path: path)
        metaOffset = Int(image.header.section(.metadata)!.offset)
        let count = Int(header[16])
        metaEntry = (0..<count).first { i in
            header[32 + i * 40] == 0x4D && header[33 + i * 40] == 0x45   // "ME"TA
        }.map { 32 + $0 * 40 }!
        work = "\(directory)/seed-\(index).wbimg"
        fd = open(work, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw WBError.failed("creating \(work)") }
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    var metadata: [UInt8] { Array(bytes[metaOffset...]) }

    /// Puts back what the last input changed beyond the header and META.
    func clean() {
        guard let from = dirtyFrom else { return }
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + from, $0.count - from, off_t(from)) }
        _ = ftruncate(fd, off_t(bytes.count))
        dirtyFrom = nil
    }

    static func put(_ v: UInt64, _ width: Int, into h: inout [UInt8], at: Int) {
        for k in 0..<width where at + k < h.count { h[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
    }

    static func sealed(_ h: inout [UInt8]) {
        let n = Int(h[16]) | Int(h[17]) << 8 | Int(h[18]) << 16 | Int(h[19]) << 24
        let end = 32 + min(n, 16) * 40
        put(h.withUnsafeBytes { Checksum.of(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }, 8, into: &h, at: end)
    }

    /// The working copy with `meta` as its metadata and every checksum matching.
    func write(metadata meta: UnsafeRawBufferPointer) {
        // What lies before META is put back; META and the size are written here anyway.
        if let from = dirtyFrom, from < metaOffset { clean() }
        var h = header
        Seed.put(UInt64(meta.count), 8, into: &h, at: metaEntry + 16)
        Seed.put(Checksum.of(meta), 8, into: &h, at: metaEntry + 24)
        Seed.put(UInt64(metaOffset + meta.count), 8, into: &h, at: 24)
        Seed.sealed(&h)
        _ = pwrite(fd, meta.baseAddress, meta.count, off_t(metaOffset))
        _ = ftruncate(fd, off_t(metaOffset + meta.count))
        _ = pwrite(fd, h, 4096, 0)
        dirtyFrom = metaOffset
    }

    /// The working copy with the seed's metadata and the header edits in `edits`.
    func write(headerEdits edits: UnsafeRawBufferPointer) {
        clean()
        var h = header
        var seal = true
        var i = 0
        while i + 10 <= edits.count && i < 160 {
            let w = Int(edits[i]) | Int(edits[i + 1]) << 8
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(edits[i + 2 + k]) << (8 * UInt64(k)) }
            switch w >> 14 {
            case 1:
                let cut = Int(v % UInt64(bytes.count))
                _ = ftruncate(fd, off_t(cut))
                dirtyFrom = min(dirtyFrom ?? cut, cut)
            case 2:
                let extra = [UInt8](repeating: UInt8(truncatingIfNeeded: v >> 32), count: Int(v % 8192) + 1)
                var st = stat()
                _ = fstat(fd, &st)
                _ = pwrite(fd, extra, extra.count, st.st_size)
                dirtyFrom = min(dirtyFrom ?? bytes.count, bytes.count)
            default:
                Seed.put(v, w & 0x1000 != 0 ? 8 : 4, into: &h, at: w & 0xfff)
                if w & 0x2000 != 0 { seal = false }
            }
            i += 10
        }
        if seal { Seed.sealed(&h) }
        // (The header page is written again by every input.)
        _ = pwrite(fd, h, 4096, 0)
    }
}

nonisolated(unsafe) var seeds: [Seed] = []

/// The seed images, before the first input.
@_cdecl("LLVMFuzzerInitialize")
public func setUp(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutableRawPointer) -> Int32 {
    let env = ProcessInfo.processInfo.environment
    let work = env["WB_FUZZ_WORK"] ?? "/dev/shm"
    for (i, path) in (env["WB_FUZZ_SEEDS"] ?? "").split(separator: ":").enumerated() {
        do { seeds.append(try Seed(path: String(path), index: i, directory: work)) } catch {
            fputs("image-fuzz: seed \(path): \(error)\n", stderr)
            _exit(2)
        }
    }
    if seeds.isEmpty { fputs("image-fuzz: WB_FUZZ_SEEDS names no image\n", stderr); _exit(2) }
    // Written out as the initial corpus when asked (one file per seed, mode byte first).
    if let dir = env["WB_FUZZ_WRITE_CORPUS"] {
        for (i, s) in seeds.enumerated() {
            try? Data([UInt8(i)] + s.metadata).write(to: URL(fileURLWithPath: "\(dir)/seed-\(i)-meta"))
            // A header input: the version field set to 1 and sealed again.
            try? Data([UInt8(0x80 | i), 8, 0, 1, 0, 0, 0, 0, 0, 0, 0]).write(to: URL(fileURLWithPath: "\(dir)/seed-\(i)-header"))
        }
        _exit(0)
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let seed = seeds[Int(input[0] & 0x3) % seeds.count]
    let payload = UnsafeRawBufferPointer(rebasing: input[1...])
    if input[0] & 0x80 == 0 { seed.write(metadata: payload) } else { seed.write(headerEdits: payload) }
    do {
        let image = try Image(path: seed.work)
        _ = ImageReport(image).text
    } catch {
        // Refusals are the decoder doing its job; only traps, hangs and runaway memory are found.
    }
    return 0
}

// MARK: - Structure-aware mutation

@_silgen_name("LLVMFuzzerMutate")
func LLVMFuzzerMutate(_ data: UnsafeMutablePointer<UInt8>, _ size: Int, _ maxSize: Int) -> Int

/// SplitMix64, seeded by libFuzzer.
struct Generator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
}

nonisolated(unsafe) let numbers: [Any] = [
    -1, 0, 1, 2, 63, 64, 65, 4095, 4096, 4097, Int(Int32.max), Int(Int32.min), Int(UInt32.max), Int64.max, Int64.min,
    NSNumber(value: UInt64.max), NSNumber(value: UInt64.max - 4095), NSNumber(value: UInt64(1) << 63),
    NSNumber(value: UInt64(1) << 47), 1.5, -0.0, 1e300, true, false,
]
nonisolated(unsafe) let strings: [Any] = [
    "", "/", "..", "../../x", "/../../../../tmp/wb-fuzz-canary/x", "a\u{0}b", "-1", "relative", "/proc/self/mem",
    "store/pages-000001", String(repeating: "a", count: 5000), "\u{7}\n\u{1b}[31m", "AAAA", "anonymous", "file",
]

/// Every place in `value`: a path of keys and indices (long arrays sampled).
func places(_ value: Any, _ path: [Any], _ out: inout [[Any]]) {
    out.append(path)
    if let d = value as? [String: Any] {
        for (k, v) in d { places(v, path + [k], &out) }
    } else if let a = value as? [Any] {
        for (i, v) in a.enumerated() where i < 3 || i == a.count - 1 { places(v, path + [i], &out) }
    }
}

func value(_ root: Any, at path: ArraySlice<Any>) -> Any? {
    guard let first = path.first else { return root }
    if let k = first as? String { return (root as? [String: Any])?[k].flatMap { value($0, at: path.dropFirst()) } }
    let i = first as! Int
    guard let a = root as? [Any], i < a.count else { return nil }
    return value(a[i], at: path.dropFirst())
}

/// `root` with the value at `path` replaced (nil: removed).
func setting(_ root: Any, at path: ArraySlice<Any>, to new: Any?) -> Any {
    guard let first = path.first else { return new ?? NSNull() }
    if let k = first as? String {
        var d = root as? [String: Any] ?? [:]
        if path.count == 1 && new == nil { d[k] = nil } else { d[k] = setting(d[k] ?? NSNull(), at: path.dropFirst(), to: new) }
        return d
    }
    let i = first as! Int
    var a = root as? [Any] ?? []
    guard i < a.count else { return a }
    if path.count == 1 && new == nil { a.remove(at: i) } else { a[i] = setting(a[i], at: path.dropFirst(), to: new) }
    return a
}

func replacement(for old: Any?, _ g: inout Generator) -> Any? {
    if g.below(12) == 0 { return nil }
    if g.below(8) == 0 { return [numbers, strings][g.below(2)].randomElement(using: &g) }
    switch old {
    case let s as String:
        if g.below(2) == 0 { return strings.randomElement(using: &g) }
        return String(s.prefix(g.below(s.count + 1))) + (g.below(2) == 0 ? "/.." : "x")
    case let a as [Any]:
        switch g.below(4) {
        case 0: return [Any]()
        case 1: return a + a.prefix(1)
        case 2: return Array(a.dropLast())
        default: return Array(a.reversed())
        }
    case is [String: Any]:
        return numbers.randomElement(using: &g)
    case let n as NSNumber where !["d", "f", "c", "B"].contains(String(cString: n.objCType)):
        switch g.below(4) {
        case 0: return NSNumber(value: n.int64Value &+ Int64(g.below(9)) &- 4)
        case 1: return NSNumber(value: n.int64Value ^ (1 << Int64(g.below(64))))
        default: return numbers.randomElement(using: &g)
        }
    default:
        return numbers.randomElement(using: &g)
    }
}

@_cdecl("LLVMFuzzerCustomMutator")
public func customMutator(_ data: UnsafeMutablePointer<UInt8>, _ size: Int, _ maxSize: Int, _ seedValue: UInt32) -> Int {
    var g = Generator(state: UInt64(seedValue) &* 0x2545_F491_4F6C_DD1D)
    // Header inputs, and half of the JSON ones, get libFuzzer's byte mutations.
    guard size > 1, data[0] & 0x80 == 0, g.below(2) == 0,
          let root = try? JSONSerialization.jsonObject(with: Data(bytes: data + 1, count: size - 1), options: [.fragmentsAllowed])
    else { return LLVMFuzzerMutate(data, size, maxSize) }
    var all: [[Any]] = []
    places(root, [], &all)
    var copy = root
    for _ in 0...g.below(3) {
        let path = all[g.below(all.count)]
        copy = setting(copy, at: path[...], to: replacement(for: value(copy, at: path[...]), &g))
    }
    guard let out = try? JSONSerialization.data(withJSONObject: copy, options: [.fragmentsAllowed]),
          out.count + 1 <= maxSize else { return LLVMFuzzerMutate(data, size, maxSize) }
    out.copyBytes(to: data + 1, count: out.count)
    return out.count + 1
}
