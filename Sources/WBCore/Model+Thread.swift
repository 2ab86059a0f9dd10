import Foundation

/// One thread: registers, the XSAVE area and the per-thread kernel state.
public struct ThreadState: Codable, Sendable, Equatable {
    public var tid: Int32
    public var comm: String
    public var registers: Registers
    /// The XSAVE area as PTRACE_GETREGSET(NT_X86_XSTATE) returned it (standard format).
    public var xstate: Data
    public var sigmask: UInt64
    /// set_tid_address / CLONE_CHILD_CLEARTID.
    public var clearChildTid: UInt64
    public var robustList: RobustList
    public var rseq: RseqRegistration?
    public var altStack: AltStack
    public var pending: [PendingSignal]
    /// Capabilities, securebits, no_new_privs and seccomp filters (absent in images of
    /// older wb, which did not record them).
    public var security: ThreadSecurity?
    /// Scheduling policy, real-time priority and nice value (absent in older images).
    public var scheduling: Scheduling?
    /// The thread's NUMA memory policy (set_mempolicy), absent when the default.
    public var numaPolicy: NUMAPolicy?
    /// Syscall user dispatch (PR_SET_SYSCALL_USER_DISPATCH): [mode, selector address,
    /// allowed offset, allowed length], absent when off.
    public var syscallDispatch: [UInt64]?

    public init(tid: Int32, comm: String, registers: Registers, xstate: Data, sigmask: UInt64) {
        self.tid = tid; self.comm = comm; self.registers = registers; self.xstate = xstate; self.sigmask = sigmask
        clearChildTid = 0; robustList = RobustList(head: 0, length: 0); rseq = nil
        altStack = AltStack(base: 0, size: 0, flags: 2); pending = []
    }

    /// The syscall this thread was stopped in, if any, and how it will resume.
    public var interruptedSyscall: InterruptedSyscall? { InterruptedSyscall(registers) }
}

/// What a thread may do: its capability sets, securebits, no_new_privs and seccomp state, as
/// /proc/PID/task/TID/status, prctl(PR_GET_SECUREBITS) and PTRACE_SECCOMP_GET_FILTER report them.
public struct ThreadSecurity: Codable, Sendable, Equatable {
    public var capabilities: CapabilitySets
    public var securebits: UInt32
    public var noNewPrivs: Bool
    /// 0: none, 1: strict (never in an image: refused at checkpoint), 2: filters.
    public var seccompMode: Int32
    /// The classic BPF programs (struct sock_filter arrays), oldest first: the order they
    /// were installed in, and so the order restore installs them in.
    public var seccompFilters: [Data]
    public init(capabilities: CapabilitySets, securebits: UInt32, noNewPrivs: Bool, seccompMode: Int32, seccompFilters: [Data]) {
        self.capabilities = capabilities; self.securebits = securebits; self.noNewPrivs = noNewPrivs
        self.seccompMode = seccompMode; self.seccompFilters = seccompFilters
    }
}

/// A thread's scheduling, as /proc/PID/task/TID/stat shows it.
public struct Scheduling: Codable, Sendable, Equatable {
    /// SCHED_OTHER (0), FIFO (1), RR (2), BATCH (3), IDLE (5), DEADLINE (6).
    public var policy: Int32
    /// The real-time priority (1-99 for FIFO and RR, else 0).
    public var priority: Int32
    /// -20 to 19.
    public var nice: Int32
    /// The CPUs the thread was bound to, as the kernel lists them ("0-3,8"), when it was
    /// bound to fewer than were online. (Absent: it could run on all of them.)
    public var cpus: String?
    /// Its I/O priority (ioprio_get: class << 13 | level) when it had one set. (Absent: none,
    /// which follows its nice value.)
    public var ioPriority: Int32?
    public init(policy: Int32, priority: Int32, nice: Int32) { self.policy = policy; self.priority = priority; self.nice = nice }
}

/// The five capability sets, bit n for capability n.
public struct CapabilitySets: Codable, Sendable, Equatable {
    public var inheritable: UInt64
    public var permitted: UInt64
    public var effective: UInt64
    public var bounding: UInt64
    public var ambient: UInt64
    public init(inheritable: UInt64, permitted: UInt64, effective: UInt64, bounding: UInt64, ambient: UInt64) {
        self.inheritable = inheritable; self.permitted = permitted; self.effective = effective
        self.bounding = bounding; self.ambient = ambient
    }
}

public struct RobustList: Codable, Sendable, Equatable {
    public var head: UInt64
    public var length: UInt64
    public init(head: UInt64, length: UInt64) { self.head = head; self.length = length }
}

public struct RseqRegistration: Codable, Sendable, Equatable {
    public var address: UInt64
    public var size: UInt32
    public var signature: UInt32
    public var flags: UInt32
    public init(address: UInt64, size: UInt32, signature: UInt32, flags: UInt32) {
        self.address = address; self.size = size; self.signature = signature; self.flags = flags
    }
}

public struct AltStack: Codable, Sendable, Equatable {
    public var base: UInt64
    public var size: UInt64
    /// SS_DISABLE (2) when there is none.
    public var flags: Int32
    public init(base: UInt64, size: UInt64, flags: Int32) { self.base = base; self.size = size; self.flags = flags }
}

