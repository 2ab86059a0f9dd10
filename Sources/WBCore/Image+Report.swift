import Foundation

/// What `wb inspect` shows: a readable text form and a JSON form (addresses and registers as
/// hex strings, so that tools without 64-bit integers read them exactly).
public struct ImageReport: Encodable {
    public struct Thread: Encodable {
        var tid: Int32, name: String, registers: [String: String], syscall: String?
        var sigmask: String, blocked: [Int32], pending: [Int32], xstateBytes: Int
        var rseq: String?, robustList: String, clearChildTid: String, altStack: String?
        var backtrace: [Frame]?
    }
    public struct MappingRow: Encodable {
        var start: String, end: String, perms: String, offset: String, kind: String, path: String?
        var sizeBytes: UInt64, storedBytes: UInt64, embedded: String?
        /// The kernel's VmFlags for the mapping (as /proc/PID/smaps showed them).
        var vmFlags: [String]
        /// Guard page ranges ([start, end), hex), absent when there are none.
        var guards: [[String]]?
    }
    public struct FDRow: Encodable {
        var fd: Int32, kind: String, path: String, flags: String, offset: UInt64, closeOnExec: Bool
        var pipe: UInt64?, note: String?
        var eventfd: EventFDState?, timerfd: TimerFDState?, signalfdSignals: [Int32]?, epoll: [EpollWatch]?
        var messageQueue: MessageQueueRow?
    }
    /// A POSIX message queue: its name, limits and what it holds.
    public struct MessageQueueRow: Encodable {
        var name: String, maxMessages: Int64, messageSize: Int64, mode: String, messages: Int, bytes: Int, deleted: Bool
    }
    public struct SignalRow: Encodable {
        var signal: Int32, name: String, handler: String, flags: String, mask: String
    }
    public struct FileRow: Encodable {
        var hash: String, sizeBytes: UInt64, paths: [String], code: Bool
    }

    var image: String, format: UInt32, createdAt: String, tool: String, imageBytes: UInt64
    var host: HostInfo
    var pid: Int32, ppid: Int32, pgid: Int32, sid: Int32, command: [String], exe: String, cwd: String
    var umask: String, uid: [UInt32], gid: [UInt32]
    var threads: [Thread], mappings: [MappingRow], fds: [FDRow], pipes: [PipeState]
    var signals: [SignalRow], sharedPending: [Int32], itimers: [IntervalTimer], posixTimers: [PosixTimer], rlimits: [ResourceLimit]
    var files: [FileRow], notes: [String]
    var memoryBytes: UInt64
    /// Every process of an image of a tree (the rest of the report is about the root).
    var tree: [TreeRow]?
    /// The System V shared memory segments the process had attached.
    var sysvSegments: [SysVSegment]?
    /// Every socket of every process (ImageReport+Sockets.swift).
    var sockets: [SocketRow] = []
    /// Process settings and surroundings: prctl and /proc knobs, clocks, cgroups, keyring,
    /// namespaces not made again, NUMA policies.
    var settings: SettingsRow

    public struct SettingsRow: Encodable {
        var knobs: ProcessKnobs?
        var clocks: [UInt64]?
        var cgroups: [String]?
        var sessionKeyring: Int32?
        var ownNamespaces: [String]?
        /// "thread TID: MODE nodes N,M" and "START-END: MODE nodes N" lines.
        var numaPolicies: [String]

