import CWBNative
import Glibc

/// Remote system calls in one stopped thread. Obtained from `Tracee.withSyscalls(in:)`,
/// which saved the thread's registers and signal mask and restores them however the body
/// ends, so the thread resumes exactly where it stopped.
public struct RemoteSyscalls {
    public let tracee: Tracee
    public let tid: Int32
    /// The thread's registers when the session began.
    public let original: Registers

    /// Executes one system call in the thread: registers are set for the call at the
    /// tracee's `syscall` instruction, the thread single-steps over it, and rax is read back.
    /// Returns the raw result (negative errno on failure).
    public func raw(_ nr: SyscallNumber, _ a0: UInt64 = 0, _ a1: UInt64 = 0, _ a2: UInt64 = 0,
                    _ a3: UInt64 = 0, _ a4: UInt64 = 0, _ a5: UInt64 = 0) throws -> Int64 {
        let gadget = try place(nr, a0, a1, a2, a3, a4, a5)
        try tracee.resume(tid, .singleStep)
        while true {
            switch try tracee.wait(tid) {
            case .signal(SIGTRAP):
                // A SIGTRAP someone sent (raise, kill) stands in for the step's own (they merge):
                // the process gets it back on detach.
                tracee.interceptSignal(tid, onlyIfSent: true)
                let after = try tracee.registers(tid)
                if after.rip == gadget + 2 { return Int64(bitPattern: after.rax) }
                try tracee.resume(tid, .singleStep)
            case .signal:
                // A signal dequeued before the call ran: keep it for delivery on detach.
                tracee.interceptSignal(tid)
                try tracee.resume(tid, .singleStep)
            case .interrupted, .event:
                // A pending interrupt or event stop came first; the call has not run yet.
                try tracee.resume(tid, .singleStep)
            case let .exited(code):
                throw ended("exited with status \(code)", during: nr)
            case let .killed(sig):
                throw ended("was killed by signal \(sig)", during: nr)
            }
        }
    }

    /// Sets the thread's registers for call `nr` at the tracee's `syscall` instruction;
    /// returns that instruction's address.
    private func place(_ nr: SyscallNumber, _ a0: UInt64, _ a1: UInt64, _ a2: UInt64,
                       _ a3: UInt64, _ a4: UInt64, _ a5: UInt64) throws -> UInt64 {
        let gadget = tracee.syscallGadget
        precondition(gadget != 0, "no syscall instruction known in the tracee")
        var r = original
        r.rax = UInt64(nr.rawValue)
        r.rdi = a0; r.rsi = a1; r.rdx = a2; r.r10 = a3; r.r8 = a4; r.r9 = a5
        r.rip = gadget
        r.origRax = UInt64.max   // not in a syscall: no restart logic on resume
        r.eflags &= ~UInt64(0x100)
        try tracee.setRegisters(tid, r)
        return gadget
    }

    private func ended(_ how: String, during nr: SyscallNumber) -> WBError {
        .failed("thread \(tid) \(how) during a remote \(nr) call")
    }

    /// `raw`, run through the syscall-entry and -exit stops (PTRACE_SYSCALL) instead of a
    /// single step, so that it raises no SIGTRAP: the kernel resets the action of a SIGTRAP it
    /// forces on a thread that ignores it, so a SIGTRAP the process ignores is set back with
    /// this, as the last call.
    public func rawWithoutTrap(_ nr: SyscallNumber, _ a0: UInt64 = 0, _ a1: UInt64 = 0, _ a2: UInt64 = 0,
                               _ a3: UInt64 = 0) throws -> Int64 {
        _ = try place(nr, a0, a1, a2, a3, 0, 0)
        try tracee.resume(tid, .syscall)
        var entered = false
        while true {
            let stop = try tracee.wait(tid)
            switch stop {
            case .signal(SIGTRAP), .event(Tracee.syscallStopEvent):
                if entered { return Int64(bitPattern: try tracee.registers(tid).rax) }
                entered = true
                try tracee.resume(tid, .syscall)
            case .signal:
                tracee.interceptSignal(tid)
                try tracee.resume(tid, .syscall)
            case .interrupted, .event:
                try tracee.resume(tid, .syscall)
            case let .exited(code):
                throw ended("exited with status \(code)", during: nr)
            case let .killed(sig):
                throw ended("was killed by signal \(sig)", during: nr)
            }
        }
    }

    /// Sets SIGTRAP back to ignored after injected calls (see `rawWithoutTrap`), keeping its
    /// flags, restorer and mask; `at` is 32 bytes of the process's memory wb may use.
    public func keepSIGTRAPIgnored(scratch at: UInt64) throws {
        _ = try raw(.rtSigaction, UInt64(SIGTRAP), 0, at, 8)
        var action = try tracee.read(at, count: 32)
        for k in 0..<8 { action[k] = k == 0 ? 1 : 0 }   // SIG_IGN
        try tracee.write(action, to: at)
        let r = try rawWithoutTrap(.rtSigaction, UInt64(SIGTRAP), at, 0, 8)
        if r < 0 { throw WBError.system(call: "remote rt_sigaction(SIGTRAP)", errno: Int32(-r), what: "keeping SIGTRAP ignored in pid \(tracee.pid)") }
    }