/// The general registers, as struct user_regs_struct.
public struct Registers: Codable, Sendable, Equatable {
    public var r15: UInt64 = 0, r14: UInt64 = 0, r13: UInt64 = 0, r12: UInt64 = 0
    public var rbp: UInt64 = 0, rbx: UInt64 = 0, r11: UInt64 = 0, r10: UInt64 = 0
    public var r9: UInt64 = 0, r8: UInt64 = 0, rax: UInt64 = 0, rcx: UInt64 = 0
    public var rdx: UInt64 = 0, rsi: UInt64 = 0, rdi: UInt64 = 0, origRax: UInt64 = 0
    public var rip: UInt64 = 0, cs: UInt64 = 0, eflags: UInt64 = 0, rsp: UInt64 = 0, ss: UInt64 = 0
    public var fsBase: UInt64 = 0, gsBase: UInt64 = 0
    public var ds: UInt64 = 0, es: UInt64 = 0, fs: UInt64 = 0, gs: UInt64 = 0
    public init() {}

    /// Name and value of every register, in the kernel's order.
    public var all: [(String, UInt64)] {
        [("rip", rip), ("rsp", rsp), ("rbp", rbp), ("rax", rax), ("rbx", rbx), ("rcx", rcx), ("rdx", rdx),
         ("rsi", rsi), ("rdi", rdi), ("r8", r8), ("r9", r9), ("r10", r10), ("r11", r11), ("r12", r12),
         ("r13", r13), ("r14", r14), ("r15", r15), ("orig_rax", origRax), ("eflags", eflags),
         ("cs", cs), ("ss", ss), ("ds", ds), ("es", es), ("fs", fs), ("gs", gs),
         ("fs_base", fsBase), ("gs_base", gsBase)]
    }
}

/// A thread that was inside a system call when it was stopped. The kernel had backed out of
/// the call with one of its restart codes; restore re-executes the call.
public struct InterruptedSyscall: Sendable, Equatable {
    public var number: Int64
    public var restartCode: Int64

    public static let restartCodes: [Int64: String] = [
        -512: "ERESTARTSYS", -513: "ERESTARTNOINTR", -514: "ERESTARTNOHAND", -516: "ERESTART_RESTARTBLOCK",
    ]

    public init?(_ r: Registers) {
        let nr = Int64(bitPattern: r.origRax)
        let ret = Int64(bitPattern: r.rax)
        guard nr >= 0, InterruptedSyscall.restartCodes[ret] != nil else { return nil }
        number = nr
        restartCode = ret
    }

    public var restartName: String { InterruptedSyscall.restartCodes[restartCode] ?? "\(restartCode)" }

    /// Registers that make the thread execute the call again when it resumes: the call number
    /// back in rax, rip on the `syscall` instruction, and no syscall in progress.
    public static func restartRegisters(_ r: Registers) -> Registers {
        guard let call = InterruptedSyscall(r) else { return r }
        var out = r
        out.rax = UInt64(bitPattern: call.number)
        out.rip = r.rip &- 2
        out.origRax = UInt64.max
        return out
    }
}

/// A NUMA memory policy as get_mempolicy tells it: the mode with its flags (MPOL_PREFERRED 1,
/// MPOL_BIND 2, MPOL_INTERLEAVE 3, MPOL_LOCAL 4, MPOL_PREFERRED_MANY 5,
/// MPOL_WEIGHTED_INTERLEAVE 6; MPOL_F_STATIC_NODES 1 << 15, MPOL_F_RELATIVE_NODES 1 << 14,
/// MPOL_F_NUMA_BALANCING 1 << 13) and its nodes.
public struct NUMAPolicy: Codable, Sendable, Equatable {
    public var mode: Int32
    public var nodes: [UInt32]
    public init(mode: Int32, nodes: [UInt32]) { self.mode = mode; self.nodes = nodes }

    /// The highest node number wb takes (the kernel's MAX_NUMNODES is at most 1024).
    public static let maxNode: UInt32 = 4095

    /// The node mask as 64-bit words, `words` of them.
    public func mask(words: Int) -> [UInt64] {
        var out = [UInt64](repeating: 0, count: words)
        for n in nodes where Int(n / 64) < words { out[Int(n / 64)] |= 1 << UInt64(n % 64) }
        return out
    }

    /// 64-bit words of a node mask that covers every possible node of this machine
    /// (get_mempolicy refuses fewer), or nil when its kernel has no NUMA policies.
    public static let possibleNodeWords: Int? = {
        guard let text = try? Paths.readText("/sys/devices/system/node/possible") else { return nil }
        let highest = text.split(whereSeparator: { $0 == "," || $0 == "-" || $0 == "\n" }).compactMap { Int($0) }.max() ?? 0
        return highest / 64 + 1
    }()

    /// The policy `mode` with the nodes set in `mask`.
    public init(mode: Int32, mask: [UInt64]) {
        var nodes: [UInt32] = []
        for (w, word) in mask.enumerated() where word != 0 {
            for bit in 0..<64 where word & (1 << UInt64(bit)) != 0 { nodes.append(UInt32(w * 64 + bit)) }
        }
        self.init(mode: mode, nodes: nodes)
    }
}
