import Foundation
import Glibc
import WBCore
import WBSystem

/// The snapshot's address space and fd table as ranges and held copies, and the repairs that
/// put a process back to them after a run changed them: mappings the run made go, mappings
/// it unmapped, moved, mapped over or shrank (brk, munmap, mremap, MAP_FIXED, MADV_DONTNEED)
/// come back with the snapshot's contents and protection, and fds it closed or replaced come
/// back as the same open file descriptions (sent in over a Unix socket).
public struct SnapshotLayout {
    /// The snapshot's mappings, in address order.
    public let entries: [ProcFS.MapsEntry]
    /// The snapshot's /proc/PID/maps lines (a run that left them equal changed nothing).
    public let lines: [String]
    /// The snapshot's fds and wb's copies of them (the same open file descriptions).
    public private(set) var fds: [Int32: HeldFD]
    /// The program break at the snapshot.
    public let brk: UInt64
    /// Every fd the process had at the snapshot, held or not (skipped, or not to be taken).
    public let numbers: Set<Int32>

    public struct HeldFD {
        public var copy: FileDescriptor
        public var closeOnExec: Bool
        /// For regular files and directories: the position at the snapshot, put back
        /// before every run (a run that read a file moved it).
        public var offset: Int64?
        public init(copy: FileDescriptor, closeOnExec: Bool, offset: Int64?) {
            self.copy = copy; self.closeOnExec = closeOnExec; self.offset = offset
        }
    }