    /// Executes a system call and throws if it fails.
    @discardableResult
    public func call(_ nr: SyscallNumber, _ a0: UInt64 = 0, _ a1: UInt64 = 0, _ a2: UInt64 = 0,
                     _ a3: UInt64 = 0, _ a4: UInt64 = 0, _ a5: UInt64 = 0, what: @autoclosure () -> String) throws -> UInt64 {
        let r = try raw(nr, a0, a1, a2, a3, a4, a5)
        if r < 0 && r > -4096 {
            throw WBError.system(call: "remote \(nr)", errno: Int32(-r), what: "\(what()) in pid \(tracee.pid) (thread \(tid))")
        }
        return UInt64(bitPattern: r)
    }

    /// Runs `count` calls in one batch, with `outputBytes` of memory for them to write into
    /// (`calls` gets its address); returns each call's result and those bytes. The batch
    /// code, the call table and the outputs share one scratch mapping, unmapped again.
    public func batch(count: Int, outputBytes: Int,
                      _ calls: (_ outputs: UInt64) -> [(SyscallNumber, [UInt64])]) throws -> (results: [Int64], outputs: [UInt8]) {
        let tableBytes = UInt64(count) * 64
        let size = (4096 + tableBytes + UInt64(outputBytes) + 4095) & ~4095
        let scratch = try mapScratch(bytes: size, executable: true)
        defer { _ = try? raw(.munmap, scratch, size) }
        try tracee.write(RemoteSyscalls.batchCode, to: scratch)
        let table = scratch + 4096, outputs = table + tableBytes
        let made = calls(outputs)
        precondition(made.count == count, "batch: \(made.count) calls made, \(count) sized for")
        let results = try batch(made, code: scratch, table: table)
        return (results, outputBytes > 0 ? try tracee.read(outputs, count: outputBytes) : [])
    }

    /// Runs many system calls in one round trip: `code` is where `RemoteSyscalls.batchCode`
    /// sits in the tracee (executable memory) and `table` where the calls can be laid out,
    /// 64 bytes each: the number, six arguments, then the result. Returns the raw results.
    public func batch(_ calls: [(SyscallNumber, [UInt64])], code: UInt64, table: UInt64) throws -> [Int64] {
        guard !calls.isEmpty else { return [] }
        if tracee.executableScratchDenied {
            return try calls.map { nr, a in
                try raw(nr, a.count > 0 ? a[0] : 0, a.count > 1 ? a[1] : 0, a.count > 2 ? a[2] : 0,
                        a.count > 3 ? a[3] : 0, a.count > 4 ? a[4] : 0, a.count > 5 ? a[5] : 0)
            }
        }
        var words: [UInt64] = []
        for (nr, args) in calls {
            words.append(UInt64(nr.rawValue))
            for i in 0..<6 { words.append(i < args.count ? args[i] : 0) }
            words.append(0)
        }
        try words.withUnsafeBytes { try tracee.write($0, to: table) }
        var r = original
        r.r12 = table
        r.r13 = UInt64(calls.count)
        r.rip = code
        r.origRax = UInt64.max
        r.eflags &= ~UInt64(0x100)
        try tracee.setRegisters(tid, r)
        let end = code + UInt64(RemoteSyscalls.batchCode.count)
        try tracee.resume(tid, .continue)
        while true {
            switch try tracee.wait(tid) {
            case .signal(SIGTRAP):
                if try tracee.registers(tid).rip == end { break }
                try tracee.resume(tid, .continue)
                continue
            case .signal:
                tracee.interceptSignal(tid)
                try tracee.resume(tid, .continue)
                continue
            case .interrupted, .event:
                try tracee.resume(tid, .continue)
                continue
            case let .exited(code):
                throw WBError.failed("thread \(tid) exited with status \(code) during remote system calls")
            case let .killed(sig):
                throw WBError.failed("thread \(tid) was killed by signal \(sig) during remote system calls")
            }
            break
        }
        let out = try tracee.read(table, count: calls.count * 64)
        return (0..<calls.count).map { i in
            out.withUnsafeBytes { Int64(bitPattern: $0.loadUnaligned(fromByteOffset: i * 64 + 56, as: UInt64.self)) }
        }
    }

    /// Machine code that runs a table of system calls (r12: table, r13: count) and stops on
    /// an int3: `mov (%r12),%rax; mov 8..48(%r12),%rdi..%r9; syscall; mov %rax,56(%r12);
    /// add $64,%r12; dec %r13; jnz; int3`.
    public static let batchCode: [UInt8] = [
        0x49, 0x8B, 0x04, 0x24, 0x49, 0x8B, 0x7C, 0x24, 0x08, 0x49, 0x8B, 0x74, 0x24, 0x10,
        0x49, 0x8B, 0x54, 0x24, 0x18, 0x4D, 0x8B, 0x54, 0x24, 0x20, 0x4D, 0x8B, 0x44, 0x24, 0x28,
        0x4D, 0x8B, 0x4C, 0x24, 0x30, 0x0F, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x49, 0x83, 0xC4, 0x40,
        0x49, 0xFF, 0xCD, 0x75, 0xCE, 0xCC,
    ]

