import CWBNative
import Dispatch
import Foundation
import Glibc

/// Which pages of a process are there: PAGEMAP_SCAN (Linux 6.7+) answers in ranges, so a
/// terabyte reservation with three pages in it costs three entries; older kernels get the
/// one-word-per-page /proc/PID/pagemap.
/// The vector PAGEMAP_SCAN fills, kept by callers that scan often.
public final class ScanVector {
    var regions: [wb_page_region]
    public init(capacity: Int = 4096) { regions = [wb_page_region](repeating: wb_page_region(), count: capacity) }
}

public struct PageScanner: @unchecked Sendable {
    public struct Range: Sendable, Equatable {
        public var start: UInt64
        public var end: UInt64
        /// Backed by a file page (or shared memory), not a private copy.
        public var file: Bool
        /// Written since the range was last write-protected (dirty tracking).
        public var written: Bool
        public init(start: UInt64, end: UInt64, file: Bool, written: Bool) {
            self.start = start; self.end = end; self.file = file; self.written = written
        }
    }

    let pid: Int32
    let pagemap: FileDescriptor
    let ranged: Bool

    public init(pid: Int32) throws {
        self.pid = pid
        pagemap = try FileDescriptor.open("/proc/\(pid)/pagemap", O_RDONLY, what: "opening the page map of pid \(pid)")
        ranged = DirtyTracker.supported
    }

    /// Whether this kernel's PAGEMAP_SCAN tells guard markers (madvise MADV_GUARD_INSTALL)
    /// apart, PAGE_IS_GUARD (Linux 6.14+; older kernels refuse the bit with EINVAL and report
    /// a marker as a swapped page). WB_PAGEMAP_GUARD=unsupported makes wb act as on those.
    public static let knowsGuards: Bool = {
        if ProcessInfo.processInfo.environment["WB_PAGEMAP_GUARD"] == "unsupported" { return false }
        guard let fd = try? FileDescriptor.open("/proc/self/pagemap", O_RDONLY) else { return false }
        var region = wb_page_region()
        var count: UInt64 = 0, walkEnd: UInt64 = 0
        let guardBit = UInt64(WB_PAGE_IS_GUARD)
        return wb_pagemap_scan(fd.rawValue, 0x1000, 0x2000, 0, guardBit, 0, guardBit, &region, 1, &count, &walkEnd) == 0
    }()

    /// The guard markers in [start, end), in address order: pages that fault when touched
    /// and hold no data. Empty when the kernel cannot tell them (`knowsGuards`).
    public func guards(start: UInt64, end: UInt64) throws -> [Range] {
        try guards(start: start, end: end, vector: ScanVector(capacity: 256))
    }

    func guards(start: UInt64, end: UInt64, vector: ScanVector) throws -> [Range] {
        guard ranged, PageScanner.knowsGuards, start < end else { return [] }
        let guardBit = UInt64(WB_PAGE_IS_GUARD)
        var out: [Range] = []
        try walk(start: start, end: end, flags: 0, mask: guardBit, anyof: 0, returned: guardBit, vector: vector) { r in
            if let last = out.last, last.end == r.start { out[out.count - 1].end = r.end; return }
            out.append(Range(start: r.start, end: r.end, file: false, written: false))
        }
        return PageScanner.disjoint(out)
    }

    /// Present or swapped pages of [start, end), guard markers left out (see `guards`).
    /// `writtenOnly` keeps only pages written since they were write-protected, and
    /// `reprotect` protects those again in the same pass.
    /// `fileInfo` asks whether pages are file-backed, which makes the kernel look at every
    /// page's struct page: several times slower.
    /// `trackedOnly` keeps to memory a DirtyTracker write-protects (others count as written).
    public func scan(start: UInt64, end: UInt64, writtenOnly: Bool = false, reprotect: Bool = false,
                     fileInfo: Bool = false, trackedOnly: Bool = false) throws -> [Range] {
        try scan(start: start, end: end, writtenOnly: writtenOnly, reprotect: reprotect, fileInfo: fileInfo,
                 trackedOnly: trackedOnly, vector: ScanVector())
    }