    public init(pid: Int32, brk: UInt64, skipFDs: Set<Int32>, take: (Int32) throws -> FileDescriptor) throws {
        let text = try Paths.readText("/proc/\(pid)/maps")
        lines = text.split(separator: "\n").map(String.init)
        entries = ProcFS.parseMaps(text)
        self.brk = brk
        var held: [Int32: HeldFD] = [:]
        let all = try ProcFS.fds(pid)
        numbers = Set(all)
        for fd in all where !skipFDs.contains(fd) {
            guard let copy = try? take(fd) else { continue }
            let flags = (try? Paths.readText("/proc/\(pid)/fdinfo/\(fd)")).flatMap(SnapshotLayout.fdinfoFlags) ?? 0
            var st = stat()
            var offset: Int64?
            if fstat(copy.rawValue, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == S_IFDIR {
                let o = lseek(copy.rawValue, 0, SEEK_CUR)
                if o >= 0 { offset = Int64(o) }
            }
            held[fd] = HeldFD(copy: copy, closeOnExec: flags & Int32(O_CLOEXEC) != 0, offset: offset)
        }
        fds = held
    }

    /// Whether `maps` (the text of /proc/PID/maps) shows the snapshot's mappings.
    public func sameMappings(_ maps: String) -> Bool {
        maps.split(separator: "\n").elementsEqual(lines) { $0 == $1 }
    }

    /// The fds a run opened (not the snapshot's), and the snapshot's fds it closed or
    /// replaced with another open file, of process `pid` now.
    public func fdChanges(pid: Int32) throws -> (opened: [Int32], lost: [Int32]) {
        let now = try ProcFS.fds(pid)
        let lost = fds.keys.sorted().filter { n in !now.contains(n) || !SharedFiles.sameDescription(pid, n, getpid(), fds[n]!.copy.rawValue) }
        return (now.filter { !numbers.contains($0) }, lost)
    }

    /// In the stopped process: closes the fds a run opened and puts back the snapshot's it
    /// lost (`fdChanges`), as the same open files. `scratch` gives 4 KiB of the process's
    /// memory, asked for only when an fd is put back.
    public func putBackFDs(_ s: RemoteSyscalls, opened: [Int32], lost: [Int32], tracee: Tracee, scratch: () throws -> UInt64) throws {
        for fd in opened { _ = try s.raw(.close, UInt64(fd)) }
        for n in lost { try s.install(fds[n]!, as: n, tracee: tracee, scratch: try scratch()) }
    }

    /// In the stopped process: unmaps what a run mapped (`now`: its mappings) and puts the
    /// program break back.
    public func dropMappingsOfRun(_ s: RemoteSyscalls, now: [ProcFS.MapsEntry]) throws {
        for r in madeByRun(now) { _ = try s.raw(.munmap, r.start, r.end - r.start) }
        _ = try s.raw(.brk, brk)
    }

    /// In the stopped process: gives the snapshot's mappings their protection back where a
    /// run changed it (`now`: its mappings).
    public func putBackProtections(_ s: RemoteSyscalls, now: [ProcFS.MapsEntry]) throws {
        for c in protectionChanges(now) { _ = try s.raw(.mprotect, c.start, c.end - c.start, UInt64(c.protection)) }
    }

    public static func fdinfoFlags(_ text: String) -> Int32? {
        for line in text.split(separator: "\n") where line.hasPrefix("flags:") {
            return Int32(line.dropFirst(6).trimmingCharacters(in: .whitespaces), radix: 8)
        }
        return nil
    }

    /// Closes the copy held of fd `fd` (its open file is to be replaced; `replace` gives
    /// the new one).
    public mutating func forget(_ fd: Int32) {
        fds[fd]?.copy.close()
    }

    /// Holds `copy` as fd `fd` from now on (a connection built again in its place).
    public mutating func replace(_ fd: Int32, with copy: FileDescriptor) {
        fds[fd] = HeldFD(copy: copy, closeOnExec: fds[fd]?.closeOnExec ?? false, offset: nil)
    }

    /// Puts the positions of the snapshot's files back (through wb's copies, which share them).
    public func rewindFiles() {
        for (_, h) in fds { if let o = h.offset { _ = lseek(h.copy.rawValue, off_t(o), SEEK_SET) } }
    }

    /// The address ranges a call about to run may take away from the snapshot's mappings
    /// (read from its arguments at the seccomp stop): what munmap, mremap, a MAP_FIXED mmap
    /// or a shrinking brk will replace, read-only memory mprotect makes writable, and memory
    /// madvise puts guard markers in or takes them out of.
    public func removedBy(_ r: Registers) -> [(start: UInt64, end: UInt64)] {
        func range(_ a: UInt64, _ n: UInt64) -> [(start: UInt64, end: UInt64)] {
            n == 0 ? [] : [(a & ~4095, (a &+ n &+ 4095) & ~4095)]
        }
        switch r.origRax {
        case 11: return range(r.rdi, r.rsi)                                       // munmap
        case 25: return range(r.rdi, r.rsi) + (r.r10 & 2 != 0 ? range(r.r8, r.rdx) : [])  // mremap (MREMAP_FIXED)
        case 9: return r.r10 & 0x10 != 0 ? range(r.rdi, r.rsi) : []               // mmap MAP_FIXED
        case 12: return r.rdi != 0 && r.rdi < brk ? [((r.rdi + 4095) & ~4095, (brk + 4095) & ~4095)] : []
        case 28: return r.rdx == 102 || r.rdx == 103 ? range(r.rdi, r.rsi) : []   // madvise: guard markers in or out
        case 10, 329:
            // mprotect, pkey_mprotect: memory the snapshot had read-only that becomes
            // writable is neither tracked nor copied; the run may write it, so it is built again.
            guard r.rdx & 2 != 0 else { return [] }
            return range(r.rdi, r.rsi).flatMap { t in
                entries.filter { $0.protection & 2 == 0 && $0.start < t.end && t.start < $0.end }.map { (max($0.start, t.start), min($0.end, t.end)) }
            }
        default: return []
        }
    }

    /// [start, end) minus every range in `minus` (sorted by start).
    public static func subtract(_ start: UInt64, _ end: UInt64, _ minus: [(start: UInt64, end: UInt64)]) -> [(start: UInt64, end: UInt64)] {
        var out: [(start: UInt64, end: UInt64)] = []
        var at = start
        for m in minus where m.end > at && m.start < end {
            if m.start > at { out.append((at, m.start)) }
            at = max(at, m.end)
            if at >= end { break }
        }
        if at < end { out.append((at, end)) }
        return out
    }

    /// Sorted, merged ranges.
    public static func merged(_ ranges: [(start: UInt64, end: UInt64)]) -> [(start: UInt64, end: UInt64)] {
        var out: [(start: UInt64, end: UInt64)] = []
        for r in ranges.sorted(by: { $0.start < $1.start }) where r.end > r.start {
            if let last = out.last, r.start <= last.end { out[out.count - 1].end = max(last.end, r.end) } else { out.append(r) }
        }
        return out
    }
}

/// A piece of a snapshot mapping to build again.
public struct LostPiece {
    public var entry: ProcFS.MapsEntry
    public var start: UInt64
    public var end: UInt64
}

extension SnapshotLayout {
    /// The pieces of snapshot mappings that the ranges `lost` cover, or that `now` no longer maps.
    public func lostPieces(lost: [(start: UInt64, end: UInt64)], now: [ProcFS.MapsEntry]) -> [LostPiece] {
        let present = SnapshotLayout.merged(now.map { ($0.start, $0.end) })
        var missing = lost
        for e in entries { missing += SnapshotLayout.subtract(e.start, e.end, present) }
        let all = SnapshotLayout.merged(missing)
        var out: [LostPiece] = []
        for e in entries {
            for m in all where m.start < e.end && e.start < m.end {
                out.append(LostPiece(entry: e, start: max(e.start, m.start), end: min(e.end, m.end)))
            }
        }
        return out
    }