    /// Anonymous read-write memory in the tracee for passing syscall arguments; `executable`
    /// for batch code. A process that may not map executable memory (PR_SET_MDWE refuses a
    /// writable and executable mapping with EACCES) gets read-write memory, and its batches
    /// run one call at a time (`Tracee.executableScratchDenied`).
    public func mapScratch(bytes: UInt64, at address: UInt64 = 0, executable: Bool = false) throws -> UInt64 {
        let prot: UInt64 = UInt64(PROT_READ | PROT_WRITE) | (executable && !tracee.executableScratchDenied ? UInt64(PROT_EXEC) : 0)
        var flags = UInt64(MAP_PRIVATE | MAP_ANONYMOUS)
        if address != 0 { flags |= 0x100000 }   // MAP_FIXED_NOREPLACE
        if prot & UInt64(PROT_EXEC) != 0, try raw(.prctl, 66 /* PR_GET_MDWE */, 0, 0, 0, 0) > 0 {
            tracee.executableScratchDenied = true
            return try mapScratch(bytes: bytes, at: address, executable: false)
        }
        let a = try call(.mmap, address, bytes, prot, flags, UInt64.max, 0, what: "mapping scratch memory")
        if address != 0 && a != address {
            throw WBError.failed("the kernel placed scratch memory at \(hex(a)) instead of \(hex(address))")
        }
        return a
    }
}

extension Tracee {
    /// Runs `count` calls in stopped thread `tid` in one batch (`RemoteSyscalls.batch`).
    public func batch(in tid: Int32, count: Int, outputBytes: Int,
                      _ calls: (_ outputs: UInt64) -> [(SyscallNumber, [UInt64])]) throws -> (results: [Int64], outputs: [UInt8]) {
        try withSyscalls(in: tid) { try $0.batch(count: count, outputBytes: outputBytes, calls) }
    }

    /// Runs `body` with remote syscalls in thread `tid`. The thread's registers and signal mask
    /// are saved first and put back on every exit path; while the body runs all signals are
    /// blocked in the thread so none is delivered into an injected call.
    public func withSyscalls<T>(in tid: Int32, _ body: (RemoteSyscalls) throws -> T) throws -> T {
        let regs = try registers(tid)
        let mask = try signalMask(tid)
        // Everything blocked but SIGTRAP: the kernel resets the action of a SIGTRAP it forces
        // (each single step raises one) on a thread that blocks it, so with SIGTRAP blocked a
        // checkpoint would take the process's SIGTRAP handler away. wb takes those itself.
        try setSignalMask(tid, Tracee.injectionMask)
        let syscalls = RemoteSyscalls(tracee: self, tid: tid, original: regs)
        // A SIGTRAP the process ignores is set back to ignored when wb is done (each single
        // step resets it), through 32 bytes well below its stack pointer, kept as they were.
        let ignoresTrap = Tracee.ignoresSIGTRAP(pid)
        defer {
            if ignoresTrap, !isDetached {
                let at = (regs.rsp &- 4096) & ~UInt64(15)
                if let saved = try? read(at, count: 32) {
                    try? syscalls.keepSIGTRAPIgnored(scratch: at)
                    try? write(saved, to: at)
                }
            }
            _ = try? setRegisters(tid, regs)
            _ = try? setSignalMask(tid, mask)
        }
        return try body(syscalls)
    }

    /// Finds a `syscall` instruction (0f 05) in the tracee's vdso to inject through. Using the
    /// vdso's own instruction means checkpointing never writes to the target's code.
    /// A process without a vdso (it unmapped it, or the kernel gives none) is entered through
    /// a `syscall` in its other executable code (the C library has many), still without
    /// writing to it.
    public func findSyscallGadget(in maps: [ProcFS.MapsEntry]) throws -> UInt64 {
        if let vdso = maps.first(where: { $0.path == "[vdso]" }) {
            // Read whole: this also faults every vdso page in, so the checkpoint finds them
            // present and stores the vdso's code, which restore compares with this kernel's.
            let bytes = try read(vdso.start, count: Int(vdso.end - vdso.start))
            for i in 0..<(bytes.count - 1) where bytes[i] == 0x0F && bytes[i + 1] == 0x05 {
                return vdso.start + UInt64(i)
            }
        }
        let code = maps.filter { $0.path != "[vdso]" && $0.protection & 5 == 5 && $0.path.hasPrefix("/") }
        for m in code {
            // Up to 4 MiB of each, one page at a time: a gadget is found in the first few.
            var at = m.start
            while at < min(m.end, m.start + (4 << 20)) {
                guard let bytes = try? read(at, count: 4096) else { break }
                for i in 0..<(bytes.count - 1) where bytes[i] == 0x0F && bytes[i + 1] == 0x05 {
                    return at + UInt64(i)
                }
                at += 4096
            }
        }
        throw WBError.refused("pid \(pid) has no syscall instruction wb can use in its vdso or its code, which wb needs to run system calls inside it")
    }
}
