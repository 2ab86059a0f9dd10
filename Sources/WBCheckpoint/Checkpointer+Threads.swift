import Foundation
import Glibc
import WBTrace

extension Checkpointer {
    /// Registers, XSAVE area, signal mask, rseq, robust list and queued signals of every
    /// thread, read through ptrace while the threads are stopped.
    func captureThreads(_ tracee: Tracee) throws -> ProcessState {
        var process = ProcessState(pid: pid)
        let online = CPUAffinity.online()
        for tid in tracee.tids {
            var regs = try tracee.registers(tid)
            // A thread sleeping again after an earlier interruption sits in restart_syscall,
            // whose state lives in the kernel. The call it restarts is named by the
            // `mov $nr, %eax; syscall` just before rip (how glibc makes system calls); the
            // image records that call, to run again with the registers' arguments.
            if regs.origRax == 219, let code = try? tracee.read(regs.rip &- 7, count: 7),
               code[0] == 0xB8, code[5] == 0x0F, code[6] == 0x05 {
                regs.origRax = UInt64(code[1]) | UInt64(code[2]) << 8 | UInt64(code[3]) << 16 | UInt64(code[4]) << 24
            }
            let comm = ((try? Paths.readText("/proc/\(pid)/task/\(tid)/comm")) ?? "").trimming("\n")
            var t = ThreadState(tid: tid, comm: comm, registers: regs, xstate: try tracee.xstate(tid),
                                sigmask: try tracee.signalMask(tid))
            t.rseq = try tracee.rseq(tid)
            t.robustList = try tracee.robustList(tid)
            t.pending = try tracee.pendingSignals(tid, shared: false)
            t.security = try security(of: tid, tracee)
            // Off while wb holds the thread (Tracee.suspendedDispatch): as the thread had it.
            t.syscallDispatch = tracee.suspendedDispatch[tid]
            if let stat = try? Paths.readText("/proc/\(pid)/task/\(tid)/stat") {
                let f = ProcFS.parseStat(stat)
                t.scheduling = Scheduling(policy: Int32(f[41] ?? "0") ?? 0, priority: Int32(f[40] ?? "0") ?? 0, nice: Int32(f[19] ?? "0") ?? 0)
                if let cpus = CPUAffinity.get(tid), !online.isSubset(of: cpus) { t.scheduling?.cpus = CPUAffinity.format(cpus) }
                if let io = CPUAffinity.ioPriority(tid), io != 0 { t.scheduling?.ioPriority = io }
            }
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
        // Read before wb's single steps, which reset an ignored SIGTRAP until wb sets it back.
        let ignoresTrap = Tracee.ignoresSIGTRAP(pid)
        try tracee.withSyscalls(in: pid) { leader in
            // One executable scratch area: the batch code, a call table, and the outputs.
            let size: UInt64 = 64 * 1024
            let lockedBefore = ProcFS.lockedKB(pid)
            var lockFuture: UInt32?
            let scratch = try leader.mapScratch(bytes: size, executable: true)
            // mlockall(MCL_FUTURE) shows in no mapping made before it: the scratch, made now,
            // is locked if it is in force (and locked as touched with MCL_ONFAULT).
            if let before = lockedBefore, let after = ProcFS.lockedKB(pid), after > before {
                let onFault = (try? ProcFS.maps(pid, withFlags: true))?.first { $0.start == scratch }?.vmFlags.contains("lf") == true
                lockFuture = onFault ? 6 : 2
            }
            defer { _ = try? leader.raw(.munmap, scratch, size) }
            try tracee.write(RemoteSyscalls.batchCode, to: scratch)
            let table = scratch + 4096, out = scratch + 32 * 1024
            p.posixTimers = ProcFS.parsePosixTimers((try? Paths.readText("/proc/\(pid)/timers")) ?? "")
            // All 64 dispositions (struct kernel_sigaction: handler, flags, restorer, mask),
            // the interval timers, the program break, the AMX permission and each POSIX
            // timer's state, in one round trip.
            var calls: [(SyscallNumber, [UInt64])] = (1...64).map { (.rtSigaction, [UInt64($0), 0, out + UInt64($0 - 1) * 32, 8]) }
            calls += (0...2).map { (.getitimer, [UInt64($0), out + 2048 + UInt64($0) * 32]) }
            calls.append((.brk, [0]))
            calls.append((.archPrctl, [0x1022 /* ARCH_GET_XCOMP_PERM */, out + 2200]))
            calls += p.posixTimers.enumerated().map { (.timerGettime, [UInt64($0.element.id), out + 2304 + UInt64($0.offset) * 32]) }
            // Process settings: parent-death signal and subreaper (ints written to memory),
            // THP disabled, timer slack and dumpable (returned).
            let knobsAt = out + 2304 + UInt64(p.posixTimers.count) * 32, first = calls.count
            calls += [(.prctl, [2 /* PR_GET_PDEATHSIG */, knobsAt]), (.prctl, [37 /* PR_GET_CHILD_SUBREAPER */, knobsAt + 8]),
                      (.prctl, [42 /* PR_GET_THP_DISABLE */]), (.prctl, [30 /* PR_GET_TIMERSLACK */]), (.prctl, [3 /* PR_GET_DUMPABLE */]),
                      (.uname, [knobsAt + 64]), (.prctl, [66 /* PR_GET_MDWE */, 0, 0, 0, 0]),
                      (.clockGettime, [UInt64(CLOCK_MONOTONIC), knobsAt + 16]), (.clockGettime, [UInt64(CLOCK_BOOTTIME), knobsAt + 32]),
                      (.keyctl, [0 /* KEYCTL_GET_KEYRING_ID */, UInt64(bitPattern: -3) /* KEY_SPEC_SESSION_KEYRING */, 0]),
                      (.prctl, [68 /* PR_GET_MEMORY_MERGE */, 0, 0, 0, 0])]
            let results = try leader.batch(calls, code: scratch, table: table)
            for (i, r) in results.enumerated() where r < 0 && calls[i].0 != .archPrctl && i < first {
                throw WBError.system(call: "remote \(calls[i].0)", errno: Int32(-r), what: "reading process state of pid \(pid)")
            }
            let w = try tracee.read(out, count: 2304 + p.posixTimers.count * 32).words
            for sig in 1...64 {
                let b = (sig - 1) * 4
                let handler = sig == SIGTRAP && ignoresTrap ? 1 : w[b]
                p.sigactions.append(SignalAction(signal: Int32(sig), handler: handler, flags: w[b + 1], restorer: w[b + 2], mask: w[b + 3]))
            }
            for which in 0...2 {
                let b = 256 + which * 4
                let interval = w[b] * 1_000_000 + w[b + 1], value = w[b + 2] * 1_000_000 + w[b + 3]
                if interval != 0 || value != 0 {
                    p.itimers.append(IntervalTimer(which: Int32(which), intervalMicroseconds: interval, valueMicroseconds: value))
                }
            }
            let knobWords = try tracee.read(knobsAt, count: 48).words
            // The clocks as the process reads them (in its time namespace, if it has one).
            if results[first + 9] > 0 { p.sessionKeyring = Int32(truncatingIfNeeded: results[first + 9]) }
            if results[first + 7] == 0 && results[first + 8] == 0 {
                p.clocks = [knobWords[2] * 1_000_000_000 + knobWords[3], knobWords[4] * 1_000_000_000 + knobWords[5]]
            }
            p.knobs = ProcessKnobs(
                oomScoreAdj: Int32(((try? Paths.readText("/proc/\(pid)/oom_score_adj")) ?? "0").trimming("\n")) ?? 0,
                parentDeathSignal: Int32(truncatingIfNeeded: knobWords[0]), childSubreaper: knobWords[1] & 0xffff_ffff != 0,
                thpDisabled: results[first + 2] > 0, timerSlackNanoseconds: UInt64(max(results[first + 3], 0)),
                dumpable: Int32(truncatingIfNeeded: max(results[first + 4], 0)))
            if results[first + 6] > 0 { p.knobs?.mdwe = UInt32(truncatingIfNeeded: results[first + 6]) }
            if results[first + 10] > 0 { p.knobs?.memoryMerge = true }
            p.knobs?.lockFuture = lockFuture
            if let text = try? Paths.readText("/proc/\(pid)/coredump_filter"), let filter = UInt32(text.trimming("\n"), radix: 16), filter != 0x33 {
                p.knobs?.coredumpFilter = filter
            }
            // A UTS namespace of its own: its names, as uname tells the process.
            if results[first + 5] == 0, Checkpointer.ownNamespace(pid, "uts") {
                let u = try tracee.read(knobsAt + 64, count: 6 * 65)
                func field(_ n: Int) -> String { String(decoding: u[n * 65..<(n + 1) * 65].prefix { $0 != 0 }, as: UTF8.self) }
                p.uts = UTSNames(hostname: field(1), domainname: field(5))
            }
            p.mm.brk = UInt64(bitPattern: results[67])
            if results[68] == 0 { p.xcompPermissions = w[275] }
            for i in p.posixTimers.indices {
                let b = 288 + i * 4
                p.posixTimers[i].intervalNanoseconds = w[b] * 1_000_000_000 + w[b + 1]
                p.posixTimers[i].valueNanoseconds = w[b + 2] * 1_000_000_000 + w[b + 3]
            }
            // Per thread: clear_child_tid, the alternate signal stack, securebits and the NUMA
            // memory policy (mode at out+128, nodes from out+136).
            let nodeWords = NUMAPolicy.possibleNodeWords
            for i in p.threads.indices {
                let tid = p.threads[i].tid
                let capture = { (s: RemoteSyscalls) throws -> (UInt64, AltStack, Int64, NUMAPolicy?) in
                    var calls: [(SyscallNumber, [UInt64])] = [(.prctl, [40 /* PR_GET_TID_ADDRESS */, out]), (.sigaltstack, [0, out + 64]),
                                                              (.prctl, [27 /* PR_GET_SECUREBITS */])]
                    if let words = nodeWords { calls.append((.getMempolicy, [out + 128, out + 136, UInt64(words * 64), 0, 0])) }
                    let r = try s.batch(calls, code: scratch, table: table)
                    if let bad = r.prefix(3).firstIndex(where: { $0 < 0 }) {
                        let call = ["remote prctl(PR_GET_TID_ADDRESS)", "remote sigaltstack", "remote prctl(PR_GET_SECUREBITS)"][bad]
                        throw WBError.system(call: call, errno: Int32(-r[bad]), what: "reading the state of thread \(tid)")
                    }
                    let v = try tracee.read(out, count: 136 + (nodeWords ?? 0) * 8).words
                    var policy: NUMAPolicy?
                    if let words = nodeWords, r[3] == 0, case let mode = Int32(truncatingIfNeeded: v[16]), mode != 0 {
                        policy = NUMAPolicy(mode: mode, mask: Array(v[17..<17 + words]))
                    }
                    return (v[0], AltStack(base: v[8], size: v[10], flags: Int32(truncatingIfNeeded: v[9])), r[2], policy)
                }
                let (clearChildTid, altStack, securebits, policy) = tid == pid ? try capture(leader) : try tracee.withSyscalls(in: tid, capture)
                p.threads[i].clearChildTid = clearChildTid
                p.threads[i].altStack = altStack
                p.threads[i].security?.securebits = UInt32(truncatingIfNeeded: securebits)
                p.threads[i].numaPolicy = policy
            }
            p.sysvSegments = try captureSegments(maps, leader: leader, code: scratch, table: table, out: out)
        }

        let status = try ProcFS.status(pid)
        let stat = try ProcFS.stat(pid)
        p.loginuid = (try? Paths.readText("/proc/\(pid)/loginuid")).flatMap { UInt32($0.trimming("\n")) }
        p.cgroups = ProcFS.cgroups(pid)
        Checkpointer.takeIdentity(&p, from: stat)
        p.umask = UInt32(status["Umask"] ?? "22", radix: 8) ?? 0o022
        func ids(_ key: String) -> [UInt32] { (status[key] ?? "").split(whereSeparator: { $0 == "\t" || $0 == " " }).compactMap { UInt32($0) } }
        p.credentials = Credentials(uid: ids("Uid"), gid: ids("Gid"), groups: ids("Groups"))
        func field(_ n: Int) -> UInt64 { UInt64(stat[n] ?? "0") ?? 0 }
        p.mm.startCode = field(26); p.mm.endCode = field(27); p.mm.startStack = field(28)
        p.mm.startData = field(45); p.mm.endData = field(46); p.mm.startBrk = field(47)
        p.mm.argStart = field(48); p.mm.argEnd = field(49); p.mm.envStart = field(50); p.mm.envEnd = field(51)
        p.mm.auxv = try ProcFS.auxv(pid)
        p.cmdline = ProcFS.strings(pid, "cmdline")
        if jobStopped == true { p.stopped = true }
        p.portable = ProcFS.strings(pid, "environ").contains(CPUCompatibility.portableMarker)
        p.exe = ((try? Paths.readLink("/proc/\(pid)/exe")) ?? "").deletedStripped.path
        p.cwd = try Paths.readLink("/proc/\(pid)/cwd")
        if p.cwd.deletedStripped.deleted, let st = try? Paths.stat("/proc/\(pid)/cwd"), st.isDirectory {
            p.deletedCwd = Checkpointer.deletedDirectory(st)
        }
        // A controlling terminal that is a pair of the checkpoint's own comes back as one.
        if let n = PseudoTerminals.ptsIndex(ttyNr: Int(stat[7] ?? "0") ?? 0), (tree?.ptys ?? ownPtys).contains(n) {
            p.controllingPty = n
            if let group = Int32(stat[8] ?? ""), group > 0 { p.foregroundGroup = group }
        }
        // Namespaces of its own that restore does not make again are told, here and at restore.
        let parent = Int32(stat[4] ?? "") ?? 0
        for ns in ["mnt", "cgroup"] where Checkpointer.ownNamespace(pid, ns) {
            // Told once for a tree: by the first process in it.
            let fromParent = tree?.members.contains(parent) == true && !Checkpointer.ownNamespace(pid, ns, than: parent)
            if !fromParent, let text = ProcessState.namespaceNote(ns) {
                notes.append(text)
                p.ownNamespaces = (p.ownNamespaces ?? []) + [ns]
            }
        }
        if tree == nil {
            // Sharing with a process that is not checkpointed cannot come back: noted.
            for other in [p.ppid] + ProcFS.children(pid) where other > 0 {
                for (what, same) in [("file descriptor table (CLONE_FILES)", SharedFiles.shareFDTable),
                                     ("working directory, root and umask (CLONE_FS)", SharedFiles.shareFSInfo)] where same(pid, other) {
                    notes.append("the process shares its \(what) with pid \(other), which is not checkpointed (use --tree for a child): restored, it has its own")
                }
            }
        }
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

extension Checkpointer {
    /// The System V shared memory segments the process has attached, described by
    /// shmctl(IPC_STAT) run inside it (so in its own IPC namespace). Nil when there are none.
    func captureSegments(_ maps: [ProcFS.MapsEntry], leader: RemoteSyscalls, code: UInt64, table: UInt64,
                         out: UInt64) throws -> [SysVSegment]? {
        var ids: [Int32] = []
        var names: [Int32: String] = [:]
        for e in maps where Checkpointer.isSegment(e) {
            let id = Int32(truncatingIfNeeded: e.inode)
            if names[id] == nil { ids.append(id); names[id] = e.path }
        }
        if ids.isEmpty { return nil }
        var segments: [SysVSegment] = []
        let size = 112   // struct shmid64_ds
        for chunk in stride(from: 0, to: ids.count, by: 200) {
            let part = Array(ids[chunk..<min(ids.count, chunk + 200)])
            let calls: [(SyscallNumber, [UInt64])] = part.enumerated().map {
                (.shmctl, [UInt64(UInt32(bitPattern: $0.element)), 2 /* IPC_STAT */, out + UInt64($0.offset * size)])
            }
            let results = try leader.batch(calls, code: code, table: table)
            if let bad = results.firstIndex(where: { $0 < 0 }) {
                throw WBError.system(call: "remote shmctl(IPC_STAT)", errno: Int32(-results[bad]),
                                     what: "describing System V segment \(part[bad]) of pid \(pid)")
            }
            let bytes = try leader.tracee.read(out, count: part.count * size)
            for (i, id) in part.enumerated() {
                func u32(_ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[i * size + at + $1]) << (8 * UInt32($1)) } }
                let mode = u32(20)
                var key = Int32(bitPattern: u32(0))
                let removed = mode & 0o1000 != 0
                // Marked for removal, a segment loses its key; its name (/SYSV%08x) keeps it.
                if removed, let name = names[id], let k = UInt32(name.dropFirst(5).prefix(8), radix: 16) { key = Int32(bitPattern: k) }
                let segsz = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[i * size + 48 + $1]) << (8 * UInt64($1)) }
                segments.append(SysVSegment(id: id, key: key, size: segsz, mode: mode & 0o777, uid: u32(4), gid: u32(8),
                                            removed: removed, locked: mode & 0o2000 != 0))
            }
        }
        return segments
    }

    /// An attached System V shared memory segment in /proc/PID/maps (its inode is the id).
    static func isSegment(_ e: ProcFS.MapsEntry) -> Bool { e.shared && e.path.hasPrefix("/SYSV") }
}