        /// The lines of the text report.
        var lines: [String] {
            var out: [String] = []
            if let k = knobs {
                var parts = ["oom_score_adj \(k.oomScoreAdj)", "timer slack \(k.timerSlackNanoseconds) ns", "dumpable \(k.dumpable)"]
                if k.childSubreaper { parts.append("child subreaper") }
                if k.thpDisabled { parts.append("transparent huge pages off") }
                if k.parentDeathSignal != 0 { parts.append("parent-death signal \(SignalNames.name(k.parentDeathSignal))") }
                if let m = k.mdwe { parts.append("memory-deny-write-execute \(m)") }
                if let f = k.coredumpFilter { parts.append("coredump_filter 0x\(String(f, radix: 16))") }
                if k.memoryMerge == true { parts.append("KSM merging of all memory") }
                if let l = k.lockFuture { parts.append(l & 4 != 0 ? "mlockall(MCL_FUTURE|MCL_ONFAULT)" : "mlockall(MCL_FUTURE)") }
                out.append("  " + parts.joined(separator: ", "))
            }
            if let c = clocks, c.count == 2 {
                out.append(String(format: "  CLOCK_MONOTONIC %.3f s, CLOCK_BOOTTIME %.3f s (restored, they go on from these)", Double(c[0]) / 1e9, Double(c[1]) / 1e9))
            }
            if let g = cgroups, !g.isEmpty { out.append("  cgroups " + g.map { $0.hasPrefix(":") ? "cgroup2" + $0 : $0 }.joined(separator: ", ")) }
            if let k = sessionKeyring { out.append("  session keyring \(k)") }
            if let n = ownNamespaces, !n.isEmpty { out.append("  namespaces of its own not made again: \(n.joined(separator: ", "))") }
            for p in numaPolicies { out.append("  NUMA policy of \(p)") }
            return out
        }

        static func policy(_ p: NUMAPolicy) -> String {
            let modes = ["default", "preferred", "bind", "interleave", "local", "preferred many", "weighted interleave"]
            let mode = Int(p.mode & 0x1fff) < modes.count ? modes[Int(p.mode & 0x1fff)] : "mode \(p.mode & 0x1fff)"
            var flags: [String] = []
            if p.mode & (1 << 15) != 0 { flags.append("static") }
            if p.mode & (1 << 14) != 0 { flags.append("relative") }
            if p.mode & (1 << 13) != 0 { flags.append("balancing") }
            return mode + (flags.isEmpty ? "" : " (\(flags.joined(separator: ", ")))") + " nodes \(p.nodes.map(String.init).joined(separator: ","))"
        }
    }

    public struct TreeRow: Encodable {
        var pid: Int32, ppid: Int32, pgid: Int32, sid: Int32, command: [String], threads: Int, memoryBytes: UInt64
        var zombieStatus: Int32?
    }

