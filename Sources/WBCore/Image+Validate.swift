import Foundation

/// The trust boundary: an image is input from someone else (it travels from a cluster to a
/// laptop and is restored there, often by root), so every value the metadata holds is checked
/// here, once, where it is decoded, before any other module sees it. After `validate` passes,
/// restore and inspect code may convert and add image values without trapping: every integer
/// is in range for its use, every table reference is in bounds, every offset stays inside the
/// file it names, and every path is well formed (paths relative to the image's directory stay
/// beneath it).
struct MetadataValidator {
    let path: String
    let metadata: ImageMetadata
    /// Bytes in the PAGE and FILE sections.
    let pageBytes: UInt64
    let fileBytes: UInt64

    /// Linux limits the values are checked against.
    static let maxPid: Int32 = 4_194_304                 // PID_MAX_LIMIT
    static let maxFD: Int32 = 1 << 20                   // the default fs.nr_open
    static let maxSignal: Int32 = 64
    static let userSpaceEnd: UInt64 = 0x0000_8000_0000_0000
    static let vsyscallStart: UInt64 = 0xFFFF_FFFF_FF60_0000
    static let maxPath = 4096                          // PATH_MAX
    static let maxGroups = 65_536                      // NGROUPS_MAX
    static let maxClock: Int32 = 11                    // CLOCK_TAI
    static let maxXstate = 1 << 20
    static let maxSemaphores = 32_000                  // SEMMSL: the most semget makes in a new IPC namespace
    static let maxSemaphoreValue: UInt16 = 32_767      // SEMVMX
    static let maxQueueBytes = UInt64(Int32.max)       // msg_qbytes and msgmnb are ints
    static let maxMessages = 1 << 20

    func bad(_ problem: String) -> WBError { .badImage(path: path, problem: "invalid metadata: \(problem)") }

    func validate() throws {
        guard metadata.schema >= 1, metadata.schema <= ImageMetadata.currentSchema else {
            throw bad("schema \(metadata.schema) is not one this wb reads (it reads \(ImageMetadata.currentSchema))")
        }
        try sourcesAndFiles()
        try networkLock()
        var pids = Set<Int32>(), tids = Set<Int32>()
        for (i, p) in metadata.processes.enumerated() {
            let at = i == 0 ? "process" : "descendants[\(i - 1)]"
            guard pids.insert(p.pid).inserted else { throw bad("\(at): pid \(p.pid) appears twice") }
            try process(p, at: at, tids: &tids)
        }
        for (i, p) in (metadata.descendants ?? []).enumerated() where !pids.contains(p.ppid) {
            throw bad("descendants[\(i)] (pid \(p.pid)): its parent \(p.ppid) is not in the image")
        }
    }

    // MARK: Files beside the image and in it

    private func sourcesAndFiles() throws {
        for (i, s) in (metadata.pageSources ?? []).enumerated() {
            try relativePath(s.path, "pageSources[\(i)].path")
            guard s.length % 4096 == 0, s.length <= UInt64(Int.max) / 2 else {
                throw bad("pageSources[\(i)] (\(s.path)) has a length of \(s.length) bytes, not a whole number of pages")
            }
        }
        for (i, f) in metadata.files.enumerated() {
            let at = "files[\(i)] (\(f.paths.first ?? "?"))"
            for (k, p) in f.paths.enumerated() { try absolutePath(p, "files[\(i)].paths[\(k)]") }
            guard f.size <= UInt64(Int.max) / 2 else { throw bad("\(at) has a size of \(f.size) bytes") }
            if let source = f.source {
                try relativePath(source, "files[\(i)].source")
            } else {
                let (end, overflow) = f.dataOffset.addingReportingOverflow(f.size)
                guard !overflow, end <= fileBytes, f.dataOffset % 4096 == 0 else {
                    throw bad("embedded file \(f.hash) (\(f.paths.first ?? "?")) lies outside the FILE section")
                }
            }
        }
    }

    // MARK: One process

