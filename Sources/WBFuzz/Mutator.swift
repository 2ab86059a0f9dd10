import WBSystem

/// A deterministic random generator (SplitMix64): a campaign with the same seed makes the
/// same mutations.
public struct FuzzRandom {
    private var generator: SplitMix64
    public init(seed: UInt64) { generator = SplitMix64(seed: seed) }
    public mutating func next() -> UInt64 { generator.next() }
    public mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
    public mutating func chance(_ oneIn: Int) -> Bool { below(oneIn) == 0 }
}

/// Mutations in the manner of AFL's havoc stage: bit and byte flips, arithmetic, interesting
/// values, block deletion, insertion and copying, dictionary tokens and splicing with other
/// corpus entries, several stacked on one input.
public struct Mutator {
    public var random: FuzzRandom
    public var dictionary: [[UInt8]]
    public var maxSize = 1 << 16

    static let interesting8: [UInt8] = [0, 1, 16, 32, 64, 100, 127, 128, 255, 0x7E, 0x81]
    static let interesting16: [UInt16] = [0, 1, 128, 255, 256, 512, 1000, 1024, 4096, 32767, 32768, 65535]
    static let interesting32: [UInt32] = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 65536, 100_663_045, 0x7FFF, 0x8000]

    public init(seed: UInt64, dictionary: [[UInt8]] = []) {
        random = FuzzRandom(seed: seed)
        self.dictionary = dictionary
    }

    /// `input` changed by 1 to 32 stacked mutations; `corpus` is for splicing.
    public mutating func mutate(_ input: [UInt8], corpus: [[UInt8]]) -> [UInt8] {
        var out = input.isEmpty ? [0] : input
        let stack = 1 << (1 + random.below(5))
        for _ in 0..<stack { mutateOnce(&out, corpus: corpus) }
        if out.count > maxSize { out.removeLast(out.count - maxSize) }
        return out
    }

    private mutating func mutateOnce(_ b: inout [UInt8], corpus: [[UInt8]]) {
        if b.isEmpty { b = [UInt8(truncatingIfNeeded: random.next())] }
        let n = b.count
        switch random.below(dictionary.isEmpty ? 13 : 15) {
        case 0:
            let bit = random.below(n * 8)
            b[bit / 8] ^= 1 << UInt8(bit % 8)
        case 1:
            b[random.below(n)] = Mutator.interesting8[random.below(Mutator.interesting8.count)]
        case 2:
            guard n >= 2 else { return }
            var v = Mutator.interesting16[random.below(Mutator.interesting16.count)]
            if random.chance(2) { v = v.byteSwapped }
            put(&b, at: random.below(n - 1), v)
        case 3:
            guard n >= 4 else { return }
            var v = Mutator.interesting32[random.below(Mutator.interesting32.count)]
            if random.chance(2) { v = v.byteSwapped }
            put(&b, at: random.below(n - 3), v)
        case 4:
            let i = random.below(n)
            b[i] = random.chance(2) ? b[i] &+ UInt8(1 + random.below(35)) : b[i] &- UInt8(1 + random.below(35))
        case 5:
            guard n >= 2 else { return }
            let i = random.below(n - 1)
            var v = UInt16(b[i]) | UInt16(b[i + 1]) << 8
            v = random.chance(2) ? v &+ UInt16(1 + random.below(35)) : v &- UInt16(1 + random.below(35))
            put(&b, at: i, v)
        case 6:
            guard n >= 4 else { return }
            let i = random.below(n - 3)
            var v = (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[i + $1]) << (8 * UInt32($1)) }
            v = random.chance(2) ? v &+ UInt32(1 + random.below(35)) : v &- UInt32(1 + random.below(35))
            put(&b, at: i, v)
        case 7:
            b[random.below(n)] = UInt8(truncatingIfNeeded: random.next())
        case 8, 9:
            // Delete a block.
            guard n > 1 else { return }
            let len = 1 + random.below(min(n - 1, 32))
            let at = random.below(n - len + 1)
            b.removeSubrange(at..<(at + len))
        case 10:
            // Insert a copy of a block, or random bytes.
            let len = 1 + random.below(min(n, 32))
            let from = random.below(n - len + 1)
            let chunk = random.chance(4) ? (0..<len).map { _ in UInt8(truncatingIfNeeded: random.next()) } : Array(b[from..<(from + len)])
            b.insert(contentsOf: chunk, at: random.below(n + 1))
        case 11:
            // Overwrite with a copy of another block.
            guard n > 1 else { return }
            let len = 1 + random.below(min(n - 1, 32))
            let from = random.below(n - len + 1), to = random.below(n - len + 1)
            let chunk = Array(b[from..<(from + len)])
            b.replaceSubrange(to..<(to + len), with: chunk)
        case 12:
            // Splice: the front of this input with the back of another.
            guard let other = corpus.isEmpty ? nil : corpus[random.below(corpus.count)], other.count > 1, n > 1 else { return }
            let cut = random.below(min(n, other.count))
            b = Array(b[..<cut]) + Array(other[cut...])
        case 13:
            // Overwrite with a dictionary token.
            let t = dictionary[random.below(dictionary.count)]
            guard t.count <= n else { return }
            let at = random.below(n - t.count + 1)
            b.replaceSubrange(at..<(at + t.count), with: t)
        default:
            // Insert a dictionary token.
            let t = dictionary[random.below(dictionary.count)]
            b.insert(contentsOf: t, at: random.below(n + 1))
        }
    }

    private func put<T: FixedWidthInteger>(_ b: inout [UInt8], at i: Int, _ v: T) {
        withUnsafeBytes(of: v.littleEndian) { raw in
            for (k, byte) in raw.enumerated() where i + k < b.count { b[i + k] = byte }
        }
    }

    /// Input-to-state candidates (as AFL++'s cmplog/Redqueen): wherever one side of a
    /// comparison appears in the input (little- or big-endian, at the compare's width or
    /// narrower when the value fits), a copy with the other side there instead.
    public static func solutions(for input: [UInt8], comparisons: [Comparison], limit: Int = 256) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var seen = Set<[UInt8]>()
        for c in comparisons {
            for (from, to) in [(c.left, c.right), (c.right, c.left)] {
                var widths = [c.width]
                for w in [1, 2, 4] where w < c.width && from >> UInt64(8 * w) == 0 && to >> UInt64(8 * w) == 0 { widths.append(w) }
                for w in widths where w >= 1 && w <= 8 {
                    let le = (0..<w).map { UInt8(truncatingIfNeeded: from >> UInt64(8 * $0)) }
                    let replacement = (0..<w).map { UInt8(truncatingIfNeeded: to >> UInt64(8 * $0)) }
                    for (pattern, value) in [(le, replacement), (le.reversed(), replacement.reversed())] where input.count >= w {
                        var i = 0
                        while i + w <= input.count {
                            if Array(input[i..<(i + w)]) == Array(pattern) {
                                var candidate = input
                                candidate.replaceSubrange(i..<(i + w), with: value)
                                if seen.insert(candidate).inserted { out.append(candidate) }
                                if out.count >= limit { return out }
                            }
                            i += 1
                        }
                    }
                }
            }
        }
        return out
    }
}

