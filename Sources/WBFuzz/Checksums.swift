import Foundation

/// Checksums over the input (CRC-32, Adler-32, sums of bytes), passed as Redqueen passes
/// them: a compare for equality between a value the program computed from many input bytes
/// and one that follows a field of the input is found in the traced runs of perturbed copies
/// of an input. From then on, each run where the two differ is made to pass it (the operand
/// that follows the field gets the other's value at the compare) and the input is repaired
/// to match (the field rewritten so that the operand would have had that value), so that
/// mutations behind the check reach the code it guards and what they find is a valid input.
///
/// The operand need not be the field itself: compilers fold `crc32(...) != stored` into
/// `(c ^ stored) != 0xffffffff`. It is enough that it moves with the field by xor or by
/// addition, lane by lane, which the perturbations show.
public struct ChecksumSite: Sendable, Equatable {
    public enum Model: String, Sendable { case xor, add }
    /// The compare instruction.
    public var address: UInt64
    /// Which operand (0 or 1) follows the field.
    public var stored: Int
    /// The field: where it was for each execution of the compare it was found for (from 0:
    /// a checksum per chunk has one per chunk), its width in bytes and its byte order.
    public var positions: [Int: Int]
    public var width: Int
    public var bigEndian: Bool
    /// How the operand moves with the field.
    public var model: Model
    /// The operand is the field's value itself: another execution's field (a checksum per
    /// chunk) is found by its value.
    public var direct: Bool

    /// `value` as the input holds it.
    func encode(_ value: UInt64) -> [UInt8] {
        let le = (0..<width).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * $0)) }
        return bigEndian ? le.reversed() : le
    }

    func decode(_ input: [UInt8], at p: Int) -> UInt64? {
        guard p >= 0, p + width <= input.count else { return nil }
        let bytes = bigEndian ? Array(input[p..<(p + width)].reversed()) : Array(input[p..<(p + width)])
        return bytes.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << UInt64(8 * $1.offset) }
    }

    /// Where the field of the first execution was.
    public var position: Int { positions.min { $0.key < $1.key }?.value ?? 0 }

    /// The only place (or else the first) where `value` lies in `input`, as this field.
    func find(_ value: UInt64, in input: [UInt8]) -> Int? {
        guard input.count >= width, width == 8 || value >> UInt64(8 * width) == 0 else { return nil }
        let bytes = encode(value)
        var found: [Int] = []
        for i in 0...(input.count - width) where input[i] == bytes[0] && Array(input[i..<(i + width)]) == bytes {
            found.append(i)
            if found.count > 8 { break }
        }
        return found.count == 1 ? found[0] : found.first { $0 >= position }
    }

    /// The input rewritten so that, at execution `hit`, the operand that follows the field
    /// is `wanted` instead of `now`; nil when the field cannot be placed or cannot hold it.
    func repair(_ input: [UInt8], hit: Int, now: UInt64, wanted: UInt64, compareWidth: Int) -> [UInt8]? {
        var at: Int?
        if let p = positions[hit], let field = decode(input, at: p), !direct || field == now { at = p }
        if at == nil && direct { at = find(now, in: input) }
        guard let p = at, let field = decode(input, at: p) else { return nil }
        let mask = Executor.mask(bytes: compareWidth)
        var value = model == .xor ? field ^ ((now ^ wanted) & mask) : (field &+ (wanted &- now)) & mask
        if compareWidth < width { value = (field & ~mask) | (value & mask) }
        guard width == 8 || value >> UInt64(8 * width) == 0 else { return nil }
        var out = input
        out.replaceSubrange(p..<(p + width), with: encode(value))
        return out
    }
}

enum ChecksumFinder {
    /// One traced run of a perturbed copy of the input: which bytes were changed, the copy,
    /// and the comparisons the run made.
    struct Probe {
        var changed: Range<Int>
        var input: [UInt8]
        var comparisons: [Comparison]
    }