extension [UInt8] {
    /// Little-endian 64-bit words.
    var words: [UInt64] {
        stride(from: 0, to: count - 7, by: 8).map { i in
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(self[i + $1]) << (8 * UInt64($1)) }
        }
    }
}

extension Checkpointer {
    /// A thread's capability sets, no_new_privs and seccomp filters (securebits are read
    /// inside the process, with the other per-thread calls).
    func security(of tid: Int32, _ tracee: Tracee) throws -> ThreadSecurity {
        let status = try ProcFS.status(pid, thread: tid)
        let sets = ProcFS.capabilities(status)
        let mode = Int32(status["Seccomp"] ?? "0") ?? 0
        let count = Int(status["Seccomp_filters"] ?? "0") ?? 0
        let filters = mode == 2 ? try tracee.seccompFilters(tid, count: count) : []
        return ThreadSecurity(capabilities: sets, securebits: 0, noNewPrivs: status["NoNewPrivs"] == "1",
                              seccompMode: mode, seccompFilters: filters)
    }
}

extension Checkpointer {
    /// Name, parent, process group and session from /proc/PID/stat fields.
    static func takeIdentity(_ p: inout ProcessState, from stat: [Int: String]) {
        p.comm = stat[2] ?? ""
        p.ppid = Int32(stat[4] ?? "0") ?? 0
        p.pgid = Int32(stat[5] ?? "0") ?? 0
        p.sid = Int32(stat[6] ?? "0") ?? 0
    }

    /// Whether `pid` is in another namespace of kind `ns` (mnt, uts, time, ...) than `other`
    /// (wb itself by default).
    static func ownNamespace(_ pid: Int32, _ ns: String, than other: Int32 = getpid()) -> Bool {
        guard let mine = try? Paths.readLink("/proc/\(other)/ns/\(ns)"), let theirs = try? Paths.readLink("/proc/\(pid)/ns/\(ns)") else { return false }
        return mine != theirs
    }
}