    private func process(_ p: ProcessState, at: String, tids: inout Set<Int32>) throws {
        guard p.pid > 0, p.pid <= Self.maxPid else { throw bad("\(at): pid is \(p.pid)") }
        let at = "\(at) (pid \(p.pid))"
        for (name, v) in [("ppid", p.ppid), ("pgid", p.pgid), ("sid", p.sid)] where v < 0 || v > Self.maxPid {
            throw bad("\(at): \(name) is \(v)")
        }
        try text(p.comm, "\(at).comm", limit: 64)
        if p.zombieStatus != nil { return }
        try absolutePath(p.exe, "\(at).exe", allowEmpty: true)
        try absolutePath(p.cwd, "\(at).cwd")
        if let u = p.uts {
            guard u.hostname.utf8.count <= 64, u.domainname.utf8.count <= 64, !u.hostname.utf8.contains(0), !u.domainname.utf8.contains(0) else {
                throw bad("\(at): host or domain name longer than 64 bytes or holding a NUL byte")
            }
        }
        if let n = p.controllingPty, n < 0 { throw bad("\(at): controlling terminal /dev/pts/\(n)") }
        if let d = p.deletedCwd {
            guard p.cwd.hasSuffix(" (deleted)") else { throw bad("\(at): the working directory \(p.cwd) is said to be removed, and its name does not say so") }
            try deletedDirectory(d, "\(at) working directory")
        }
        try absolutePath(p.root, "\(at).root")
        guard p.umask <= 0o777 else { throw bad("\(at): umask \(String(p.umask, radix: 8))") }
        let c = p.credentials
        guard (3...4).contains(c.uid.count), (3...4).contains(c.gid.count), c.groups.count <= Self.maxGroups else {
            throw bad("\(at): credentials need 3 or 4 user and group ids (it has \(c.uid.count) and \(c.gid.count)) and at most \(Self.maxGroups) groups")
        }
        for l in p.rlimits where !(0..<16).contains(l.resource) {
            throw bad("\(at): resource limit \(l.resource) does not exist")
        }
        guard p.mm.auxv.count % 2 == 0, p.mm.auxv.count <= 1024 else { throw bad("\(at): auxv has \(p.mm.auxv.count) words") }
        for t in p.itimers where !(0...2).contains(t.which) { throw bad("\(at): interval timer \(t.which) does not exist") }
        for t in p.posixTimers {
            guard t.id >= 0, (0...Self.maxClock).contains(t.clock), (0...Self.maxSignal).contains(t.signal) else {
                throw bad("\(at): POSIX timer \(t.id) (clock \(t.clock), signal \(t.signal)) is out of range")
            }
        }
        guard p.sigactions.count <= 64 else { throw bad("\(at): \(p.sigactions.count) signal actions (there are 64 signals)") }
        var signals = Set<Int32>()
        for a in p.sigactions {
            guard (1...Self.maxSignal).contains(a.signal), signals.insert(a.signal).inserted else {
                throw bad("\(at): the action of signal \(a.signal) (signals are 1-64, each once)")
            }
        }
        try pending(p.sharedPending, "\(at).sharedPending")
        guard !p.threads.isEmpty else { throw bad("process \(p.pid) has no threads") }
        guard p.threads.contains(where: { $0.tid == p.pid }) else { throw bad("no thread has the process's pid \(p.pid)") }
        for t in p.threads {
            guard t.tid > 0, t.tid <= Self.maxPid, tids.insert(t.tid).inserted else {
                throw bad("\(at): thread id \(t.tid) is out of range or appears twice")
            }
            try text(t.comm, "\(at) thread \(t.tid).comm", limit: 64)
            guard t.xstate.count <= Self.maxXstate else { throw bad("thread \(t.tid) has an XSAVE area of \(t.xstate.count) bytes") }
            try pending(t.pending, "\(at) thread \(t.tid).pending")
        }
        for t in p.threads {
            if let sch = t.scheduling, !(0...6).contains(sch.policy) || !(0...99).contains(sch.priority) || !(-20...19).contains(sch.nice) {
                throw bad("\(at) thread \(t.tid): scheduling policy \(sch.policy), priority \(sch.priority), nice \(sch.nice) is out of range")
            }
            if let sch = t.scheduling, let list = sch.cpus {
                try text(list, "\(at) thread \(t.tid) cpus", limit: 4096)
                guard CPUAffinity.parse(list).map({ !$0.isEmpty }) == true else { throw bad("\(at) thread \(t.tid): CPU list '\(list)' is not one") }
            }
        }
        if let k = p.knobs, !(-1000...1000).contains(k.oomScoreAdj) || !(0...Self.maxSignal).contains(k.parentDeathSignal) || !(0...2).contains(k.dumpable) {
            throw bad("\(at): oom_score_adj \(k.oomScoreAdj), parent-death signal \(k.parentDeathSignal) or dumpable \(k.dumpable) is out of range")
        }
        for policy in p.threads.compactMap(\.numaPolicy) + p.mappings.compactMap(\.numaPolicy) {
            // Modes 0-6 with MPOL_F_NUMA_BALANCING, RELATIVE_NODES and STATIC_NODES.
            guard (0...6).contains(policy.mode & 0x1fff), policy.mode & ~0xe000 & ~0x1fff == 0, policy.mode >= 0,
                  policy.nodes.count <= Int(NUMAPolicy.maxNode) + 1, policy.nodes.allSatisfy({ $0 <= NUMAPolicy.maxNode }) else {
                throw bad("\(at): NUMA memory policy \(policy.mode) on nodes \(policy.nodes.prefix(8)) is not one the kernel takes")
            }
        }
        if let n = p.ownNamespaces, n.count > 8 || n.contains(where: { ProcessState.namespaceNote($0) == nil }) {
            throw bad("\(at): ownNamespaces \(n.prefix(8)) are not namespaces wb tells of (mnt, cgroup)")
        }
        if let c = p.cgroups {
            guard c.count <= 64 else { throw bad("\(at): \(c.count) cgroups (at most 64 hierarchies)") }
            for g in c { try text(g, "\(at).cgroups", limit: Self.maxPath) }
        }
        if let c = p.clocks, c.count != 2 || c.contains(where: { $0 >= 1 << 62 }) {
            throw bad("\(at): clocks \(c) are not CLOCK_MONOTONIC and CLOCK_BOOTTIME in nanoseconds")
        }
        if let m = p.knobs?.mdwe, m > 3 {
            throw bad("\(at): memory-deny-write-execute flags \(m) are not PR_SET_MDWE's (1 and 2)")
        }
        try mappings(p, at: at)
        try fds(p, at: at)
        for s in p.sysvSegments ?? [] where s.id < 0 || s.mode > 0o777 || s.size == 0 || s.size > Self.userSpaceEnd {
            throw bad("\(at): System V segment \(s.id) (size \(s.size), mode \(String(s.mode, radix: 8))) is out of range")
        }
        try semaphoresAndQueues(p, at: at)
    }