    /// `backtraces` (by thread id) are shown with each thread when given.
    public init(_ image: Image, backtraces: [Int32: [Frame]] = [:]) {
        let m = image.metadata, p = m.process
        if m.descendants?.isEmpty == false {
            tree = m.processes.map { q in
                TreeRow(pid: q.pid, ppid: q.ppid, pgid: q.pgid, sid: q.sid, command: q.zombieStatus == nil ? q.cmdline : [q.comm],
                        threads: q.threads.count, memoryBytes: q.mappings.reduce(0) { $0 + UInt64($1.storedPageCount) * 4096 },
                        zombieStatus: q.zombieStatus)
            }
        }
        sysvSegments = p.sysvSegments
        sockets = ImageReport.socketRows(m)
        settings = SettingsRow(knobs: p.knobs, clocks: p.clocks, cgroups: p.cgroups, sessionKeyring: p.sessionKeyring,
                               ownNamespaces: p.ownNamespaces,
                               numaPolicies: p.threads.compactMap { t in t.numaPolicy.map { "thread \(t.tid): " + SettingsRow.policy($0) } }
                                   + p.mappings.compactMap { m in m.numaPolicy.map { "\(hex(m.start))-\(hex(m.end)): " + SettingsRow.policy($0) } })
        self.image = image.path; format = image.header.version; createdAt = m.createdAt; tool = m.tool
        imageBytes = image.fileSize; host = m.host
        pid = p.pid; ppid = p.ppid; pgid = p.pgid; sid = p.sid; command = p.cmdline; exe = p.exe; cwd = p.cwd
        umask = String(format: "%04o", p.umask); uid = p.credentials.uid; gid = p.credentials.gid
        threads = p.threads.map { t in
            var regs: [String: String] = [:]
            for (name, value) in t.registers.all { regs[name] = hex(value) }
            return Thread(tid: t.tid, name: t.comm, registers: regs,
                          syscall: t.interruptedSyscall.map { "syscall \($0.number) (\(SyscallNames.name($0.number))), restarts (\($0.restartName))" },
                          sigmask: hex(t.sigmask), blocked: ImageReport.signals(in: t.sigmask),
                          pending: t.pending.map(\.signal), xstateBytes: t.xstate.count,
                          rseq: t.rseq.map { "\(hex($0.address)) size \($0.size) sig \(hex(UInt64($0.signature)))" },
                          robustList: hex(t.robustList.head), clearChildTid: hex(t.clearChildTid),
                          altStack: t.altStack.flags & 2 == 0 ? "\(hex(t.altStack.base)) size \(t.altStack.size)" : nil,
                          backtrace: backtraces[t.tid])
        }
        mappings = p.mappings.map { x in
            MappingRow(start: hex(x.start), end: hex(x.end), perms: x.permissions, offset: hex(x.offset),
                       kind: x.kind.rawValue, path: x.path.map { x.deleted ? "\($0) (deleted)" : $0 } ?? x.anonName.map { "[anon:\($0)]" },
                       sizeBytes: x.size, storedBytes: UInt64(x.storedPageCount) * 4096,
                       embedded: x.file?.content?.description, vmFlags: x.vmFlags,
                       guards: x.guards.map { $0.map { $0.map(hex) } })
        }
        fds = p.fds.map { f in
            FDRow(fd: f.fd, kind: f.kind.rawValue, path: f.deleted == true ? f.path + " (deleted)" : f.path, flags: ImageReport.openFlags(f.flags),
                  offset: f.offset, closeOnExec: f.closeOnExec, pipe: f.pipe, note: f.note,
                  eventfd: f.eventfd, timerfd: f.timerfd, signalfdSignals: f.signalfdMask.map { ImageReport.signals(in: $0) },
                  epoll: f.epoll,
                  messageQueue: f.mqueue.map { q in
                      MessageQueueRow(name: "/" + q.name, maxMessages: q.maxMessages, messageSize: q.messageSize,
                                      mode: String(format: "%03o", q.mode), messages: q.messages.count,
                                      bytes: q.messages.reduce(0) { $0 + $1.bytes.count }, deleted: q.deleted == true)
                  })
        }
        pipes = p.pipes
        signals = p.sigactions.filter { !$0.isDefault }.map { a in
            SignalRow(signal: a.signal, name: SignalNames.name(a.signal),
                      handler: a.handler == 0 ? "SIG_DFL" : a.handler == 1 ? "SIG_IGN" : hex(a.handler),
                      flags: ImageReport.actionFlags(a.flags), mask: hex(a.mask))
        }
        sharedPending = p.sharedPending.map(\.signal)
        itimers = p.itimers; posixTimers = p.posixTimers; rlimits = p.rlimits
        files = m.files.map { FileRow(hash: $0.hash.description, sizeBytes: $0.size, paths: $0.paths, code: $0.code) }
        notes = m.notes
        memoryBytes = p.mappings.reduce(0) { $0 + UInt64($1.storedPageCount) * 4096 }
    }

