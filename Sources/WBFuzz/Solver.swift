/// Comparisons whose operands the program computed from input bytes (sums, differences,
/// masked or xor'ed bytes, integers of either byte order and any width), which
/// input-to-state cannot match: which input bytes each operand depends on is found by
/// perturbing them (traced runs of changed copies of the input), and the comparison is then
/// solved over those bytes — by the slope each byte showed (linear search, as Angora's
/// gradient descent on a linear function), or by trying every value of a single byte.
struct Solver {
    /// What perturbing one input position did to each comparison site: the operands' changes.
    struct Effect {
        var position: Int
        var delta: Int
        var left: Int64
        var right: Int64
    }

    /// A comparison site that input bytes reach, with the bytes and their effects.
    struct Dependent {
        var base: Comparison
        var effects: [Effect]
    }

    /// How many traced runs finding the dependencies of one input may take.
    var tracedBudget = 40
    /// How many candidate inputs one input's comparisons may produce.
    var candidateBudget = 1536

    /// Positions to perturb for an input of `count` bytes: blocks of `block` bytes, at most
    /// `limit` of them, spread over the input.
    static func blocks(count: Int, block: Int, limit: Int) -> [Range<Int>] {
        let all = stride(from: 0, to: count, by: block).map { $0..<min(count, $0 + block) }
        guard all.count > limit else { return all }
        return (0..<limit).map { all[$0 * all.count / limit] }
    }

    /// The input with the bytes in `range` changed by `delta`.
    static func perturbed(_ input: [UInt8], _ range: Range<Int>, by delta: UInt8) -> [UInt8] {
        var out = input
        for i in range { out[i] = out[i] &+ delta }
        return out
    }

    /// The signed difference b - a at `width` bytes.
    static func difference(_ a: UInt64, _ b: UInt64, width: Int) -> Int64 {
        let bits = UInt64(min(8, max(1, width)) * 8)
        let d = b &- a
        if bits == 64 { return Int64(bitPattern: d) }
        let masked = d & ((1 << bits) - 1)
        return masked & (1 << (bits - 1)) != 0 ? Int64(bitPattern: masked) - Int64(1 << bits) : Int64(masked)
    }

    /// Which comparison sites the input's bytes reach, and how. `trace` runs an input with
    /// comparison tracing. Blocks whose perturbation changed a site are split into bytes.
    func dependencies(of input: [UInt8], base: [Comparison], trace: ([UInt8]) throws -> [Comparison]) rethrows -> [Dependent] {
        guard !input.isEmpty, !base.isEmpty else { return [] }
        let bySite = Dictionary(base.map { ($0.site, $0) }, uniquingKeysWith: { a, _ in a })
        var spent = 0
        var effects: [Comparison.Site: [Effect]] = [:]
        func changed(_ run: [Comparison]) -> [Comparison.Site: Comparison] {
            var now: [Comparison.Site: Comparison] = [:]
            for c in run where bySite[c.site] != nil { now[c.site] = c }
            // A site that compared unequal before and equal now is missing from the run:
            // reported as equal operands.
            for (site, c) in bySite where now[site] == nil { now[site] = Comparison(left: c.right, right: c.right, width: c.width, address: c.address, hit: c.hit) }
            return now.filter { site, c in bySite[site].map { $0.left != c.left || $0.right != c.right } ?? false }
        }
        let block = input.count <= 32 ? 1 : 4
        var toSplit: [Range<Int>] = []
        for range in Solver.blocks(count: input.count, block: block, limit: block == 1 ? 32 : 24) where spent < tracedBudget {
            spent += 1
            let moved = changed(try trace(Solver.perturbed(input, range, by: 1)))
            if moved.isEmpty { continue }
            if range.count == 1 {
                for (site, c) in moved {
                    let b = bySite[site]!
                    effects[site, default: []].append(Effect(position: range.lowerBound, delta: 1,
                                                             left: Solver.difference(b.left, c.left, width: b.width),
                                                             right: Solver.difference(b.right, c.right, width: b.width)))
                }
            } else {
                toSplit.append(range)
            }
        }
        for range in toSplit {
            for i in range where spent < tracedBudget {
                spent += 1
                for (site, c) in changed(try trace(Solver.perturbed(input, i..<(i + 1), by: 1))) {
                    let b = bySite[site]!
                    effects[site, default: []].append(Effect(position: i, delta: 1,
                                                             left: Solver.difference(b.left, c.left, width: b.width),
                                                             right: Solver.difference(b.right, c.right, width: b.width)))
                }
            }
        }
        return effects.compactMap { site, e in bySite[site].map { Dependent(base: $0, effects: e) } }
            .sorted { ($0.base.address, $0.base.hit) < ($1.base.address, $1.base.hit) }
    }

    /// Inputs that should make each dependent comparison come out the other way: equal
    /// (and one off either side, for ordered compares).
    func candidates(for input: [UInt8], _ dependents: [Dependent]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var seen = Set<[UInt8]>([input])
        func add(_ c: [UInt8]) { if out.count < candidateBudget, seen.insert(c).inserted { out.append(c) } }
        var bytes: [Int] = [], vanishing: [Int] = []
        for d in dependents.sorted(by: { $0.effects.count < $1.effects.count }) {
            // A perturbation after which the site was not reported looks like one that made
            // the operands equal; usually it took the run elsewhere (a byte an earlier check
            // reads). Those effects count only when there is nothing else.
            let gap = Solver.difference(d.base.left, d.base.right, width: d.base.width)
            let real = d.effects.filter { !($0.right == 0 && $0.left == gap) }
            let effects = real.isEmpty ? d.effects : real
            // The side the input moves, and the value it must reach.
            let movesLeft = effects.contains { $0.left != 0 }
            let (moving, target) = movesLeft ? (d.base.left, d.base.right) : (d.base.right, d.base.left)
            let slopes = effects.map { (position: $0.position, slope: movesLeft ? $0.left : $0.right) }.filter { $0.slope != 0 }
            guard !slopes.isEmpty else { continue }
            for offset: Int64 in [0, 1, -1] {
                let need = Solver.difference(moving, target, width: d.base.width) + offset
                if let c = Solver.linear(input, need: need, slopes: slopes) { add(c) }
            }
            if slopes.count <= 8 { bytes.append(contentsOf: slopes.map(\.position)) }
            vanishing += d.effects.filter { !real.isEmpty && $0.right == 0 && $0.left == gap }.map(\.position)
        }
        bytes += vanishing
        // Bytes that are not simply added (masked, xor'ed, looked up), one at a time: every
        // value, after every linear guess; the bytes of sites that depend on fewer first.
        var single: [Int] = []
        for p in bytes where !single.contains(p) { single.append(p) }
        for p in single {
            for v in 0...255 where UInt8(v) != input[p] {
                var c = input
                c[p] = UInt8(v)
                add(c)
            }
        }
        return out
    }

    /// Moves the bytes, largest slope first, so that the operand changes by `need`: each
    /// byte takes as much of what is left as its range allows.
    static func linear(_ input: [UInt8], need: Int64, slopes: [(position: Int, slope: Int64)]) -> [UInt8]? {
        var out = input
        var left = need
        for (p, s) in slopes.sorted(by: { abs($0.slope) > abs($1.slope) }) where left != 0 {
            var k = left / s
            let now = Int64(out[p])
            k = max(-now, min(255 - now, k))
            out[p] = UInt8(now + k)
            left -= k * s
        }
        return left == 0 && out != input ? out : nil
    }
}