    /// `scan` with a result vector the caller keeps between calls (fuzzing scans several
    /// times per run; a fresh 96 KiB vector each time would cost more than the scan).
    /// `markersPossible: false` is the caller's word that [start, end) holds no guard
    /// markers (it saw none there and watches the calls that make them): a written-only scan
    /// then spares the second walk that looks for them.
    public func scan(start: UInt64, end: UInt64, writtenOnly: Bool = false, reprotect: Bool = false,
                     fileInfo: Bool = false, trackedOnly: Bool = false, vector: ScanVector,
                     markersPossible: Bool = true) throws -> [Range] {
        guard ranged else { return try scanWords(start: start, end: end) }
        var out: [Range] = []
        let there = UInt64(WB_PAGE_IS_PRESENT | WB_PAGE_IS_SWAPPED)
        let written = UInt64(WB_PAGE_IS_WRITTEN), file = fileInfo ? UInt64(WB_PAGE_IS_FILE) : 0
        let swapped = UInt64(WB_PAGE_IS_SWAPPED), guardBit = PageScanner.knowsGuards ? UInt64(WB_PAGE_IS_GUARD) : 0
        // Untracked mappings inside the range are skipped with trackedOnly (by the kernel
        // itself when protecting, which keeps a written-only scan on its fast path);
        // otherwise the kernel is asked to fail on them.
        let flags = UInt64(reprotect ? (WB_PM_SCAN_WP_MATCHING | (trackedOnly ? 0 : WB_PM_SCAN_CHECK_WPASYNC)) : 0)
        // Asking only for the written bit keeps the kernel on its fast path (no page lookups),
        // which cannot tell guard markers: those are looked for afterwards (below).
        let mask = (writtenOnly ? written : 0) | (trackedOnly && !reprotect ? UInt64(WB_PAGE_IS_WPALLOWED) : 0)
        let returned = writtenOnly ? written : there | written | file | guardBit
        // Swapped, not present pages: on a kernel that cannot tell guard markers, they may be.
        var unsure: [Range] = []
        // The kernel can report regions past walk_end (where the next call starts), and when
        // protecting it has protected them already: every region reported is kept, and pages
        // a later call reports again are dropped below.
        try walk(start: start, end: end, flags: flags, mask: mask, anyof: writtenOnly ? 0 : there, returned: returned, vector: vector) { r in
            if r.categories & guardBit != 0 { return }
            let range = Range(start: r.start, end: r.end, file: r.categories & file != 0 && r.categories & swapped == 0,
                              written: r.categories & written != 0)
            out.append(range)
            if !writtenOnly && guardBit == 0 && r.categories & swapped != 0 && r.categories & UInt64(WB_PAGE_IS_PRESENT) == 0 {
                unsure.append(range)
            }
        }
        out = PageScanner.disjoint(out)
        guard writtenOnly, markersPossible, let first = out.first, let last = out.last else {
            try checkReadable(unsure)
            return out
        }
        // A guard marker counts as written until a protecting scan has seen it.
        if PageScanner.knowsGuards {
            let markers = try guards(start: first.start, end: last.end, vector: vector)
            return markers.isEmpty ? out : PageScanner.subtracting(markers, from: out)
        }
        var swappedRanges: [Range] = []
        try walk(start: first.start, end: last.end, flags: 0, mask: swapped, anyof: 0, returned: swapped, vector: vector) {
            swappedRanges.append(Range(start: $0.start, end: $0.end, file: false, written: true))
        }
        try checkReadable(PageScanner.intersecting(swappedRanges, out))
        return out
    }

    /// PAGEMAP_SCAN over [start, end), call after call until the range is covered; `body`
    /// gets each region the kernel reports.
    private func walk(start: UInt64, end: UInt64, flags: UInt64, mask: UInt64, anyof: UInt64, returned: UInt64,
                      vector: ScanVector, _ body: (wb_page_region) throws -> Void) throws {
        var at = start
        while at < end {
            var count: UInt64 = 0, walkEnd: UInt64 = 0
            let e = vector.regions.withUnsafeMutableBufferPointer {
                wb_pagemap_scan(pagemap.rawValue, at, end, flags, mask, anyof, returned, $0.baseAddress, UInt64($0.count), &count, &walkEnd)
            }
            if e == ESRCH { throw WBError.processGone(pid: pid, what: "scanning memory") }
            if e == EAGAIN { usleep(100); continue }   // mappings changing: the event reader catches up
            try check(e, "ioctl(PAGEMAP_SCAN)", "scanning the memory of pid \(pid) at \(hex(at))")
            for r in vector.regions.prefix(Int(count)) { try body(r) }
            if walkEnd <= at || walkEnd >= end { break }
            at = walkEnd
        }
    }

