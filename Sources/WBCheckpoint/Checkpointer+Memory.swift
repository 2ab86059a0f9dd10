import Foundation
import Glibc
import WBTrace

/// Which pages of a mapping the image stores.
enum PagePolicy {
    /// Nothing: the kernel provides it ([vvar], [vsyscall]) or the file holds it (shared file).
    case none
    /// Every present or swapped page (anonymous memory, shared anonymous memory, the vdso).
    case present
    /// Only pages the process wrote (private copies), not those still backed by the file.
    case privateCopies
    /// Every page of a System V segment that holds data, whether or not this process has
    /// touched it (another process may have written it).
    case segmentData
}

/// A tracked mapping whose page runs are put together after the process runs again.
struct DeferredRuns {
    var mapping: Int
    var start: UInt64
    var end: UInt64
    /// Present pages inside tracked memory.
    var present: [PageScanner.Range]
    /// Runs of the pages outside it, stored now.
    var untracked: [PageRun]
}

extension Checkpointer {
    /// Describes every mapping as it is now and stores its pages: present, not all zeros, and
    /// for private file mappings only the pages the process wrote. Memory `store` tracked
    /// while the process ran was stored then; only its pages written since are stored now,
    /// and its runs are put together later (`deferred`).
    func captureMemory(_ memory: ProcessMemory, into p: inout ProcessState, store: PageStore, scanner: PageScanner,
                       files: inout FileEmbedder, stable: [String: [PageRun]], removed: [(start: UInt64, end: UInt64)],
                       deferred: inout [DeferredRuns]) throws {
        store.forget(removed)
        let entries = try ProcFS.maps(pid, withFlags: !store.tracking)
        stamp("maps")
        let executableFiles = Set(entries.filter { $0.protection & 4 != 0 && $0.inode != 0 }.map { "\($0.device):\($0.inode)" })
        let guards = try guardRanges(entries, scanner: scanner)
        var hugePageSizes: [UInt64: UInt64]?
        // The page maps of this process and its parent, for pages they share (CopyOnWrite).
        let pagemaps = parentForSharing.flatMap { parent in
            try? (mine: FileDescriptor.open("/proc/\(pid)/pagemap", O_RDONLY), theirs: FileDescriptor.open("/proc/\(parent.pid)/pagemap", O_RDONLY))
        }
        for e in entries {
            var m = Mapping(start: e.start, end: e.end, protection: e.protection, shared: e.shared,
                            kind: .anonymous, offset: e.offset, path: nil)
            m.vmFlags = e.vmFlags
            if e.shared && (e.path.isEmpty || e.path.hasPrefix("[anon_shmem:") || e.path.hasSuffix(" (deleted)")) {
                m.object = "\(e.device):\(e.inode)"
            }
            var policy = PagePolicy.present
            switch e.path {
            case "[heap]": m.kind = .heap
            case "[stack]": m.kind = .stack
            case "[vdso]": m.kind = .vdso
            case "[vvar]": m.kind = .vvar; policy = .none
            case "[vvar_vclock]": m.kind = .vvarVclock; policy = .none
            case "[vsyscall]": m.kind = .vsyscall; policy = .none
            case "":
                m.kind = e.shared ? .sharedAnonymous : .anonymous
            default:
                if e.path.hasPrefix("[anon:") {
                    m.anonName = String(e.path.dropFirst(6).dropLast())
                } else if e.path.hasPrefix("[anon_shmem:") {
                    m.kind = .sharedAnonymous
                    m.anonName = String(e.path.dropFirst(12).dropLast())
                } else if e.shared && e.path == "/dev/zero (deleted)" {
                    m.kind = .sharedAnonymous
                } else if e.path == "/anon_hugepage (deleted)" {
                    // Anonymous memory of hugetlb pages: stored as memory, mapped of huge
                    // pages again.
                    m.kind = e.shared ? .sharedAnonymous : .anonymous
                    if hugePageSizes == nil { hugePageSizes = ProcFS.kernelPageSizes(pid) }
                    m.hugePageSize = hugePageSizes?[e.start] ?? 2 << 20
                } else if e.shared && e.path == "/[aio] (deleted)" {
                    m.kind = .aioRing
                    m.path = nil
                    m.object = nil
                    policy = .none
                    try checkAioRing(e, memory)
                } else if Checkpointer.isSegment(e) {
                    m.kind = .sysvShm
                    m.path = e.path.deletedStripped.path
                    m.shmid = Int32(truncatingIfNeeded: e.inode)
                    m.object = nil
                    policy = .segmentData
                } else if e.path.hasPrefix("/") {
                    m.kind = .file
                    let (path, deleted) = e.path.deletedStripped
                    m.path = options.renamedFiles[path] ?? path
                    m.deleted = deleted
                    let code = executableFiles.contains("\(e.device):\(e.inode)")
                    m.file = try files.identify(e, path: path, deleted: deleted, code: code)
                    policy = e.shared ? .none : .privateCopies
                } else {
                    notes.append("mapping \(hex(e.start))-\(hex(e.end)) \(e.path) stored as anonymous memory")
                }
            }
            // Guard pages hold nothing: pages stored before a guard went on are forgotten.
            m.guards = guards[e.start]
            if let g = m.guards { store.forget(g.map { ($0[0], $0[1]) }) }
            if policy == .segmentData {
                m.pages = try store.store(Checkpointer.unguarded(try segmentData(e), m.guards), base: e.start)
            } else if let runs = stable[Checkpointer.stableKey(e)] {
                // A read-only file mapping stored while the process ran, unchanged since.
                m.pages = Checkpointer.unguarded(runs, base: e.start, m.guards)
            } else if policy != .none && ((e.rssKB ?? 1) > 0 || (e.swapKB ?? 1) > 0 || m.hugePageSize != nil) {
                // Tracked memory was stored while the process ran: only the pages written since
                // are stored again now (a fast scan: written pages only); pages it discarded are
                // forgotten first. Untracked memory is stored whole.
                let whole = [PageScanner.Range(start: e.start, end: e.end, file: false, written: true)]
                let (tracked, untrackedSpan) = store.split(whole)
                for t in tracked {
                    // The process is stopped: every CPU can walk its page tables.
                    try store.store(try scanner.scanInParallel(start: t.start, end: t.end, writtenOnly: true), hold: true)
                }
                var untracked: [PageScanner.Range] = []
                for u in untrackedSpan {
                    untracked += try scanner.scanInParallel(start: u.start, end: u.end, fileInfo: policy == .privateCopies)
                }
                if policy == .privateCopies { untracked.removeAll(where: \.file) }
                // Pages shared with the parent copy-on-write: the parent's copy serves both.
                // Not stored here when the mapping's flags are known now (they decide it).
                if let parent = parentForSharing, let maps = pagemaps,
                   let pm = parent.state.mappings.first(where: { m.canShareCopyOnWrite(with: $0) }) {
                    let shared = CopyOnWrite.sharedPages(mine: maps.mine, theirs: maps.theirs, start: e.start, end: e.end)
                    if !shared.isEmpty {
                        sharedWithParent[e.start] = shared
                        if !store.tracking && !m.vmFlags.isEmpty && !pm.vmFlags.isEmpty {
                            unstored.insert(e.start)
                            untracked = PageScanner.subtracting(CopyOnWrite.ranges(of: shared, in: e.start), from: untracked)
                        }
                    }
                }
                let runs = try store.store(untracked, base: e.start)
                if tracked.isEmpty {
                    m.pages = runs
                } else {
                    deferred.append(DeferredRuns(mapping: p.mappings.count, start: e.start, end: e.end, present: tracked, untracked: runs))
                }
            }
            p.mappings.append(m)
            if e.end - e.start > 1 << 26 { stamp("mapping \(hex(e.start)) done") }
        }
        stamp("memory done")
        notes += files.notes
        files.notes = []
        if let exe = files.identity(ofPath: p.exe) { p.exeFile = exe }
    }