    /// Sets of 1 to SEMMSL semaphores, each value at most SEMVMX; queues whose messages have
    /// a type above 0 and fit the queue (msgsnd takes none longer than msg_qbytes); ids
    /// unique within the process.
    private func semaphoresAndQueues(_ p: ProcessState, at: String) throws {
        var ids = Set<Int32>()
        for s in p.sysvSemaphores ?? [] {
            guard s.id >= 0, ids.insert(s.id).inserted, s.mode <= 0o777, (1...Self.maxSemaphores).contains(s.values.count) else {
                throw bad("\(at): System V semaphore set \(s.id) (\(s.values.count) semaphores, mode \(String(s.mode, radix: 8))) is out of range or appears twice")
            }
            if let v = s.values.first(where: { $0 > Self.maxSemaphoreValue }) {
                throw bad("\(at): System V semaphore set \(s.id) holds the value \(v) (at most \(Self.maxSemaphoreValue))")
            }
        }
        ids = []
        for q in p.sysvQueues ?? [] {
            guard q.id >= 0, ids.insert(q.id).inserted, q.mode <= 0o777, q.qbytes <= Self.maxQueueBytes,
                  q.messages.count <= Self.maxMessages else {
                throw bad("\(at): System V message queue \(q.id) (\(q.messages.count) messages, \(q.qbytes) bytes, mode \(String(q.mode, radix: 8))) is out of range or appears twice")
            }
            for (i, m) in q.messages.enumerated() where m.type <= 0 || UInt64(m.bytes.count) > q.qbytes {
                throw bad("\(at): message \(i) of System V message queue \(q.id) has type \(m.type) and \(m.bytes.count) bytes (types are above 0, and no message is longer than the queue's \(q.qbytes) bytes)")
            }
        }
    }