    /// The report as text, one section after another.
    public var text: String {
        var out: [String] = []
        func size(_ n: UInt64) -> String {
            n >= 1 << 20 ? String(format: "%.1f MiB", Double(n) / 1048576) : n >= 1024 ? String(format: "%.1f KiB", Double(n) / 1024) : "\(n) B"
        }
        out.append("image      \(image) (format \(format), \(size(imageBytes)), written \(createdAt) by \(tool))")
        out.append("host       \(host.hostname), Linux \(host.kernel), \(host.cpu.model)")
        out.append("process    pid \(pid) (parent \(ppid), group \(pgid), session \(sid)), uid \(uid.first ?? 0), umask \(umask)")
        out.append("command    \(command.joined(separator: " "))")
        out.append("exe        \(exe)")
        out.append("cwd        \(cwd)")
        out.append("memory     \(size(memoryBytes)) stored in \(mappings.count) mappings")
        out.append("")
        if let tree {
            out.append("TREE (\(tree.count) processes; what follows is about the root, pid \(pid))")
            for q in tree {
                let what = q.zombieStatus.map { "exited, not reaped (wait status \($0))" } ?? "\(q.threads) thread\(q.threads == 1 ? "" : "s"), \(size(q.memoryBytes))"
                out.append("  \(q.pid) parent \(q.ppid) group \(q.pgid) session \(q.sid): \(q.command.joined(separator: " ")) - \(what)")
            }
            out.append("")
        }
        out.append("THREADS (\(threads.count))")
        for t in threads {
            let r = t.registers
            out.append("  \(t.tid) \(t.name)")
            out.append("    rip \(r["rip"]!)  rsp \(r["rsp"]!)  rbp \(r["rbp"]!)  fs_base \(r["fs_base"]!)")
            out.append("    rax \(r["rax"]!)  rdi \(r["rdi"]!)  rsi \(r["rsi"]!)  rdx \(r["rdx"]!)  orig_rax \(r["orig_rax"]!)")
            if let s = t.syscall { out.append("    in \(s)") }
            out.append("    blocked \(t.blocked.isEmpty ? "none" : t.blocked.map { SignalNames.name($0) }.joined(separator: " "))"
                       + (t.pending.isEmpty ? "" : "; pending \(t.pending.map { SignalNames.name($0) }.joined(separator: " "))"))
            out.append("    xsave \(t.xstateBytes) bytes; rseq \(t.rseq ?? "none"); robust list \(t.robustList); clear_child_tid \(t.clearChildTid)"
                       + (t.altStack.map { "; altstack \($0)" } ?? ""))
            for (i, f) in (t.backtrace ?? []).enumerated() { out.append("    #\(i) \(f.description)") }
        }
        out.append("")
        out.append("MAPPINGS (\(mappings.count))")
        for m in mappings {
            let stored = m.storedBytes > 0 ? " stored \(size(m.storedBytes))" : ""
            var guarded = ""
            if let g = m.guards, !g.isEmpty {
                let shown = g.prefix(4).map { $0.joined(separator: "-") }.joined(separator: " ")
                guarded = " guard pages \(shown)\(g.count > 4 ? " and \(g.count - 4) more ranges" : "")"
            }
            out.append("  \(m.start)-\(m.end) \(m.perms) \(m.kind.padding(toLength: 15, withPad: " ", startingAt: 0)) \(m.path ?? "")\(stored)\(guarded)")
        }
        if let segments = sysvSegments, !segments.isEmpty {
            out.append("")
            out.append("SYSTEM V SHARED MEMORY (\(segments.count))")
            for g in segments {
                var line = "  id \(g.id) key \(String(format: "0x%08x", UInt32(bitPattern: g.key))) \(size(g.size)) mode \(String(format: "%03o", g.mode)) uid \(g.uid) gid \(g.gid)"
                if g.removed { line += ", marked for removal" }
                if g.locked { line += ", locked" }
                out.append(line)
            }
        }
        out.append("")
        out.append("FILE DESCRIPTORS (\(fds.count))")
        for f in fds {
            var line = "  \(f.fd) \(f.kind) \(f.path) [\(f.flags)\(f.closeOnExec ? ",cloexec" : "")]"
            if f.kind == "file" || f.kind == "deletedFile" { line += " offset \(f.offset)" }
            if let id = f.pipe, let pipe = pipes.first(where: { $0.id == id }) {
                line += " pipe \(id), \(pipe.buffered.count) bytes buffered\(pipe.external ? ", other end outside" : "")"
            }
            if let e = f.eventfd { line += " count \(e.count)\(e.semaphore ? " semaphore" : "")" }
            if let t = f.timerfd {
                line += t.valueNanoseconds == 0 && t.intervalNanoseconds == 0 ? " disarmed" : " clock \(t.clock), next in \(t.valueNanoseconds) ns, every \(t.intervalNanoseconds) ns"
                if t.ticks > 0 { line += ", \(t.ticks) unread" }
            }
            if let sigs = f.signalfdSignals { line += " reads \(sigs.map { SignalNames.name($0) }.joined(separator: " "))" }
            if let w = f.epoll { line += " watches " + w.map { "fd \($0.fd) (events 0x\(String($0.events, radix: 16)))" }.joined(separator: ", ") }
            if let q = f.messageQueue {
                line += " queue \(q.name)\(q.deleted ? " (removed)" : ""), mode \(q.mode), up to \(q.maxMessages) messages of \(q.messageSize) bytes, \(q.messages) queued (\(q.bytes) bytes)"
            }
            if let n = f.note { line += " (\(n))" }
            out.append(line)
        }
        out += socketLines()
        out.append("")
        out.append("SIGNALS")
        for s in signals { out.append("  \(s.name) handler \(s.handler) flags \(s.flags)") }
        if signals.isEmpty { out.append("  all default") }
        if !sharedPending.isEmpty { out.append("  pending for the process: \(sharedPending.map { SignalNames.name($0) }.joined(separator: " "))") }
        for t in itimers {
            let which = ["ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"][Int(t.which)]
            out.append("  \(which) every \(t.intervalMicroseconds) us, next in \(t.valueMicroseconds) us")
        }
        for t in posixTimers {
            let how = t.notify == .none ? "no notification" : "\(SignalNames.name(t.signal)) value \(t.value)" + (t.thread.map { " to thread \($0)" } ?? "")
            out.append("  POSIX timer \(t.id) clock \(t.clock): \(how), " + (t.valueNanoseconds == 0 ? "disarmed" : "next in \(t.valueNanoseconds) ns, every \(t.intervalNanoseconds) ns"))
        }
        let settingLines = settings.lines
        if !settingLines.isEmpty {
            out.append("")
            out.append("SETTINGS")
            out += settingLines
        }
        out.append("")
        out.append("EMBEDDED FILES (\(files.count))")
        for f in files { out.append("  \(f.hash) \(size(f.sizeBytes).padding(toLength: 10, withPad: " ", startingAt: 0)) \(f.paths.joined(separator: ", "))") }
        if !notes.isEmpty {
            out.append("")
            out.append("NOTES")
            for n in notes { out.append("  \(n)") }
        }
        return out.joined(separator: "\n")
    }

