import Testing
@testable import WBTrace

/// The filter's program, run by a small classic-BPF interpreter over seccomp_data: which
/// calls stop at wb, with which value.
@Suite struct SeccompFilterTests {
    /// The filter's verdict for a call: the return value (action | data).
    static func verdict(_ filter: SeccompFilter, nr: UInt32, args: [UInt64] = [], arch: UInt32 = 0xC000_003E, ip: UInt64 = 0x1000) -> UInt32 {
        var data = [UInt8](repeating: 0, count: 64)
        func put(_ v: UInt32, _ at: Int) { withUnsafeBytes(of: v.littleEndian) { data.replaceSubrange(at..<at + 4, with: $0) } }
        put(nr, 0)
        put(arch, 4)
        put(UInt32(truncatingIfNeeded: ip), 8)
        put(UInt32(truncatingIfNeeded: ip >> 32), 12)
        for (i, a) in args.enumerated() {
            put(UInt32(truncatingIfNeeded: a), 16 + 8 * i)
            put(UInt32(truncatingIfNeeded: a >> 32), 20 + 8 * i)
        }
        let prog = filter.instructions
        var pc = 0, a: UInt32 = 0
        while pc < prog.count {
            let (code, jt, jf, k) = prog[pc]
            switch code {
            case 0x20: a = data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: Int(k), as: UInt32.self) }; pc += 1
            case 0x15: pc += 1 + Int(a == k ? jt : jf)
            case 0x05: pc += 1 + Int(k)
            case 0x06: return k
            default: Issue.record("unknown instruction \(code)"); return 0
            }
        }
        Issue.record("the program ran off its end")
        return 0
    }

    static let allow: UInt32 = 0x7FFF_0000, trace: UInt32 = 0x7FF0_0000

    @Test func tracedCallsStopWithTheirValueAndOthersPass() {
        let f = SeccompFilter(traced: [(231, 1), (0, 16)])
        #expect(Self.verdict(f, nr: 231) == Self.trace | 1)
        #expect(Self.verdict(f, nr: 0) == Self.trace | 16)
        #expect(Self.verdict(f, nr: 1) == Self.allow)
        // Another architecture's calls pass untouched.
        #expect(Self.verdict(f, nr: 231, arch: 0x4000_0003) == Self.allow)
    }

    /// A call traced only for some values of one argument (madvise's advice) stops for
    /// those and passes otherwise, and the calls checked after it are still seen.
    @Test func aCallTracedForSomeArgumentValuesStopsOnlyForThem() {
        let f = SeccompFilter(traced: [(231, 1), (28, 2), (440, 2), (0, 16)],
                              conditions: [28: .init(argument: 2, values: [102, 103], stops: true),
                                           440: .init(argument: 3, values: [102, 103], stops: true)])
        #expect(Self.verdict(f, nr: 28, args: [0x7000, 4096, 102]) == Self.trace | 2)
        #expect(Self.verdict(f, nr: 28, args: [0x7000, 4096, 103]) == Self.trace | 2)
        #expect(Self.verdict(f, nr: 28, args: [0x7000, 4096, 4]) == Self.allow)
        #expect(Self.verdict(f, nr: 440, args: [3, 0x7000, 1, 102, 0]) == Self.trace | 2)
        #expect(Self.verdict(f, nr: 440, args: [3, 0x7000, 1, 4, 0]) == Self.allow)
        #expect(Self.verdict(f, nr: 231) == Self.trace | 1)
        #expect(Self.verdict(f, nr: 0, args: [102, 0, 102]) == Self.trace | 16)
        #expect(Self.verdict(f, nr: 9, args: [0, 0, 102]) == Self.allow)
    }

    /// A call traced except for some values of an argument (reads of the input's fds) passes
    /// for those and stops for the rest, and the calls checked after it are still seen.
    @Test func aCallTracedExceptForSomeArgumentValuesPassesForThem() {
        let f = SeccompFilter(traced: [(0, 16), (19, 16), (231, 1)],
                              conditions: [0: .init(argument: 0, values: [0, 3], stops: false), 19: .init(argument: 0, values: [0], stops: false)])
        #expect(Self.verdict(f, nr: 0, args: [0]) == Self.allow)
        #expect(Self.verdict(f, nr: 0, args: [3]) == Self.allow)
        #expect(Self.verdict(f, nr: 0, args: [4]) == Self.trace | 16)
        #expect(Self.verdict(f, nr: 19, args: [0]) == Self.allow)
        #expect(Self.verdict(f, nr: 19, args: [3]) == Self.trace | 16)
        #expect(Self.verdict(f, nr: 231, args: [0]) == Self.trace | 1)
        #expect(Self.verdict(f, nr: 1, args: [0]) == Self.allow)
    }

    /// A condition with more values than the program's jumps can pass over stops the call
    /// always (never fewer stops than asked for), and the program stays well formed.
    @Test func aConditionWithTooManyValuesStopsTheCallAlways() {
        let many = (0..<UInt32(300)).map { $0 }
        let f = SeccompFilter(traced: [(0, 16), (231, 1)], conditions: [0: .init(argument: 0, values: many, stops: false)])
        #expect(Self.verdict(f, nr: 0, args: [5]) == Self.trace | 16)
        #expect(Self.verdict(f, nr: 231) == Self.trace | 1)
        #expect(Self.verdict(f, nr: 1) == Self.allow)
        let most = (0..<UInt32(SeccompFilter.conditionValuesAtMost)).map { $0 }
        let g = SeccompFilter(traced: [(0, 16), (231, 1)], conditions: [0: .init(argument: 0, values: most, stops: true)])
        #expect(Self.verdict(g, nr: 0, args: [249]) == Self.trace | 16)
        #expect(Self.verdict(g, nr: 0, args: [250]) == Self.allow)
        #expect(Self.verdict(g, nr: 231) == Self.trace | 1)
    }
}