    private func pending(_ signals: [PendingSignal], _ at: String) throws {
        for s in signals {
            guard (1...Self.maxSignal).contains(s.signal), s.siginfo.count == 128 else {
                throw bad("\(at): a pending signal \(s.signal) with \(s.siginfo.count) bytes of siginfo (signals are 1-64, siginfo 128 bytes)")
            }
        }
    }

    private func mappings(_ p: ProcessState, at: String) throws {
        let sources = metadata.pageSources ?? []
        let segments = Set((p.sysvSegments ?? []).map(\.id))
        var previousEnd: UInt64 = 0
        for (i, m) in p.mappings.enumerated() {
            let name = "mappings[\(i)] (\(hex(m.start))-\(hex(m.end)))"
            guard m.end > m.start, m.start % 4096 == 0, m.end % 4096 == 0 else {
                throw bad("mappings[\(i)] has a bad range \(hex(m.start))-\(hex(m.end))")
            }
            let inUserSpace = m.end <= Self.userSpaceEnd
            guard inUserSpace || (m.kind == .vsyscall && m.start >= Self.vsyscallStart) else {
                throw bad("\(name) lies outside user space")
            }
            guard m.start >= previousEnd else { throw bad("\(name) overlaps the mapping before it or is out of order") }
            previousEnd = m.end
            guard (0...7).contains(m.protection) else { throw bad("\(name) has protection \(m.protection) (PROT_READ|PROT_WRITE|PROT_EXEC is 7)") }
            guard m.offset % 4096 == 0, !m.offset.addingReportingOverflow(m.size).overflow, m.offset < UInt64(Int64.max) else {
                throw bad("\(name) has a file offset \(m.offset) that is not a page boundary or runs past 2^63")
            }
            if let path = m.path { try text(path, "\(name).path", limit: Self.maxPath) }
            if let name = m.anonName { try text(name, "mappings[\(i)].anonName", limit: 256) }
            if m.kind == .sysvShm {
                guard let id = m.shmid, segments.contains(id) else {
                    throw bad("\(name) attaches System V segment \(m.shmid.map(String.init) ?? "(no id)"), which process \(p.pid) does not list")
                }
            }
            if let huge = m.hugePageSize {
                guard huge.nonzeroBitCount == 1, huge >= 1 << 16, huge <= 1 << 30, m.start % huge == 0, m.end % huge == 0,
                      m.kind == .anonymous || m.kind == .sharedAnonymous else {
                    throw bad("\(name) has huge pages of \(huge) bytes: not a power of two from 64 KiB to 1 GiB the mapping is aligned to, or not anonymous memory")
                }
            }
            if m.kind == .aioRing {
                // The ring of an aio context: shared, read-write, no pages stored, and no larger
                // than the kernel makes one (aio-max-nr events at most).
                guard m.shared, m.protection == 3, m.pages.isEmpty, m.size <= 64 << 20 else {
                    throw bad("\(name) is an aio ring that is not a shared read-write mapping of at most 64 MiB without stored pages")
                }
            }
            var next: UInt64 = 0
            for run in m.pages {
                guard run.count > 0, UInt64(run.page) >= next else {
                    throw bad("\(name) has page runs out of order, overlapping or empty")
                }
                next = UInt64(run.page) + UInt64(run.count)
                guard run.source <= UInt32(sources.count) else {
                    throw bad("\(name) has a page run from page source \(run.source), which the image does not list")
                }
                let limit = run.source == 0 ? pageBytes : sources[Int(run.source) - 1].length
                let (end, overflow) = run.dataOffset.addingReportingOverflow(run.byteCount)
                guard next <= UInt64(m.pageCount), !overflow, end <= limit, run.dataOffset % 4096 == 0 else {
                    throw bad("\(name) has a page run outside the mapping or the PAGE section")
                }
            }
            try guards(m, name: name)
        }
    }

