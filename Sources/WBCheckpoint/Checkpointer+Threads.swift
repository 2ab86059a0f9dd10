import Foundation
import Glibc
import WBTrace

extension Checkpointer {
    /// Registers, XSAVE area, signal mask, rseq, robust list and queued signals of every
    /// thread, read through ptrace while the threads are stopped.
    func captureThreads(_ tracee: Tracee) throws -> ProcessState {
        var process = ProcessState(pid: pid)
        for tid in tracee.tids {
            let regs = try tracee.registers(tid)
            let comm = ((try? Paths.readText("/proc/\(pid)/task/\(tid)/comm")) ?? "").trimming("\n")
            var t = ThreadState(tid: tid, comm: comm, registers: regs, xstate: try tracee.xstate(tid),
                                sigmask: try tracee.signalMask(tid))
            t.rseq = try tracee.rseq(tid)
            t.robustList = try tracee.robustList(tid)
            t.pending = try tracee.pendingSignals(tid, shared: false)
            process.threads.append(t)
        }
        process.sharedPending = try tracee.pendingSignals(pid, shared: true)
        return process
    }

    /// Process-wide state, partly from /proc and partly from system calls run inside the
    /// process (sigactions, itimers, brk, the per-thread clear_child_tid and alternate stacks).
    func captureProcess(_ tracee: Tracee, into p: inout ProcessState) throws {
        let maps = try ProcFS.maps(pid, withFlags: false)
        tracee.syscallGadget = try tracee.findSyscallGadget(in: maps)
        try tracee.withSyscalls(in: pid) { leader in
            let scratch = try leader.mapScratch(bytes: 4096)
            defer { _ = try? leader.raw(.munmap, scratch, 4096) }
            // All 64 dispositions: struct kernel_sigaction { handler, flags, restorer, mask }.
            for sig in 1...64 {
                try leader.call(.rtSigaction, UInt64(sig), 0, scratch, 8, what: "reading the action of signal \(sig)")
                let w = try tracee.read(scratch, count: 32).words
                p.sigactions.append(SignalAction(signal: Int32(sig), handler: w[0], flags: w[1], restorer: w[2], mask: w[3]))
            }
            for which in 0...2 {
                try leader.call(.getitimer, UInt64(which), scratch, what: "reading interval timer \(which)")
                let w = try tracee.read(scratch, count: 32).words
                let interval = w[0] * 1_000_000 + w[1], value = w[2] * 1_000_000 + w[3]
                if interval != 0 || value != 0 {
                    p.itimers.append(IntervalTimer(which: Int32(which), intervalMicroseconds: interval, valueMicroseconds: value))
                }
            }
            p.mm.brk = try leader.call(.brk, 0, what: "reading the program break")
            // POSIX timers: /proc lists them, timer_gettime tells where each stands.
            p.posixTimers = ProcFS.parsePosixTimers((try? Paths.readText("/proc/\(pid)/timers")) ?? "")
            for i in p.posixTimers.indices {
                try leader.call(.timerGettime, UInt64(p.posixTimers[i].id), scratch, what: "reading POSIX timer \(p.posixTimers[i].id)")
                let w = try tracee.read(scratch, count: 32).words
                p.posixTimers[i].intervalNanoseconds = w[0] * 1_000_000_000 + w[1]
                p.posixTimers[i].valueNanoseconds = w[2] * 1_000_000_000 + w[3]
            }
            // ARCH_GET_XCOMP_PERM: XSAVE features (AMX) the process asked permission for.
            if try leader.raw(.archPrctl, 0x1022, scratch) == 0 {
                p.xcompPermissions = try tracee.readWord(scratch)
            }
            for i in p.threads.indices {
                let tid = p.threads[i].tid
                let capture = { (s: RemoteSyscalls) throws -> (UInt64, AltStack) in
                    try s.call(.prctl, 40 /* PR_GET_TID_ADDRESS */, scratch, what: "reading clear_child_tid")
                    let clearChildTid = try tracee.readWord(scratch)
                    try s.call(.sigaltstack, 0, scratch + 64, what: "reading the alternate signal stack")
                    let w = try tracee.read(scratch + 64, count: 24).words
                    return (clearChildTid, AltStack(base: w[0], size: w[2], flags: Int32(truncatingIfNeeded: w[1])))
                }
                let (clearChildTid, altStack) = tid == pid ? try capture(leader) : try tracee.withSyscalls(in: tid, capture)
                p.threads[i].clearChildTid = clearChildTid
                p.threads[i].altStack = altStack
            }
        }

        let status = try ProcFS.status(pid)
        let stat = try ProcFS.stat(pid)
        p.comm = stat[2] ?? ""
        p.ppid = Int32(stat[4] ?? "0") ?? 0
        p.pgid = Int32(stat[5] ?? "0") ?? 0
        p.sid = Int32(stat[6] ?? "0") ?? 0
        p.umask = UInt32(status["Umask"] ?? "22", radix: 8) ?? 0o022
        func ids(_ key: String) -> [UInt32] { (status[key] ?? "").split(whereSeparator: { $0 == "\t" || $0 == " " }).compactMap { UInt32($0) } }
        p.credentials = Credentials(uid: ids("Uid"), gid: ids("Gid"), groups: ids("Groups"))
        func field(_ n: Int) -> UInt64 { UInt64(stat[n] ?? "0") ?? 0 }
        p.mm.startCode = field(26); p.mm.endCode = field(27); p.mm.startStack = field(28)
        p.mm.startData = field(45); p.mm.endData = field(46); p.mm.startBrk = field(47)
        p.mm.argStart = field(48); p.mm.argEnd = field(49); p.mm.envStart = field(50); p.mm.envEnd = field(51)
        p.mm.auxv = try ProcFS.auxv(pid)
        p.cmdline = ProcFS.strings(pid, "cmdline")
        p.portable = ProcFS.strings(pid, "environ").contains(CPUCompatibility.portableMarker)
        p.exe = ((try? Paths.readLink("/proc/\(pid)/exe")) ?? "").deletedStripped.path
        p.cwd = try Paths.readLink("/proc/\(pid)/cwd")
        p.root = try Paths.readLink("/proc/\(pid)/root")
        p.personality = UInt32((try? Paths.readText("/proc/\(pid)/personality"))?.trimming("\n") ?? "0", radix: 16) ?? 0
        let names = ["cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile", "memlock", "as",
                     "locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime"]
        for (r, name) in names.enumerated() {
            let limit = try ResourceLimits.get(pid: pid, resource: Int32(r))
            p.rlimits.append(ResourceLimit(resource: Int32(r), name: name, soft: limit.soft, hard: limit.hard))
        }
    }
}

extension [UInt8] {
    /// Little-endian 64-bit words.
    var words: [UInt64] {
        stride(from: 0, to: count - 7, by: 8).map { i in
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(self[i + $1]) << (8 * UInt64($1)) }
        }
    }
}

extension String {
    /// The path without the " (deleted)" the kernel appends, and whether it was there.
    var deletedStripped: (path: String, deleted: Bool) {
        hasSuffix(" (deleted)") ? (String(dropLast(" (deleted)".count)), true) : (self, false)
    }
}
