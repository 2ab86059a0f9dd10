import Foundation
import Glibc
import WBTrace

/// Process-wide state, then the threads: each re-created with clone3 at its original tid,
/// given its kernel registrations, queued signals, signal mask, XSAVE area and registers.
/// The leader's registers are the very last thing written.
struct ThreadBuilder {
    let restorer: Restorer
    let tracee: Tracee
    let leader: RemoteSyscalls
    let scratch: Scratch
    let files: ResolvedFiles
    let process: ProcessState
    let access: FileAccess

    func build() throws {
        try FDBuilder.takeLocks(of: process, leader: leader, scratch: scratch)
        try processState()
        let leaderImage = process.threads.first { $0.tid == process.pid }!
        var placed: [(ThreadState, Int32)] = []
        for t in process.threads where t.tid != process.pid {
            placed.append((t, try clone(t)))
        }
        // Once every thread exists: an fd's signal may go to one of them.
        try FDBuilder.setSignalOwners(of: process, in: restorer, leader: leader, scratch: scratch)
        for (t, tid) in placed {
            try setUp(t, in: try tracee.ownedSyscalls(in: tid))
        }
        try setUp(leaderImage, in: leader)
        try queueSharedSignals()
        try timers()
        try posixTimers()
        try knobs()
        // Identity and confinement last: they may take away what the steps above need.
        let security = SecurityBuilder(restorer: restorer, tracee: tracee, scratch: scratch, process: process)
        var threads: [(ThreadState, RemoteSyscalls)] = []
        for (t, tid) in placed { threads.append((t, try tracee.ownedSyscalls(in: tid))) }
        try security.build(threads + [(leaderImage, leader)])
        try security.audit(placed + [(leaderImage, tracee.pid)])
        for (t, tid) in placed + [(leaderImage, tracee.pid)] { scheduling(t, tid) }
        for (t, tid) in placed { try finalRegisters(t, tid) }
        // Memory-deny-write-execute once nothing more is mapped or protected.
        if let mdwe = process.knobs?.mdwe, mdwe != 0 {
            try leader.call(.prctl, 65 /* PR_SET_MDWE */, UInt64(mdwe), 0, 0, 0, what: "denying memory both written and executed (MDWE)")
        }
        // The work area goes; the leader's registers are set after it. A SIGTRAP the process
        // ignores is set back to ignored first (wb's single steps reset it), and the last call
        // makes no single step.
        if process.sigactions.contains(where: { $0.signal == SIGTRAP && $0.handler == 1 }) {
            try leader.keepSIGTRAPIgnored(scratch: scratch.base + 4096)
        }
        let unmapped = try leader.rawWithoutTrap(.munmap, scratch.base, scratch.size)
        if unmapped != 0 {
            restorer.note("the process's seccomp filters refuse munmap: wb's work area at \(hex(scratch.base)) stays mapped", about: process)
        }
        try finalRegisters(leaderImage, tracee.pid)
        // Syscall user dispatch last: once it is on, a system call wb made could raise SIGSYS.
        for (t, tid) in placed + [(leaderImage, tracee.pid)] {
            if let d = t.syscallDispatch, !Tracee.setDispatchConfig(tid, d) {
                restorer.note("thread \(t.tid) had syscall user dispatch on (PR_SET_SYSCALL_USER_DISPATCH, as Wine uses); setting it here failed (it needs Linux 6.11): its system calls run directly", about: process)
            }
        }
    }