    /// Guard ranges: [start, end) pairs of page boundaries inside the mapping, in order and
    /// apart, on none of the stored pages (a guard page holds no data) and not on the kernel's
    /// own mappings (which take no guards).
    private func guards(_ m: Mapping, name: String) throws {
        guard let guards = m.guards else { return }
        guard ![.vdso, .vvar, .vvarVclock, .vsyscall, .aioRing].contains(m.kind) || guards.isEmpty else {
            throw bad("\(name) is a \(m.kind.rawValue) mapping with guard pages (the kernel puts none there)")
        }
        var previousEnd = m.start, run = 0
        for (k, g) in guards.enumerated() {
            guard g.count == 2, g[0] < g[1], g[0] % 4096 == 0, g[1] % 4096 == 0, g[0] >= previousEnd, g[1] <= m.end else {
                throw bad("\(name) has guards[\(k)] \(g.map { hex($0) }) that is not a page-aligned range inside the mapping after the one before it")
            }
            previousEnd = g[1]
            let first = (g[0] - m.start) / 4096, last = (g[1] - m.start) / 4096
            while run < m.pages.count && UInt64(m.pages[run].page) + UInt64(m.pages[run].count) <= first { run += 1 }
            if run < m.pages.count && UInt64(m.pages[run].page) < last {
                throw bad("\(name) has stored pages under guards[\(k)] (\(hex(g[0]))-\(hex(g[1]))): a guard page holds no data")
            }
        }
    }

    private func fds(_ p: ProcessState, at: String) throws {
        var numbers = Set<Int32>()
        let pipes = Set(p.pipes.map(\.id))
        for pipe in p.pipes where pipe.capacity < 0 || pipe.buffered.count > max(Int(pipe.capacity), 65536) {
            throw bad("\(at): pipe \(pipe.id) holds \(pipe.buffered.count) bytes in a buffer of \(pipe.capacity)")
        }
        for s in p.fds {
            let name = "\(at) fd \(s.fd)"
            guard s.fd >= 0, s.fd < Self.maxFD, numbers.insert(s.fd).inserted else {
                throw bad("\(at): fd \(s.fd) is out of range (0-\(Self.maxFD - 1)) or appears twice")
            }
            // Open flags are the low bits O_ACCMODE..O_TMPFILE; access mode 3 does not exist.
            guard s.flags >= 0, s.flags < 1 << 23, s.accessMode != 3 else {
                throw bad("\(name) has open flags 0x\(String(UInt32(bitPattern: s.flags), radix: 16))")
            }
            try text(s.path, "\(name).path", limit: Self.maxPath)
            if let d = s.description, d < 0 { throw bad("\(name) has description \(d)") }
            if let o = s.signalOwner, !(0...2).contains(o.type) || !(0...Self.maxPid).contains(o.pid) || !(0...Self.maxSignal).contains(o.signal) {
                throw bad("\(name) sends signal \(o.signal) to owner \(o.pid) of kind \(o.type) (kinds 0-2, signals 0-\(Self.maxSignal))")
            }
            switch s.kind {
            case .file, .fifo, .device:
                try absolutePath(s.path, "\(name).path")
                if s.kind == .file, s.deleted == true {
                    try deletedDirectory(DeletedDirectory(mode: s.mode, owner: s.owner ?? [], object: s.object ?? ""), "\(name)")
                }
            case .pipe:
                guard let id = s.pipe, pipes.contains(id) else { throw bad("\(name) is a pipe the image does not describe") }
            case .timerfd:
                guard let t = s.timerfd, (0...Self.maxClock).contains(t.clock) else { throw bad("\(name) is a timerfd without a valid clock") }
                guard (0...3).contains(t.settimeFlags ?? 0), t.absoluteNanoseconds == nil || t.settimeFlags != nil else {
                    throw bad("\(name) is a timerfd with settime flags \(t.settimeFlags ?? 0) (TFD_TIMER_ABSTIME 1, TFD_TIMER_CANCEL_ON_SET 2)")
                }
            case .eventfd:
                guard s.eventfd != nil else { throw bad("\(name) is an eventfd without its state") }
            case .epoll:
                for w in s.epoll ?? [] where w.fd < 0 || w.fd >= Self.maxFD {
                    throw bad("\(name) watches fd \(w.fd)")
                }
            case .inotify:
                var wds = Set<Int32>()
                for w in s.inotify ?? [] {
                    guard w.wd > 0, wds.insert(w.wd).inserted else { throw bad("\(name) has inotify watch descriptor \(w.wd) (above 0, each once)") }
                    try absolutePath(w.path, "\(name) inotify watch \(w.wd)")
                }
                if (s.inotify ?? []).count > 1 << 16 { throw bad("\(name) has more inotify watches than wb restores (65,536)") }
            case .fanotify:
                guard let g = s.fanotify, g.marks.count <= 1 << 16 else { throw bad("\(name) is a fanotify group without its settings, or with more marks than wb restores (65,536)") }
                for m in g.marks { try absolutePath(m.path, "\(name) fanotify mark") }
            case .ptyMaster:
                guard let pty = s.pty, pty.index >= 0, pty.termios.count == 36, pty.winsize.count == 4 else {
                    throw bad("\(name) is a pseudo-terminal master without a valid number, terminal settings (36 bytes) and window size")
                }
            case .ptySlave:
                guard let n = s.ptyIndex, n >= 0 else { throw bad("\(name) is a pseudo-terminal without a valid number") }
            case .pidfd:
                guard let t = s.pidfdTarget, t > 0, t <= Self.maxPid else { throw bad("\(name) is a pidfd without a valid target pid") }
            case .mqueue:
                try messageQueue(s.mqueue, name)
            case .unixSocket, .socket, .placeholder:
                try socket(s, name: name)
            default:
                break
            }
        }
    }