    /// Pieces of `now` that no snapshot mapping covers: made by the run.
    public func madeByRun(_ now: [ProcFS.MapsEntry]) -> [(start: UInt64, end: UInt64)] {
        let before = SnapshotLayout.merged(entries.map { ($0.start, $0.end) })
        return SnapshotLayout.merged(now.flatMap { SnapshotLayout.subtract($0.start, $0.end, before) })
    }

    /// Parts of snapshot mappings whose protection now differs: (start, end, protection).
    public func protectionChanges(_ now: [ProcFS.MapsEntry]) -> [(start: UInt64, end: UInt64, protection: Int32)] {
        var out: [(start: UInt64, end: UInt64, protection: Int32)] = []
        for n in now {
            for e in entries where e.start < n.end && n.start < e.end && e.protection != n.protection {
                out.append((max(e.start, n.start), min(e.end, n.end), e.protection))
            }
        }
        return out
    }
}

extension RemoteSyscalls {
    /// Puts `held` into the process as fd `number`: a socket pair made in the process, the
    /// description sent in by wb over one end and received on the other, moved to `number`.
    public func install(_ held: SnapshotLayout.HeldFD, as number: Int32, tracee: Tracee, scratch: UInt64) throws {
        try call(.socketpair, 1 /* AF_UNIX */, 2 /* SOCK_DGRAM */ | UInt64(O_CLOEXEC), 0, scratch, what: "making a socket pair to send fd \(number) back")
        let pair = try tracee.read(scratch, count: 8)
        var a = Int32(pair[0]) | Int32(pair[1]) << 8 | Int32(pair[2]) << 16 | Int32(pair[3]) << 24
        var b = Int32(pair[4]) | Int32(pair[5]) << 8 | Int32(pair[6]) << 16 | Int32(pair[7]) << 24
        // Out of the way of the number being put back (the lowest free numbers may be it).
        for end in [0, 1] where (end == 0 ? a : b) == number {
            let moved = try call(.fcntl, UInt64(number), UInt64(F_DUPFD_CLOEXEC), UInt64(number + 1), what: "moving a socket aside")
            _ = try raw(.close, UInt64(number))
            if end == 0 { a = Int32(moved) } else { b = Int32(moved) }
        }
        defer { _ = try? raw(.close, UInt64(a)); _ = try? raw(.close, UInt64(b)) }
        let sender = try tracee.takeFD(a)
        try SharedFiles.send(held.copy.rawValue, over: sender.rawValue, what: "sending fd \(number) back to the process")
        // struct msghdr at scratch, its iovec at +64 (one byte at +128), the control buffer at +256.
        var msg = [UInt8](repeating: 0, count: 280)
        func put(_ v: UInt64, at o: Int) { for i in 0..<8 { msg[o + i] = UInt8((v >> (8 * UInt64(i))) & 0xFF) } }
        put(scratch + 64, at: 16); put(1, at: 24); put(scratch + 256, at: 32); put(24, at: 40)
        put(scratch + 128, at: 64); put(1, at: 72)
        try tracee.write(msg, to: scratch)
        try call(.recvmsg, UInt64(b), scratch, UInt64(MSG_CMSG_CLOEXEC), what: "receiving fd \(number) back")
        let control = try tracee.read(scratch + 256, count: 24)
        let got = UInt64(control[16]) | UInt64(control[17]) << 8 | UInt64(control[18]) << 16 | UInt64(control[19]) << 24
        guard control[8] == 1 /* SOL_SOCKET */ && control[12] == 1 /* SCM_RIGHTS */ else {
            throw WBError.failed("fd \(number) did not arrive back in the process")
        }
        if got == UInt64(number) {
            if !held.closeOnExec { try call(.fcntl, got, UInt64(F_SETFD), 0, what: "clearing close-on-exec of fd \(number)") }
            return
        }
        try call(.dup3, got, UInt64(number), held.closeOnExec ? UInt64(O_CLOEXEC) : 0, what: "putting fd \(number) back")
        _ = try raw(.close, got)
    }
}