    /// The address ranges of an attached System V segment whose pages hold data: the
    /// segment's file is read for its data extents (SEEK_DATA/SEEK_HOLE), so pages another
    /// process wrote count even if this one never touched them.
    func segmentData(_ e: ProcFS.MapsEntry) throws -> [PageScanner.Range] {
        let name = "/proc/\(pid)/map_files/\(String(e.start, radix: 16))-\(String(e.end, radix: 16))"
        let fd = try FileDescriptor.open(name, O_RDONLY, what: "reading System V segment \(e.inode) of pid \(pid)")
        let SEEK_DATA: Int32 = 3, SEEK_HOLE: Int32 = 4   // not exported without _GNU_SOURCE
        let first = Int(e.offset), last = Int(e.offset + (e.end - e.start))
        var ranges: [PageScanner.Range] = []
        var at = first
        while at < last {
            let data = lseek(fd.rawValue, at, SEEK_DATA)
            if data < 0 || data >= last { break }   // ENXIO: no data past `at`
            var hole = lseek(fd.rawValue, data, SEEK_HOLE)
            if hole < 0 || hole > last { hole = last }
            let from = UInt64(data) & ~4095, to = (UInt64(hole) + 4095) & ~4095
            ranges.append(PageScanner.Range(start: e.start + from - e.offset, end: e.start + min(to, UInt64(last)) - e.offset,
                                            file: false, written: true))
            at = Int(to)
        }
        return ranges
    }