extension Mutator {
    /// Candidates from the byte strings comparison functions compared: wherever one string
    /// occurs in the input, a copy with the other in its place.
    public static func stringSolutions(for input: [UInt8], comparisons: [StringComparison], limit: Int = 128) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var seen = Set<[UInt8]>([input])
        for c in comparisons {
            for (from, to) in [(c.left, c.right), (c.right, c.left)] where from.count >= 2 && from.count <= input.count {
                var i = 0
                while i + from.count <= input.count {
                    if input[i..<(i + from.count)].elementsEqual(from) {
                        var candidate = input
                        candidate.replaceSubrange(i..<(i + from.count), with: to)
                        if seen.insert(candidate).inserted { out.append(candidate) }
                        if out.count >= limit { return out }
                        i += from.count
                    } else {
                        i += 1
                    }
                }
            }
        }
        return out
    }

    /// Learns tokens for havoc's dictionary (strings the program compared input against).
    public mutating func learn(_ tokens: [[UInt8]]) {
        for t in tokens where !t.isEmpty && t.count <= 64 && dictionary.count < 1024 && !dictionary.contains(t) { dictionary.append(t) }
    }
}

/// A dictionary file in AFL's format: one token per line, `"..."` with \xNN escapes, or
/// `name="..."`; # starts a comment.
public enum TokenDictionary {
    public static func parse(_ text: String) -> [[UInt8]] {
        var out: [[UInt8]] = []
        for line in text.split(separator: "\n") {
            let l = line.trimming(" \t\r")
            guard !l.hasPrefix("#"), let open = l.firstIndex(of: "\""), let close = l.lastIndex(of: "\""), open < close else { continue }
            let token = unescape(l[l.index(after: open)..<close])
            if !token.isEmpty { out.append(token) }
        }
        return out
    }

    /// Text with C-style escapes (\xNN, \n, \r, \t, \0, and a backslash before any other
    /// character for that character) as bytes.
    public static func unescape<S: StringProtocol>(_ text: S) -> [UInt8] {
        var token: [UInt8] = []
        var chars = Array(text.utf8)[...]
        while let c = chars.first {
            chars = chars.dropFirst()
            guard c == UInt8(ascii: "\\"), let n = chars.first else { token.append(c); continue }
            chars = chars.dropFirst()
            switch n {
            case UInt8(ascii: "x") where chars.count >= 2:
                if let v = UInt8(String(decoding: chars.prefix(2), as: UTF8.self), radix: 16) {
                    token.append(v)
                    chars = chars.dropFirst(2)
                } else {
                    token.append(n)
                }
            case UInt8(ascii: "n"): token.append(10)
            case UInt8(ascii: "r"): token.append(13)
            case UInt8(ascii: "t"): token.append(9)
            case UInt8(ascii: "0"): token.append(0)
            default: token.append(n)
            }
        }
        return token
    }
}