    private func processState() throws {
        let p = process
        scratch.reset()
        // A removed working directory was made and entered with the fds (FDBuilder).
        let cwd = try scratch.put(string: p.cwd)
        let changed = p.deletedCwd != nil ? 0 : try access.asProcess(path: p.cwd) { try leader.raw(.chdir, cwd) }
        if changed == -Int64(EACCES) || changed == -Int64(EPERM) {
            throw WBError.refused("\(p.cwd): the restored process may not enter its working directory here (\(WBError.errnoText(Int32(-changed))))")
        }
        if changed != 0 {
            restorer.note("the working directory \(p.cwd) does not exist here; it is / instead", about: process)
            _ = try leader.raw(.chdir, try scratch.put(string: "/"))
        }
        try loginuid()
        try leader.call(.umask, UInt64(p.umask), what: "setting the umask")
        if p.personality != 0 { _ = try leader.raw(.personality, UInt64(p.personality)) }
        for l in p.rlimits {
            do {
                try ResourceLimits.set(pid: tracee.pid, resource: l.resource, soft: l.soft, hard: l.hard)
            } catch {
                // Raising a hard limit needs CAP_SYS_RESOURCE: keep this host's.
                if let here = try? ResourceLimits.get(pid: tracee.pid, resource: l.resource) {
                    try? ResourceLimits.set(pid: tracee.pid, resource: l.resource, soft: min(l.soft, here.hard), hard: here.hard)
                    restorer.note("resource limit \(l.name) kept at this host's hard limit \(here.hard) (the image had \(l.hard))", about: process)
                }
            }
        }
        for a in p.sigactions where a.signal != SIGKILL && a.signal != SIGSTOP {
            scratch.reset()
            let act = try scratch.put(words: [a.handler, a.flags, a.restorer, a.mask])
            try leader.call(.rtSigaction, UInt64(a.signal), act, 0, 8, what: "setting the action of signal \(a.signal)")
        }
        if p.xcompPermissions & (1 << 18) != 0 {
            try leader.call(.archPrctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18, what: "requesting AMX state permission")
        }
        try memoryLayout()
        try changeRoot()
    }

    /// Subreaper, transparent huge pages and timer slack (prctl, in the process); the
    /// OOM adjustment (/proc, from wb). Dumpable and the parent-death signal come after the
    /// credentials, which clear them (SecurityBuilder).
    private func knobs() throws {
        guard let k = process.knobs else { return }
        if k.childSubreaper { try leader.call(.prctl, 36 /* PR_SET_CHILD_SUBREAPER */, 1, what: "making the process a child subreaper") }
        if k.thpDisabled { try leader.call(.prctl, 41 /* PR_SET_THP_DISABLE */, 1, 0, 0, 0, what: "turning transparent huge pages off") }
        if let flags = k.lockFuture {
            // Memory mapped from now on is locked again (wb's own areas are mapped already).
            let r = try leader.raw(.mlockall, UInt64(flags))
            if r < 0 {
                restorer.note("memory the process maps was locked (mlockall MCL_FUTURE); setting it here failed (\(WBError.errnoText(Int32(-r)))): new mappings are not locked", about: process)
            }
        }
        if k.memoryMerge == true {
            let r = try leader.raw(.prctl, 67 /* PR_SET_MEMORY_MERGE */, 1, 0, 0, 0)
            if r < 0 {
                restorer.note("KSM merged all the process's memory (PR_SET_MEMORY_MERGE); setting it here failed (\(WBError.errnoText(Int32(-r))): it needs CAP_SYS_RESOURCE and a kernel with KSM): the mappings it had merge as they did, new ones do not", about: process)
            }
        }
        if k.timerSlackNanoseconds > 0 {
            _ = try leader.raw(.prctl, 29 /* PR_SET_TIMERSLACK */, k.timerSlackNanoseconds)
        }
        let filter = k.coredumpFilter ?? 0x33
        if (try? Paths.readText("/proc/\(tracee.pid)/coredump_filter")).flatMap({ UInt32($0.trimming("\n"), radix: 16) }) != filter {
            do {
                try Paths.writeText("/proc/\(tracee.pid)/coredump_filter", "0x\(String(filter, radix: 16))\n")
            } catch {
                restorer.note("the process's coredump_filter was 0x\(String(filter, radix: 16)); setting it here failed (\(error))", about: process)
            }
        }
        let path = "/proc/\(tracee.pid)/oom_score_adj"
        let here = Int32(((try? Paths.readText(path)) ?? "0").trimming("\n")) ?? 0
        if here != k.oomScoreAdj {
            do {
                try Paths.writeText(path, "\(k.oomScoreAdj)\n")
            } catch {
                restorer.note("the process's oom_score_adj was \(k.oomScoreAdj); it is \(here) here (lowering it needs CAP_SYS_RESOURCE)", about: process)
            }
        }
    }