    /// Identifies a mapping for `stable`: the same range, permissions, file and offset.
    static func stableKey(_ e: ProcFS.MapsEntry) -> String { "\(e.start)-\(e.end) \(e.perms) \(e.device):\(e.inode) \(e.offset)" }

    /// Stores, while the process runs, the private copies in its read-only file mappings
    /// (relocated data, made read-only after the loader wrote it): they cannot change without
    /// a new mapping or an mprotect, which the final stop would see.
    func storeStableMappings(store: PageStore, scanner: PageScanner, files: inout FileEmbedder) throws -> [String: [PageRun]] {
        var out: [String: [PageRun]] = [:]
        let entries = try ProcFS.maps(pid, withFlags: false)
        let executable = Set(entries.filter { $0.protection & 4 != 0 && $0.inode != 0 }.map { "\($0.device):\($0.inode)" })
        for e in entries where !e.shared && e.protection & 2 == 0 && e.path.hasPrefix("/") {
            let (path, deleted) = e.path.deletedStripped
            _ = try files.identify(e, path: path, deleted: deleted, code: executable.contains("\(e.device):\(e.inode)"))
            var present = try scanner.scan(start: e.start, end: e.end, fileInfo: true)
            present.removeAll(where: \.file)
            out[Checkpointer.stableKey(e)] = try store.store(present, base: e.start)
        }
        return out
    }

    /// An aio context's ring: completed events not reaped yet cannot be put back (the kernel
    /// keeps where its next completion goes to itself) and are refused; requests still in
    /// flight the kernel shows nowhere, so they are noted as not restored.
    func checkAioRing(_ e: ProcFS.MapsEntry, _ memory: ProcessMemory) throws {
        let header = try memory.read(e.start, count: 16)
        func word(_ at: Int) -> UInt32 { header[at..<at + 4].enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * $1.offset) } }
        let nr = word(4), head = word(8), tail = word(12)
        if head != tail, nr > 0 {
            let waiting = (tail &+ nr &- head) % nr
            throw WBError.refused("pid \(pid) cannot be checkpointed: its aio context \(hex(e.start)) holds \(waiting) completed event\(waiting == 1 ? "" : "s") not reaped yet (io_getevents), which wb cannot put back. Nothing was changed; try again once the program has reaped them")
        }
        notes.append("aio context \(hex(e.start)): requests still in flight at the checkpoint, if there were any, are not restored (the kernel shows them nowhere)")
    }
}
