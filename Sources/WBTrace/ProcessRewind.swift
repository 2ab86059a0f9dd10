import CWBNative
import Foundation
import Glibc
import WBCore
import WBSystem

/// A moment of a live process kept so that the process can be put back to it in place, again
/// and again: its threads' registers, its writable memory (the pages written since are found
/// with userfaultfd write-protect and PAGEMAP_SCAN, and only those are written back), its
/// mappings, its fds (held as the same open file descriptions) and its epoll registrations.
///
/// Taken while every thread is stopped. A thread stopped in a call that waits (a read, a
/// poll, a futex) is kept as about to make that call again: put back, it waits again as it
/// did, and the program never sees the stop (no EINTR).
public final class ProcessRewind {
    public let tracee: Tracee
    struct Thread { var registers: Registers; var xstate: Data; var mask: UInt64 }
    private var threads: [Int32: Thread] = [:]
    private let tracker: DirtyTracker
    private let scanner: PageScanner
    private let vector = ScanVector()
    /// Tracked memory as it was, one buffer per registered range.
    private var kept: [(start: UInt64, end: UInt64, buffer: UnsafeMutableRawPointer)] = []
    /// Writable memory the kernel cannot track (a library's data): written back whole.
    private var copied: [(start: UInt64, bytes: [UInt8])] = []
    private var span: (UInt64, UInt64) = (0, 0)
    public private(set) var layout: SnapshotLayout
    /// Every epoll fd, with what it watches: by fd watched, its events and data.
    private var registrations: [Int32: [Int32: Registration]] = [:]
    struct Registration: Equatable { var events: UInt32; var data: UInt64 }
    /// Per page of tracked memory, `pageDigest` of its kept contents; their sum.
    private var keptDigests: [[UInt64]] = []
    private var keptSum: UInt64 = 0
    /// Ranges the process discarded or unmapped since it was put back (taken from the
    /// tracker by a digest, for the next rewind).
    private var removedSince: [(start: UInt64, end: UInt64)] = []
    /// Where a digest reads pages (1 MiB, made at the first).
    private var readBuffer: UnsafeMutableRawBufferPointer?
    /// File status flags (O_NONBLOCK, O_APPEND...) of each fd, for a replacement.
    private var statusFlags: [Int32: Int32] = [:]