    static func signals(in mask: UInt64) -> [Int32] { (1...64).filter { mask & (1 << UInt64($0 - 1)) != 0 }.map(Int32.init) }

    static func openFlags(_ f: Int32) -> String {
        var parts = [["O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE"][Int(f & 3)]]
        let named: [(Int32, String)] = [(0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o200000, "O_DIRECTORY"),
                                        (0o4010000, "O_SYNC"), (0o10000000, "O_PATH"), (0o40000, "O_DIRECT")]
        for (bit, name) in named where f & bit == bit { parts.append(name) }
        return parts.joined(separator: ",")
    }

    static func actionFlags(_ f: UInt64) -> String {
        let named: [(UInt64, String)] = [(0x10000000, "SA_RESTART"), (0x4, "SA_SIGINFO"), (0x8000000, "SA_ONSTACK"),
                                         (0x40000000, "SA_NODEFER"), (0x80000000, "SA_RESETHAND"), (0x04000000, "SA_RESTORER"),
                                         (0x1, "SA_NOCLDSTOP"), (0x2, "SA_NOCLDWAIT")]
        let parts = named.filter { f & $0.0 != 0 }.map(\.1)
        return parts.isEmpty ? "0" : parts.joined(separator: "|")
    }
}

public enum SignalNames {
    static let names = ["HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
                        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
                        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS"]
    public static func name(_ s: Int32) -> String {
        if s >= 1 && s <= 31 { return "SIG" + names[Int(s) - 1] }
        if s >= 34 && s <= 64 { return s == 34 ? "SIGRTMIN" : "SIGRTMIN+\(s - 34)" }
        return "signal \(s)"
    }
}

public enum SyscallNames {
    static let names: [Int64: String] = [0: "read", 1: "write", 7: "poll", 23: "select", 34: "pause", 35: "nanosleep",
                                         61: "wait4", 130: "rt_sigsuspend", 202: "futex", 230: "clock_nanosleep",
                                         232: "epoll_wait", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait",
                                         43: "accept", 288: "accept4", 45: "recvfrom", 47: "recvmsg", 44: "sendto",
                                         128: "rt_sigtimedwait", 17: "pread64", 19: "readv", 219: "restart_syscall"]
    public static func name(_ nr: Int64) -> String { names[nr] ?? "#\(nr)" }
}