    /// Policy, real-time priority and nice value of a thread, set from wb.
    private func scheduling(_ t: ThreadState, _ tid: Int32) {
        guard let sch = t.scheduling else { return }
        var param = sched_param(sched_priority: sch.priority)
        let current = sched_getscheduler(tid)
        if current != sch.policy || sch.priority != 0 {
            if sched_setscheduler(tid, sch.policy, &param) != 0 {
                restorer.note("thread \(t.tid) had scheduling policy \(sch.policy) priority \(sch.priority); setting it here failed (\(WBError.errnoText(errno)))", about: process)
            }
        }
        if sch.policy != 6 && getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid)) != sch.nice {
            if setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), sch.nice) != 0 {
                restorer.note("thread \(t.tid) had nice \(sch.nice); setting it here failed (\(WBError.errnoText(errno)))", about: process)
            }
        }
        // A thread bound to some CPUs is bound to those of them this machine has.
        if let list = sch.cpus, let want = CPUAffinity.parse(list) {
            let here = want.intersection(CPUAffinity.online())
            if here.isEmpty {
                restorer.note("thread \(t.tid) was bound to CPUs \(list), none of which this machine has; it runs on any", about: process)
            } else if let e = CPUAffinity.set(tid, here) {
                restorer.note("thread \(t.tid) was bound to CPUs \(list); binding it here failed (\(WBError.errnoText(e)))", about: process)
            } else if here != want {
                restorer.note("thread \(t.tid) was bound to CPUs \(list); this machine has only \(CPUAffinity.format(here)) of them, to which it is bound", about: process)
            } else if CPUAffinity.get(tid) != want {
                restorer.note("thread \(t.tid) was bound to CPUs \(list); here it is bound to \(CPUAffinity.get(tid).map(CPUAffinity.format) ?? "?")", about: process)
            }
        }
        if let io = sch.ioPriority {
            if let e = CPUAffinity.setIOPriority(tid, io) {
                restorer.note("thread \(t.tid) had I/O priority class \(io >> 13) level \(io & 0x1fff); setting it here failed (\(WBError.errnoText(e)))", about: process)
            } else if CPUAffinity.ioPriority(tid) != io {
                restorer.note("thread \(t.tid) had I/O priority class \(io >> 13) level \(io & 0x1fff); here it has \(CPUAffinity.ioPriority(tid) ?? -1)", about: process)
            }
        }
    }

    /// The root directory (chroot), after everything that opens files by this host's paths.
    private func changeRoot() throws {
        let p = process
        guard p.root != "/" else { return }
        guard geteuid() == 0 else {
            restorer.note("the process had root directory \(p.root); it is / here (chroot needs root)", about: process)
            return
        }
        scratch.reset()
        let dir = try scratch.put(string: p.root)
        let r = try access.asProcess(path: p.root) { try leader.raw(.chroot, dir) }
        if r != 0 {
            throw WBError.system(call: "remote chroot(\(p.root))", errno: Int32(-r), what: "giving the process its root directory")
        }
    }

    /// The audit login uid: the kernel lets only the process itself set it.
    private func loginuid() throws {
        guard let want = process.loginuid,
              let here = (try? Paths.readText("/proc/\(tracee.pid)/loginuid")).flatMap({ UInt32($0.trimming("\n")) }), here != want else { return }
        scratch.reset()
        let path = try scratch.put(string: "/proc/self/loginuid")
        let text = try scratch.put(Array("\(want)".utf8))
        let fd = try leader.raw(.openat, UInt64(bitPattern: -100), path, UInt64(O_WRONLY | O_CLOEXEC), 0)
        var r = fd
        if fd >= 0 {
            r = try leader.raw(.write, UInt64(fd), text, UInt64("\(want)".utf8.count))
            _ = try leader.raw(.close, UInt64(fd))
        }
        if r < 0 {
            restorer.note("the process's login uid was \(want == UInt32.max ? "unset" : "\(want)"); this host kept it at \(here == UInt32.max ? "unset" : "\(here)") (\(WBError.errnoText(Int32(-r))))", about: process)
        }
    }

    /// prctl(PR_SET_MM, PR_SET_MM_MAP): code/data/brk/stack/arg/env ranges, auxv and the
    /// /proc/PID/exe link, in one call.
    private func memoryLayout() throws {
        let mm = process.mm
        scratch.reset()
        let auxv = try scratch.put(words: mm.auxv)
        var exeFD: Int32 = -1
        if let exe = files.exes[process.pid] ?? (process.pid == restorer.image.process.pid ? files.exe : nil) {
            let name = try scratch.put(string: exe)
            let r = try access.asProcess(path: exe) { try leader.raw(.openat, UInt64(bitPattern: -100), name, UInt64(O_RDONLY | O_CLOEXEC), 0) }
            if r >= 0 { exeFD = Int32(r) }
        }
        var words = [mm.startCode, mm.endCode, mm.startData, mm.endData, mm.startBrk, mm.brk, mm.startStack,
                     mm.argStart, mm.argEnd, mm.envStart, mm.envEnd, auxv]
        words.append(UInt64(mm.auxv.count * 8) | UInt64(UInt32(bitPattern: exeFD)) << 32)
        let map = try scratch.put(words: words)
        try leader.call(.prctl, 35 /* PR_SET_MM */, 14 /* PR_SET_MM_MAP */, map, 104,
                        what: "restoring the memory layout (brk, arguments, environment, auxv, exe)")
        if exeFD >= 0 { _ = try leader.raw(.close, UInt64(exeFD)) }
    }

    /// A new thread with the original tid, created by the leader.
    private func clone(_ t: ThreadState) throws -> Int32 {
        scratch.reset()
        let tid = try scratch.put(words: [UInt64(UInt32(bitPattern: t.tid))])
        let flags: UInt64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000   // VM FS FILES SIGHAND THREAD SYSVSEM
        let args = try scratch.put(words: [flags, 0, 0, 0, 0, 0, 0, 0, tid, 1, 0])
        let before = Set(tracee.tids)
        let r = try leader.raw(.clone3, args, 88)
        if r < 0 {
            if r == -Int64(EEXIST) { throw WBError.failed("thread id \(t.tid) is in use here; try --new-pidns") }
            throw WBError.system(call: "remote clone3", errno: Int32(-r), what: "re-creating thread \(t.tid)")
        }
        guard let created = tracee.tids.first(where: { !before.contains($0) }) else {
            throw WBError.failed("thread \(t.tid) was created but never reported to wb")
        }
        return created
    }

    /// The kernel-side registrations of one thread, and its private queued signals.
    private func setUp(_ t: ThreadState, in s: RemoteSyscalls) throws {
        if !t.comm.isEmpty {
            // Only the thread itself may rename itself.
            scratch.reset()
            let name = try scratch.put(Array(t.comm.utf8.prefix(15)) + [0])
            try s.call(.prctl, 15 /* PR_SET_NAME */, name, what: "naming thread \(t.tid)")
        }
        try s.call(.setTidAddress, t.clearChildTid, what: "setting clear_child_tid of thread \(t.tid)")
        if let policy = t.numaPolicy, let words = NUMAPolicy.possibleNodeWords {
            scratch.reset()
            let mask = try scratch.put(words: policy.mask(words: words))
            let r = try s.raw(.setMempolicy, UInt64(UInt32(bitPattern: policy.mode)), mask, UInt64(words * 64))
            if r < 0 {
                restorer.note("thread \(t.tid) had NUMA memory policy \(policy.mode & 0xff) on nodes \(policy.nodes); setting it here failed (\(WBError.errnoText(Int32(-r)))): it has the default", about: process)
            }
        } else if let policy = t.numaPolicy {
            restorer.note("thread \(t.tid) had NUMA memory policy \(policy.mode & 0xff) on nodes \(policy.nodes); this kernel has no NUMA policies", about: process)
        }
        if t.robustList.head != 0 {
            try s.call(.setRobustList, t.robustList.head, t.robustList.length, what: "setting the robust futex list of thread \(t.tid)")
        }
        if let r = t.rseq {
            try s.call(.rseq, r.address, UInt64(r.size), 0, UInt64(r.signature), what: "registering rseq for thread \(t.tid)")
        }
        if t.altStack.flags & 2 == 0 {   // not SS_DISABLE
            scratch.reset()
            let flags = UInt64(UInt32(bitPattern: t.altStack.flags & ~1))   // SS_ONSTACK is not settable
            let ss = try scratch.put(words: [t.altStack.base, flags, t.altStack.size])
            try s.call(.sigaltstack, ss, 0, what: "setting the alternate signal stack of thread \(t.tid)")
        }
        for sig in t.pending {
            scratch.reset()
            let info = try scratch.put([UInt8](sig.siginfo))
            try s.call(.rtTgsigqueueinfo, UInt64(process.pid), UInt64(t.tid), UInt64(sig.signal), info,
                       what: "queueing signal \(sig.signal) for thread \(t.tid)")
        }
    }

    private func queueSharedSignals() throws {
        for sig in process.sharedPending {
            scratch.reset()
            let info = try scratch.put([UInt8](sig.siginfo))
            try leader.call(.rtSigqueueinfo, UInt64(process.pid), UInt64(sig.signal), info, what: "queueing signal \(sig.signal)")
        }
    }

    private func timers() throws {
        for t in process.itimers {
            scratch.reset()
            // A periodic ITIMER_REAL that just expired shows no time left until its SIGALRM
            // (pending, and restored as such) is taken; setting 0 would disarm it.
            let value = t.valueMicroseconds > 0 ? t.valueMicroseconds : t.intervalMicroseconds
            let v = try scratch.put(words: [t.intervalMicroseconds / 1_000_000, t.intervalMicroseconds % 1_000_000,
                                            value / 1_000_000, value % 1_000_000])
            try leader.call(.setitimer, UInt64(t.which), v, 0, what: "setting interval timer \(t.which)")
        }
    }

    /// POSIX timers with their original ids: the kernel takes the wanted id from timer_create's
    /// out-parameter once PR_TIMER_CREATE_RESTORE_IDS is on (Linux 6.16+); on older kernels ids
    /// are handed out in order, so gaps are filled with throwaway timers.
    private func posixTimers() throws {
        let timers = process.posixTimers.sorted { $0.id < $1.id }
        guard !timers.isEmpty else { return }
        let exact = try leader.raw(.prctl, 77 /* PR_TIMER_CREATE_RESTORE_IDS */, 1) == 0
        var fillers: [UInt64] = []
        var next: Int32 = 0
        for t in timers {
            scratch.reset()
            if !exact {
                while next < t.id {
                    let none = try scratch.put(words: [0, UInt64(1) << 32 /* SIGEV_NONE */, 0, 0, 0, 0, 0, 0])
                    let id = try scratch.reserve(8)
                    try leader.call(.timerCreate, UInt64(t.clock), none, id, what: "filling POSIX timer id \(next)")
                    fillers.append(try tracee.readWord(id) & 0xffff_ffff)
                    next += 1
                }
            }
            let notify: UInt64 = t.notify == .none ? 1 : t.notify == .thread ? 4 : 0
            let sev = try scratch.put(words: [t.value, UInt64(UInt32(bitPattern: t.signal)) | notify << 32,
                                              UInt64(UInt32(bitPattern: t.thread ?? 0)), 0, 0, 0, 0, 0])
            let id = try scratch.put(words: [UInt64(UInt32(bitPattern: t.id))])
            try leader.call(.timerCreate, UInt64(t.clock), sev, id, what: "re-creating POSIX timer \(t.id)")
            let got = Int32(truncatingIfNeeded: try tracee.readWord(id))
            guard got == t.id else {
                throw WBError.failed("POSIX timer \(t.id) came back as id \(got); this kernel cannot restore timer ids")
            }
            next = t.id + 1
            if t.valueNanoseconds > 0 {
                let spec = try scratch.put(words: [t.intervalNanoseconds / 1_000_000_000, t.intervalNanoseconds % 1_000_000_000,
                                                   t.valueNanoseconds / 1_000_000_000, t.valueNanoseconds % 1_000_000_000])
                try leader.call(.timerSettime, UInt64(t.id), 0, spec, 0, what: "arming POSIX timer \(t.id)")
            }
        }
        for f in fillers { _ = try leader.raw(.timerDelete, f) }
        if exact { _ = try leader.raw(.prctl, 77, 0) }
    }

    private func finalRegisters(_ t: ThreadState, _ tid: Int32) throws {
        // Sized and masked for this CPU (identical when it is the checkpoint host's).
        let size = try tracee.xstate(tid).count
        try tracee.setXstate(tid, CPUCompatibility.adapt(t.xstate, xcr0: CPUFeatures.host.xcr0, size: size))
        try tracee.setRegisters(tid, InterruptedSyscall.restartRegisters(t.registers))
        try tracee.setSignalMask(tid, t.sigmask)
    }
}