    /// A POSIX message queue within the kernel's hard limits: a name of one path component,
    /// 1-65,536 messages of 1 byte-16 MiB each, no more messages than the queue holds, none
    /// longer than its message size, priorities below MQ_PRIO_MAX (32,768).
    private func messageQueue(_ q: MessageQueueState?, _ name: String) throws {
        guard let q else { throw bad("\(name) is a message queue without its state") }
        try text(q.name, "\(name) message queue name", limit: 255)
        guard !q.name.isEmpty, !q.name.contains("/" as Character), q.name != ".", q.name != ".." else {
            throw bad("\(name) is a message queue whose name \"\(q.name)\" is not one path component")
        }
        guard (1...65536).contains(q.maxMessages), (1...(16 << 20)).contains(q.messageSize), q.mode <= 0o7777, q.owner.count == 2,
              q.messages.count <= q.maxMessages else {
            throw bad("\(name) is a message queue with limits outside the kernel's (\(q.maxMessages) messages of \(q.messageSize) bytes, \(q.messages.count) queued)")
        }
        for m in q.messages where m.priority >= 32768 || Int64(m.bytes.count) > q.messageSize {
            throw bad("\(name) is a message queue holding a message of priority \(m.priority) and \(m.bytes.count) bytes (priorities below 32,768, at most \(q.messageSize) bytes)")
        }
        let parts = q.object.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ UInt64($0) != nil }) else { throw bad("\(name) is a message queue without a valid identity") }
    }

    /// A removed directory's attributes: permission bits, an owner and group, and an identity
    /// "device:inode" (it names a file restore may make under /tmp).
    private func deletedDirectory(_ d: DeletedDirectory, _ name: String) throws {
        let parts = d.object.split(separator: ":", omittingEmptySubsequences: false)
        guard d.mode <= 0o7777, d.owner.count == 2, parts.count == 2, parts.allSatisfy({ !$0.isEmpty && UInt64($0) != nil }) else {
            throw bad("\(name) is a removed directory without a valid mode, owner and identity")
        }
    }

    // MARK: Strings and paths

    func text(_ s: String, _ field: String, limit: Int) throws {
        guard s.utf8.count <= limit, !s.utf8.contains(0) else {
            throw bad("\(field) is longer than \(limit) bytes or holds a NUL byte")
        }
    }

    /// A path the process knew: absolute, no NUL, at most PATH_MAX.
    private func absolutePath(_ s: String, _ field: String, allowEmpty: Bool = false) throws {
        if allowEmpty && s.isEmpty { return }
        try text(s, field, limit: Self.maxPath)
        guard s.hasPrefix("/") else { throw bad("\(field) '\(s)' is not an absolute path") }
    }

    /// A path relative to the image's directory: it must stay beneath it.
    private func relativePath(_ s: String, _ field: String) throws {
        try text(s, field, limit: Self.maxPath)
        guard !s.isEmpty, !s.hasPrefix("/"), !s.split(separator: "/").contains("..") else {
            throw bad("\(field) '\(s)' leaves the image's directory (it must be a relative path without '..')")
        }
    }
}
