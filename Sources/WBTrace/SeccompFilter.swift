/// A seccomp filter program (classic BPF) that sends chosen syscalls to wb as ptrace stops
/// (SECCOMP_RET_TRACE, with a value wb reads back) and lets everything else through. Used by
/// fuzzing runs (exits, layout changes, reads) and by recording (inputs).
public struct SeccompFilter {
    /// Syscall numbers that stop at wb, each with the filter's value for it.
    public var traced: [(nr: Int, data: UInt16)]
    /// Calls made by the `syscall` instruction at this address are always let through: the
    /// preload library's own calls when recording.
    public var allowedInstruction: UInt64?
    /// When set, the traced calls stop at wb only when their first argument is one of these
    /// fds (the sockets `wb explore` mediates); the filter's value is then 0.
    public var onlyFDs: [Int32]?
    /// Traced calls whose stop depends on one argument (by index, its low 32 bits): they
    /// stop only when it is one of the values (`stops`: madvise only for the advice wb must
    /// see), or only when it is none of them (reads of fds wb need not see).
    public struct Condition: Sendable {
        public var argument: Int
        public var values: [UInt32]
        public var stops: Bool
        public init(argument: Int, values: [UInt32], stops: Bool) {
            self.argument = argument; self.values = values; self.stops = stops
        }
    }
    public var conditions: [Int: Condition]

    public init(traced: [(nr: Int, data: UInt16)], allowedInstruction: UInt64? = nil, onlyFDs: [Int32]? = nil,
                conditions: [Int: Condition] = [:]) {
        self.traced = traced
        self.allowedInstruction = allowedInstruction
        self.onlyFDs = onlyFDs
        self.conditions = conditions
    }

    /// The most values one condition checks (BPF jumps over at most 255 instructions).
    public static let conditionValuesAtMost = 250
    private static let allow: UInt32 = 0x7FFF_0000
    private static let trace: UInt32 = 0x7FF0_0000

    /// The instructions: (code, jt, jf, k).
    public var instructions: [(UInt16, UInt8, UInt8, UInt32)] {
        // The architecture must be x86-64; anything else passes untouched.
        var prog: [(UInt16, UInt8, UInt8, UInt32)] = [(0x20, 0, 0, 4), (0x15, 1, 0, 0xC000_003E), (0x06, 0, 0, Self.allow)]
        if let at = allowedInstruction {
            // seccomp_data.instruction_pointer is the address after the `syscall` (2 bytes).
            let ip = at + 2
            prog += [(0x20, 0, 0, 8), (0x15, 0, 3, UInt32(truncatingIfNeeded: ip)),
                     (0x20, 0, 0, 12), (0x15, 0, 1, UInt32(truncatingIfNeeded: ip >> 32)),
                     (0x06, 0, 0, Self.allow)]
        }
        prog.append((0x20, 0, 0, 0))
        if let fds = onlyFDs {
            // Each traced number jumps to one check of the first argument's low 32 bits.
            for (i, (nr, _)) in traced.enumerated() {
                prog.append((0x15, UInt8(traced.count - i), 0, UInt32(nr)))
            }
            prog.append((0x06, 0, 0, Self.allow))
            prog.append((0x20, 0, 0, 16))
            for (i, fd) in fds.enumerated() {
                prog.append((0x15, UInt8(fds.count - i), 0, UInt32(bitPattern: fd)))
            }
            prog.append((0x06, 0, 0, Self.allow))
            prog.append((0x06, 0, 0, Self.trace))
            return prog
        }
        for (nr, data) in traced {
            // A condition with more values than a jump can pass over is left out: the call
            // always stops (more stops than asked for, never fewer).
            guard let when = conditions[nr], !when.values.isEmpty, when.values.count <= Self.conditionValuesAtMost else {
                prog.append((0x15, 0, 1, UInt32(nr)))
                prog.append((0x06, 0, 0, Self.trace | UInt32(data)))
                continue
            }
            let n = when.values.count
            if when.stops {
                // jeq nr (else past the block); load the argument; jeq each value to the
                // trace return; otherwise load the number back and jump over the return.
                prog.append((0x15, 0, UInt8(n + 4), UInt32(nr)))
                prog.append((0x20, 0, 0, UInt32(16 + 8 * when.argument)))
                for (j, v) in when.values.enumerated() { prog.append((0x15, UInt8(n + 1 - j), 0, v)) }
                prog.append((0x20, 0, 0, 0))
                prog.append((0x05, 0, 0, 1))
                prog.append((0x06, 0, 0, Self.trace | UInt32(data)))
            } else {
                // jeq nr (else past the block); load the argument; jeq each value to the
                // allow return; otherwise the trace return.
                prog.append((0x15, 0, UInt8(n + 3), UInt32(nr)))
                prog.append((0x20, 0, 0, UInt32(16 + 8 * when.argument)))
                for (j, v) in when.values.enumerated() { prog.append((0x15, UInt8(n - j), 0, v)) }
                prog.append((0x06, 0, 0, Self.trace | UInt32(data)))
                prog.append((0x06, 0, 0, Self.allow))
            }
        }
        prog.append((0x06, 0, 0, Self.allow))
        return prog
    }

    /// The program as struct sock_filter entries, ready for seccomp(2).
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        for (code, jt, jf, k) in instructions {
            withUnsafeBytes(of: code.littleEndian) { out += $0 }
            out += [jt, jf]
            withUnsafeBytes(of: k.littleEndian) { out += $0 }
        }
        return out
    }

    /// Installs the filter in a stopped process wb traces, for all its threads (TSYNC).
    /// `scratch` is 4 KiB of the process's memory wb may use.
    public func install(_ tracee: Tracee, _ s: RemoteSyscalls, scratch: UInt64) throws {
        let program = bytes
        try tracee.write(program, to: scratch + 256)
        var fprog: [UInt8] = []
        withUnsafeBytes(of: UInt64(program.count / 8).littleEndian) { fprog += $0 }
        withUnsafeBytes(of: (scratch + 256).littleEndian) { fprog += $0 }
        try tracee.write(fprog, to: scratch + 128)
        try s.call(.prctl, 38 /* PR_SET_NO_NEW_PRIVS */, 1, 0, 0, 0, what: "setting no_new_privs for the seccomp filter")
        try s.call(.seccomp, 1 /* SET_MODE_FILTER */, 1 /* TSYNC */, scratch + 128, what: "installing the seccomp filter")
    }
}