    /// Keeps the stopped process as it is now. The threads that wait in a call are set up
    /// to make it again (the registers are changed now, so the process does not see the stop
    /// either when it goes on from here).
    ///
    /// Guard markers (madvise MADV_GUARD_INSTALL) are not kept: memory holding them cannot be
    /// read, so keeping a process with some fails, and a marker a run puts in tracked memory
    /// reads as written and fails the write that would put the page back. The scans spare
    /// the walk that tells markers apart.
    public init(_ tracee: Tracee) throws {
        self.tracee = tracee
        let pid = tracee.pid
        for tid in tracee.tids {
            var r = try tracee.registers(tid)
            if try ProcessRewind.restartable(tracee, r) {
                r.rax = r.origRax
                r.rip -= 2
                r.origRax = UInt64.max
                try tracee.setRegisters(tid, r)
            }
            // Put back at any stop, a seccomp stop included, the thread makes no call of the
            // stop's own.
            r.origRax = UInt64.max
            threads[tid] = Thread(registers: r, xstate: try tracee.xstate(tid), mask: try tracee.signalMask(tid))
        }
        if tracee.syscallGadget == 0 { tracee.syscallGadget = try tracee.findSyscallGadget(in: try ProcFS.maps(pid, withFlags: false)) }
        var brk: UInt64 = 0
        tracker = try tracee.withSyscalls(in: pid) { s in
            brk = UInt64(bitPattern: try s.raw(.brk, 0))
            return try DirtyTracker(tracee: tracee, syscalls: s)
        }
        scanner = try PageScanner(pid: pid)
        var low = UInt64.max, high: UInt64 = 0
        for e in try ProcFS.maps(pid, withFlags: false) where !e.shared && e.protection & 2 != 0 && !e.path.hasPrefix("[v") {
            if tracker.register(start: e.start, end: e.end) {
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: Int(e.end - e.start), alignment: 4096)
                try tracee.read(e.start, into: UnsafeMutableRawBufferPointer(start: buffer, count: Int(e.end - e.start)))
                kept.append((e.start, e.end, buffer))
                low = min(low, e.start); high = max(high, e.end)
            } else {
                copied.append((e.start, try tracee.read(e.start, count: Int(e.end - e.start))))
            }
        }
        span = (low, high)
        for k in kept {
            let pages = (0..<Int((k.end - k.start) / 4096)).map { i in
                ProcessRewind.pageDigest(UnsafeRawPointer(k.buffer + i * 4096), at: k.start + UInt64(i) * 4096)
            }
            keptDigests.append(pages)
            keptSum = pages.reduce(keptSum, &+)
        }
        try tracker.protectAll()
        layout = try SnapshotLayout(pid: pid, brk: brk, skipFDs: []) { try tracee.takeFD($0) }
        for fd in layout.fds.keys {
            guard let text = try? Paths.readText("/proc/\(pid)/fdinfo/\(fd)") else { continue }
            if let flags = SnapshotLayout.fdinfoFlags(text) { statusFlags[fd] = flags }
            if (try? Paths.readLink("/proc/\(pid)/fd/\(fd)")) == "anon_inode:[eventpoll]" {
                registrations[fd] = ProcessRewind.registrations(text)
            }
        }
    }

    /// An epoll fd's registrations, from its fdinfo ("tfd: N events: HEX data: HEX ...").
    static func registrations(_ fdinfo: String) -> [Int32: Registration] {
        var out: [Int32: Registration] = [:]
        for line in fdinfo.split(separator: "\n") where line.hasPrefix("tfd:") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            func field(_ name: String) -> String? { f.firstIndex(of: name).flatMap { $0 + 1 < f.count ? f[$0 + 1] : nil } }
            guard let t = field("tfd:").flatMap({ Int32($0) }), let ev = field("events:").flatMap({ UInt32($0, radix: 16) }),
                  let data = field("data:").flatMap({ UInt64($0, radix: 16) }) else { continue }
            out[t] = Registration(events: ev, data: data)
        }
        return out
    }

    /// A page's contribution to a digest of memory: its contents hashed with its address.
    /// A digest is the wrapping sum over pages, so the pages a run wrote are enough to
    /// bring it up to date.
    public static func pageDigest(_ page: UnsafeRawPointer, at address: UInt64) -> UInt64 {
        wb_hash64(page, 4096, address)
    }

    /// The sum of `pageDigest` over the process's writable private memory as it is now,
    /// found from the kept sum and the pages written since; nil when the run changed the
    /// mappings (the caller reads them whole). `mappingsTouched`: whether the process may
    /// have changed its mappings since it was put back (false spares reading them).
    public func memoryDigest(mappingsTouched: Bool = true) throws -> UInt64? {
        if mappingsTouched {
            guard layout.sameMappings(try Paths.readText("/proc/\(tracee.pid)/maps")) else { return nil }
        }
        removedSince += tracker.takeRemoved()
        var sum = keptSum
        let written = try scanner.scan(start: span.0, end: span.1, writtenOnly: true, trackedOnly: true, vector: vector, markersPossible: false)
        let changed = SnapshotLayout.merged(written.map { (start: $0.start, end: $0.end) } + removedSince)
        if readBuffer == nil { readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096) }
        let buffer = readBuffer!
        for (i, k) in kept.enumerated() {
            for r in changed where r.start < k.end && k.start < r.end {
                var at = max(k.start, r.start)
                let end = min(k.end, r.end)
                while at < end {
                    let n = Int(min(end - at, UInt64(buffer.count)))
                    try tracee.read(at, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
                    for o in stride(from: 0, to: n, by: 4096) {
                        let a = at + UInt64(o)
                        sum = sum &- keptDigests[i][Int((a - k.start) / 4096)] &+ ProcessRewind.pageDigest(buffer.baseAddress! + o, at: a)
                    }
                    at += UInt64(n)
                }
            }
        }
        for c in copied {
            var at = 0
            while at < c.bytes.count {
                let n = min(c.bytes.count - at, buffer.count)
                try tracee.read(c.start + UInt64(at), into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
                for o in stride(from: 0, to: n, by: 4096) { sum = sum &+ ProcessRewind.pageDigest(buffer.baseAddress! + o, at: c.start + UInt64(at + o)) }
                at += n
            }
        }
        return sum
    }

    deinit {
        tracker.release()
        for k in kept { k.buffer.deallocate() }
        readBuffer?.deallocate()
    }

    /// Whether the thread stopped in a call that waits, to be made again (the kernel's
    /// ERESTART* codes, or EINTR: some calls fail so after a stop).
    static func restartable(_ t: Tracee, _ r: Registers) throws -> Bool {
        let result = Int64(bitPattern: r.rax)
        guard Int64(bitPattern: r.origRax) >= 0, result == -Int64(EINTR) || (-516 ... -512).contains(result),
              let insn = try? t.read(r.rip - 2, count: 2) else { return false }
        return insn == [0x0F, 0x05]
    }

    /// The stopped process as it was kept: false, with nothing promised about the process,
    /// when the run did something that cannot be undone in place (a kept thread ended, a
    /// kept mapping went). `replaced` are fds whose open files were made anew (`renew`):
    /// they get the kept status flags and epoll registrations. The process is entered
    /// (injected calls) only for what the run changed.
    /// `mappingsTouched` false: the process made no call that changes mappings since it was
    /// last put back (its mappings are not read).
    public func rewind(replaced: Set<Int32> = [], mappingsTouched: Bool = true) throws -> Bool {
        let pid = tracee.pid
        let now = Set(tracee.tids)
        guard threads.keys.allSatisfy(now.contains) else { return false }
        for tid in now where threads[tid] == nil { try tracee.endThread(tid) }
        let removed = removedSince + tracker.takeRemoved()
        removedSince = []
        let text = mappingsTouched ? try Paths.readText("/proc/\(pid)/maps") : ""
        let mapsChanged = mappingsTouched && !layout.sameMappings(text)
        for fd in replaced { if let f = statusFlags[fd], let h = layout.fds[fd] { _ = fcntl(h.copy.rawValue, F_SETFL, f) } }
        let (opened, lost) = try layout.fdChanges(pid: pid)
        let watching = registrations.keys.sorted().compactMap { epoll -> (Int32, [(UInt64, Int32, Registration)])? in
            let kept = registrations[epoll]!
            let current = ProcessRewind.registrations((try? Paths.readText("/proc/\(pid)/fdinfo/\(epoll)")) ?? "")
            var calls: [(UInt64, Int32, Registration)] = []
            for (fd, r) in current where kept[fd] == nil { calls.append((2 /* EPOLL_CTL_DEL */, fd, r)) }
            for (fd, r) in kept where current[fd] != r { calls.append((current[fd] == nil ? 1 /* ADD */ : 3 /* MOD */, fd, r)) }
            return calls.isEmpty ? nil : (epoll, calls)
        }
        if mapsChanged || !opened.isEmpty || !lost.isEmpty || !watching.isEmpty {
            let ok: Bool = try tracee.withSyscalls(in: pid) { s in
                if mapsChanged {
                    try layout.dropMappingsOfRun(s, now: ProcFS.parseMaps(text))
                    let after = try ProcFS.maps(pid, withFlags: false)
                    if !layout.lostPieces(lost: [], now: after).isEmpty { return false }
                    try layout.putBackProtections(s, now: after)
                    if !layout.sameMappings(try Paths.readText("/proc/\(pid)/maps")) { return false }
                }
                var scratch: UInt64 = 0
                defer { if scratch != 0 { _ = try? s.raw(.munmap, scratch, 4096) } }
                let area = { () throws -> UInt64 in
                    if scratch == 0 { scratch = try s.mapScratch(bytes: 4096) }
                    return scratch
                }
                try layout.putBackFDs(s, opened: opened, lost: lost, tracee: tracee, scratch: area)
                try putBackRegistrations(s, watching, scratch: area)
                return true
            }
            guard ok else { return false }
        }
        try putBackMemory(removed: removed)
        for (tid, t) in threads {
            try tracee.setRegisters(tid, t.registers)
            try tracee.setXstate(tid, t.xstate)
            try tracee.setSignalMask(tid, t.mask)
            tracee.dropInterceptedSignal(tid)
        }
        layout.rewindFiles()
        return true
    }

    /// Makes fds `fds` anew in the stopped process, each with `make` (a call made through
    /// the `RemoteSyscalls` it is given that returns a new fd: a socket), at its own number
    /// (the open file it had goes from the process, and wb stops holding it), and holds
    /// the new ones instead: wb's copies of them, by fd. Their status flags and epoll
    /// registrations come back with the next `rewind(replaced:)`.
    public func renew(_ fds: [Int32], make: (Int32, RemoteSyscalls) throws -> UInt64) throws -> [Int32: FileDescriptor] {
        var out: [Int32: FileDescriptor] = [:]
        try tracee.withSyscalls(in: tracee.pid) { s in
            for fd in fds {
                let new = try make(fd, s)
                let closeOnExec = layout.fds[fd]?.closeOnExec ?? false
                if new != UInt64(fd) {
                    try s.call(.dup3, new, UInt64(fd), closeOnExec ? UInt64(O_CLOEXEC) : 0, what: "putting a new socket at fd \(fd)")
                    _ = try s.raw(.close, new)
                } else if !closeOnExec {
                    try s.call(.fcntl, new, UInt64(F_SETFD), 0, what: "clearing close-on-exec of fd \(fd)")
                }
                layout.forget(fd)
                let copy = try tracee.takeFD(fd)
                layout.replace(fd, with: copy)
                out[fd] = copy
            }
        }
        return out
    }

    /// Makes each epoll fd watch what it did, as it did (a registration goes with the open
    /// file it watched, and the run may have added, changed or removed some).
    private func putBackRegistrations(_ s: RemoteSyscalls, _ watching: [(Int32, [(UInt64, Int32, Registration)])], scratch: () throws -> UInt64) throws {
        for (epoll, calls) in watching {
            for (op, fd, r) in calls {
                var event = [UInt8](repeating: 0, count: 12)
                withUnsafeBytes(of: r.events.littleEndian) { event.replaceSubrange(0..<4, with: $0) }
                withUnsafeBytes(of: r.data.littleEndian) { event.replaceSubrange(4..<12, with: $0) }
                let at = try scratch()
                try tracee.write(event, to: at)
                let e = try s.raw(.epollCtl, UInt64(epoll), op, UInt64(fd), at)
                if e != 0 && !(op == 2 && (e == -Int64(EBADF) || e == -Int64(ENOENT))) {
                    throw WBError.system(call: "epoll_ctl", errno: Int32(-e), what: "watching fd \(fd) again as before in epoll fd \(epoll) of pid \(tracee.pid)")
                }
            }
        }
    }

    /// Writes back the pages the run wrote (and what it discarded), and the untracked
    /// memory, then protects them again.
    private func putBackMemory(removed: [(start: UInt64, end: UInt64)]) throws {
        guard span.0 < span.1 else {
            for c in copied { try tracee.write(c.bytes, to: c.start) }
            return
        }
        var written = try scanner.scan(start: span.0, end: span.1, writtenOnly: true, trackedOnly: true, vector: vector, markersPossible: false)
            .map { (start: $0.start, end: $0.end) }
        written = SnapshotLayout.merged(written + removed)
        var triples: [UInt64] = []
        for r in written {
            for k in kept where k.start < r.end && r.start < k.end {
                let lo = max(k.start, r.start), hi = min(k.end, r.end)
                triples += [UInt64(UInt(bitPattern: k.buffer)) + (lo - k.start), lo, hi - lo]
            }
        }
        if !triples.isEmpty { try tracee.memory.write(scatter: triples) }
        for c in copied { try tracee.write(c.bytes, to: c.start) }
        for i in stride(from: 0, to: triples.count, by: 3) { try tracker.protect(start: triples[i + 1], end: triples[i + 1] + triples[i + 2]) }
    }
}
