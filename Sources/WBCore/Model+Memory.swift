import Foundation

/// One VMA from /proc/PID/maps, with the pages the image stores for it.
public struct Mapping: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// Private anonymous memory (malloc arenas, thread stacks, ...).
        case anonymous
        /// Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, shows as /dev/zero (deleted)).
        case sharedAnonymous
        /// A mapping of a file.
        case file
        /// An attached System V shared memory segment (shmat), shown as /SYSV<key> (deleted).
        case sysvShm
        case heap, stack, vdso, vvar, vvarVclock, vsyscall
        /// The completion ring of an aio context (io_setup), shown as /[aio] (deleted): its
        /// address is the context's id. Restore makes a context with a ring of the same size
        /// and moves it here (mremap); no pages are stored.
        case aioRing
    }

    public var start: UInt64
    public var end: UInt64
    /// PROT_READ (1) | PROT_WRITE (2) | PROT_EXEC (4).
    public var protection: Int32
    public var shared: Bool
    public var kind: Kind
    /// The file offset of `start` (file mappings).
    public var offset: UInt64
    /// The path as /proc/PID/maps shows it ("(deleted)" stripped; see `deleted`).
    public var path: String?
    public var deleted: Bool
    /// The file's identity and content address, for file mappings.
    public var file: FileIdentity?
    /// The name given with PR_SET_VMA_ANON_NAME, if any.
    public var anonName: String?
    /// The mapping's own NUMA memory policy (mbind), absent when it follows its thread's.
    public var numaPolicy: NUMAPolicy?
    /// VmFlags from /proc/PID/smaps ("gd", "wf", "dc", "hg", ...).
    public var vmFlags: [String]
    /// Page runs stored in the image; pages not listed come from the file or are zero.
    public var pages: [PageRun]
    /// Shared memory (shared anonymous, memfd, deleted files) as "device:inode": mappings of
    /// the same object in several processes of a tree stay one object after restore.
    public var object: String?
    /// For System V shared memory: the segment's id (see ProcessState.sysvSegments).
    public var shmid: Int32?
    /// Guard pages (madvise MADV_GUARD_INSTALL): [start, end) address pairs inside the
    /// mapping, page aligned, in order and apart, where a touch faults and nothing is stored;
    /// restore installs them again after the pages are written. nil when there are none.
    public var guards: [[UInt64]]?
    /// Anonymous memory of huge pages from the hugetlb pool (MAP_HUGETLB, shown as
    /// /anon_hugepage (deleted)): their size in bytes. Restore maps huge pages of that size
    /// again. (Absent: ordinary pages.)
    public var hugePageSize: UInt64?

    public init(start: UInt64, end: UInt64, protection: Int32, shared: Bool, kind: Kind, offset: UInt64, path: String?) {
        self.start = start; self.end = end; self.protection = protection; self.shared = shared
        self.kind = kind; self.offset = offset; self.path = path; deleted = false
        file = nil; anonName = nil; vmFlags = []; pages = []
    }

    public var size: UInt64 { end - start }
    public var pageCount: Int { Int(size / 4096) }
    public var storedPageCount: Int { pages.reduce(0) { $0 + Int($1.count) } }
    /// Pages under guard markers (`guards`).
    public var guardPageCount: Int {
        (guards ?? []).reduce(0) { $0 + ($1.count == 2 && $1[1] > $1[0] ? Int(($1[1] - $1[0]) / 4096) : 0) }
    }

    /// "r-xp" as in /proc/PID/maps.
    public var permissions: String {
        (protection & 1 != 0 ? "r" : "-") + (protection & 2 != 0 ? "w" : "-") +
        (protection & 4 != 0 ? "x" : "-") + (shared ? "s" : "p")
    }

    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }

    /// Whether this mapping of a forked child can hold pages it shares copy-on-write with
    /// `parent`'s mapping: the same range of private memory of ordinary pages, mapped alike
    /// (growing down, without reserve), with nothing that fork would not pass on
    /// (MADV_DONTFORK, MADV_WIPEONFORK) or that restore puts on after the pages (guards).
    /// Pages the child's runs store at the same place as the parent's are shared: restore
    /// gives the child the parent's by fork.
    public func canShareCopyOnWrite(with parent: Mapping) -> Bool {
        func plain(_ m: Mapping) -> Bool {
            !m.shared && [.anonymous, .heap, .stack].contains(m.kind) && m.hugePageSize == nil && (m.guards ?? []).isEmpty
                && !m.vmFlags.contains("dc") && !m.vmFlags.contains("wf")
        }
        return start == parent.start && end == parent.end && kind == parent.kind && plain(self) && plain(parent)
            && vmFlags.contains("gd") == parent.vmFlags.contains("gd") && vmFlags.contains("nr") == parent.vmFlags.contains("nr")
    }

    /// Where each page's data is: (source, offset) of its run, nil for a page not stored.
    public func pageData() -> [(source: UInt32, offset: UInt64)?] {
        var out = [(source: UInt32, offset: UInt64)?](repeating: nil, count: pageCount)
        for r in pages {
            for k in 0..<Int(r.count) where Int(r.page) + k < out.count {
                out[Int(r.page) + k] = (r.source, r.dataOffset + UInt64(k) * 4096)
            }
        }
        return out
    }

    /// Page runs from per-page data locations: consecutive pages whose data follow each other
    /// in one source make one run.
    public static func runs(from data: [(source: UInt32, offset: UInt64)?]) -> [PageRun] {
        var out: [PageRun] = []
        for (i, d) in data.enumerated() {
            guard let d else { continue }
            if let last = out.last, last.source == d.source, Int(last.page + last.count) == i,
               last.dataOffset + last.byteCount == d.offset {
                out[out.count - 1].count += 1
            } else {
                out.append(PageRun(page: UInt32(i), count: 1, dataOffset: d.offset, source: d.source))
            }
        }
        return out
    }

    /// The stored run holding page `page` of this mapping (runs are in page order).
    public func run(containing page: UInt32) -> PageRun? {
        var lo = 0, hi = pages.count - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            let r = pages[mid]
            if page < r.page { hi = mid - 1 } else if page >= r.page + r.count { lo = mid + 1 } else { return r }
        }
        return nil
    }
}

/// A run of consecutive stored pages: `count` pages starting `page` pages into the mapping,
/// whose bytes are at `dataOffset` in the image's page section — or, when `source` is k > 0,
/// in the k-th file of the metadata's `pageSources` (a timeline's page store). Encoded as
/// [page, count, offset] or [page, count, offset, source].
public struct PageRun: Codable, Sendable, Equatable {
    public var page: UInt32
    public var count: UInt32
    public var dataOffset: UInt64
    public var source: UInt32

    public init(page: UInt32, count: UInt32, dataOffset: UInt64, source: UInt32 = 0) {
        self.page = page; self.count = count; self.dataOffset = dataOffset; self.source = source
    }

    public init(from decoder: Decoder) throws {
        var c = try decoder.unkeyedContainer()
        page = try c.decode(UInt32.self)
        count = try c.decode(UInt32.self)
        dataOffset = try c.decode(UInt64.self)
        source = c.isAtEnd ? 0 : try c.decode(UInt32.self)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.unkeyedContainer()
        try c.encode(page)
        try c.encode(count)
        try c.encode(dataOffset)
        if source != 0 { try c.encode(source) }
    }

    public var byteCount: UInt64 { UInt64(count) * 4096 }
}