    /// Checksum compares among the ones `probes` saw. `base` is what the unperturbed `input`
    /// compared (a site missing from it compared equal); `equality` holds the compares whose
    /// result feeds a je, jne, sete, setne, cmove or cmovne. A site qualifies when one operand
    /// moved with a field of 2, 4 or 8 bytes exactly as the field's value did (by xor or by
    /// addition: every probe inside the field agrees) while the other stayed, and the compare
    /// moved with perturbations of at least three bytes outside the field (a value computed
    /// over the input, not a copy of one byte).
    /// `known` are the sites found before: a new execution of one (the next chunk's) adds
    /// its field to it.
    static func find(input: [UInt8], base: [Comparison], probes: [Probe], equality: Set<UInt64>, known: [UInt64: ChecksumSite]) -> [ChecksumSite] {
        let before = Dictionary(base.map { ($0.site, $0) }, uniquingKeysWith: { a, _ in a })
        // Each site's reports, by probe.
        var seen: [Comparison.Site: [(probe: Int, c: Comparison)]] = [:]
        for (i, p) in probes.enumerated() {
            for c in p.comparisons where c.width >= 2 && equality.contains(c.address) && known[c.address]?.positions[c.hit] == nil {
                seen[c.site, default: []].append((i, c))
            }
        }
        var out: [UInt64: ChecksumSite] = [:]
        for (site, reports) in seen.sorted(by: { ($0.key.address, $0.key.hit) < ($1.key.address, $1.key.hit) }) where (out[site.address] ?? known[site.address])?.positions[site.hit] == nil {
            let width = reports[0].c.width
            if ProcessInfo.processInfo.environment["WB_FUZZ_TRACE"] == "3" {
                FileHandle.standardError.write(Data("wb-trace: site \(String(site.address, radix: 16))#\(site.hit) base \(before[site].map { "\(String($0.left, radix: 16))/\(String($0.right, radix: 16))" } ?? "equal"): \(reports.map { "\(probes[$0.probe].changed) \(String($0.c.left, radix: 16))/\(String($0.c.right, radix: 16))" })\n".utf8))
            }
            let mask = Executor.mask(bytes: width)
            search: for side in [0, 1] {
                func mine(_ c: Comparison) -> UInt64 { side == 0 ? c.left : c.right }
                func other(_ c: Comparison) -> UInt64 { side == 0 ? c.right : c.left }
                // Fields a probe of one to four bytes could have moved this operand through,
                // the widest that every probe inside it agrees with first.
                for r in reports where probes[r.probe].changed.count <= 4 {
                    let p = probes[r.probe]
                    // What the operand was before: the base's report, or (equal there) what
                    // the other operand still is.
                    let was = before[site].map(mine) ?? other(r.c)
                    if let b = before[site], other(b) != other(r.c) { continue }
                    for fieldWidth in [8, 4, 2] where fieldWidth >= p.changed.count {
                        for start in max(0, p.changed.upperBound - fieldWidth)...p.changed.lowerBound where start + fieldWidth <= input.count {
                            for bigEndian in [false, true] {
                                for model in [ChecksumSite.Model.xor, .add] {
                                    let candidate = ChecksumSite(address: site.address, stored: side, positions: [site.hit: start], width: fieldWidth,
                                                                 bigEndian: bigEndian, model: model, direct: false)
                                    guard follows(candidate, was: was, reports: reports, probes: probes, input: input, mask: mask, mine: mine) else { continue }
                                    // The compare also moves with bytes spread over the input (the other
                                    // operand, or this one where the compiler folded the two together).
                                    let field = start..<(start + fieldWidth)
                                    var spread = Set<Int>()
                                    for q in reports where !probes[q.probe].changed.overlaps(field) && before[site].map({ $0.left != q.c.left || $0.right != q.c.right }) ?? true {
                                        spread.formUnion(probes[q.probe].changed)
                                    }
                                    guard spread.count >= 3 else { continue }
                                    if var first = out[site.address] ?? known[site.address] {
                                        // Another execution of a compare found before (the next chunk's):
                                        // its field, when it is the same kind of field.
                                        guard first.stored == side && first.width == fieldWidth && first.bigEndian == bigEndian && first.model == model else { continue }
                                        first.positions[site.hit] = start
                                        out[site.address] = first
                                    } else {
                                        var found = candidate
                                        found.direct = candidate.decode(input, at: start).map { $0 & mask == was } ?? false
                                        out[site.address] = found
                                    }
                                    break search
                                }
                            }
                        }
                    }
                }
            }
        }
        return out.values.sorted { $0.address < $1.address }
    }

    /// Whether every probe that changed bytes of the candidate's field alone moved the
    /// operand as the model says, and at least one did.
    private static func follows(_ s: ChecksumSite, was: UInt64, reports: [(probe: Int, c: Comparison)], probes: [Probe], input: [UInt8],
                                mask: UInt64, mine: (Comparison) -> UInt64) -> Bool {
        let field = s.position..<(s.position + s.width)
        guard let old = s.decode(input, at: s.position) else { return false }
        var agreed = 0
        for (i, p) in probes.enumerated() where field.contains(p.changed.lowerBound) && field.contains(p.changed.upperBound - 1) {
            guard let new = s.decode(p.input, at: s.position) else { return false }
            // A probe of the field the site did not report compared equal: no agreement.
            guard let r = reports.first(where: { $0.probe == i }) else { return false }
            let moved = s.model == .xor ? (mine(r.c) ^ was) & mask : (mine(r.c) &- was) & mask
            let expected = s.model == .xor ? (new ^ old) & mask : (new &- old) & mask
            guard moved == expected, moved != 0 else { return false }
            agreed += 1
        }
        return agreed > 0
    }
}