    /// On a kernel that cannot tell guard markers, a page reported swapped may be one: such
    /// memory is read now, and memory that cannot be read is refused, naming its mapping,
    /// rather than failing later as an EIO of the copy.
    private func checkReadable(_ ranges: [Range]) throws {
        guard !ranges.isEmpty else { return }
        let memory = ProcessMemory(pid: pid)
        let chunk = 256 * 4096
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        for r in ranges {
            var at = r.start
            while at < r.end {
                let n = min(UInt64(chunk), r.end - at)
                do {
                    try memory.read(ranges: [at, n], into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(n)]))
                } catch {
                    if case WBError.processGone = error { throw error }
                    let e = (try? ProcFS.maps(pid, withFlags: false))?.first { $0.start <= at && at < $0.end }
                    let name = e.map { "\(hex($0.start))-\(hex($0.end)) \($0.path.isEmpty ? "[anon]" : $0.path)" } ?? "at \(hex(at))"
                    throw WBError.refused("mapping \(name) has pages reported as swapped that cannot be read, "
                        + "most likely guard pages (MADV_GUARD_INSTALL), which this kernel's PAGEMAP_SCAN does not tell apart (Linux 6.14 and later do)")
                }
                at += n
            }
        }
    }

    /// `ranges` less the pages of `removed` (both in address order, disjoint).
    public static func subtracting(_ removed: [Range], from ranges: [Range]) -> [Range] {
        var out: [Range] = []
        var k = 0
        for r in ranges {
            var piece = r
            while k < removed.count && removed[k].end <= piece.start { k += 1 }
            var j = k
            while j < removed.count && removed[j].start < piece.end {
                if removed[j].start > piece.start {
                    var before = piece
                    before.end = removed[j].start
                    out.append(before)
                }
                piece.start = max(piece.start, removed[j].end)
                if piece.start >= piece.end { break }
                j += 1
            }
            if piece.start < piece.end { out.append(piece) }
        }
        return out
    }

    /// The pages both lists hold (both in address order, disjoint).
    static func intersecting(_ a: [Range], _ b: [Range]) -> [Range] {
        var out: [Range] = []
        var i = 0, j = 0
        while i < a.count && j < b.count {
            let lo = max(a[i].start, b[j].start), hi = min(a[i].end, b[j].end)
            if lo < hi { out.append(Range(start: lo, end: hi, file: b[j].file, written: b[j].written)) }
            if a[i].end < b[j].end { i += 1 } else { j += 1 }
        }
        return out
    }

    /// Ranges in address order with no page in two of them.
    static func disjoint(_ ranges: [Range]) -> [Range] {
        var sorted = ranges
        if !zip(sorted, sorted.dropFirst()).allSatisfy({ $0.end <= $1.start }) { sorted.sort { $0.start < $1.start } } else { return ranges }
        var out: [Range] = []
        for var r in sorted {
            if let last = out.last, r.start < last.end {
                guard r.end > last.end else { continue }
                r.start = last.end
            }
            out.append(r)
        }
        return out
    }

    /// `scan` of a large range split over the CPUs: the kernel's page-table walk is the whole
    /// cost of scanning gigabytes, and it parallelizes.
    public func scanInParallel(start: UInt64, end: UInt64, writtenOnly: Bool = false, fileInfo: Bool = false) throws -> [Range] {
        let parts = min(ProcessInfo.processInfo.activeProcessorCount, 8)
        guard parts > 1, ranged, end - start >= 256 << 20 else {
            return try scan(start: start, end: end, writtenOnly: writtenOnly, fileInfo: fileInfo)
        }
        let step = ((end - start) / UInt64(parts) + 0x1FFFFF) & ~0x1FFFFF
        let results = UnsafeMutableBufferPointer<Result<[Range], Error>>.allocate(capacity: parts)
        results.initialize(repeating: .success([]))
        defer { results.deallocate() }
        let this = self
        nonisolated(unsafe) let out = results
        DispatchQueue.concurrentPerform(iterations: parts) { i in
            let a = start + UInt64(i) * step, b = min(end, a + step)
            out[i] = a < b ? Result { try this.scan(start: a, end: b, writtenOnly: writtenOnly, fileInfo: fileInfo) } : .success([])
        }
        var all: [Range] = []
        for r in results { all += try r.get() }
        return all
    }

    private func scanWords(start: UInt64, end: UInt64) throws -> [Range] {
        var out: [Range] = []
        var first = start
        while first < end {
            let last = min(end, first + (UInt64(1) << 28))
            let words = try ProcFS.pagemap(pagemap, start: first, end: last)
            // Bit 58 is a guard marker (Linux 6.14+; kernels without PAGEMAP_SCAN have none).
            for (i, w) in words.enumerated() where w & (ProcFS.pagePresent | ProcFS.pageSwapped) != 0 && w & (1 << 58) == 0 {
                let a = first + UInt64(i) * 4096
                let file = w & ProcFS.pageFileOrSharedAnon != 0 && w & ProcFS.pageSwapped == 0
                if var l = out.last, l.end == a, l.file == file {
                    l.end = a + 4096
                    out[out.count - 1] = l
                } else {
                    out.append(Range(start: a, end: a + 4096, file: file, written: true))
                }
            }
            first = last
        }
        return out
    }
}
