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

    /// Present or swapped pages of [start, end). `writtenOnly` keeps only pages written since
    /// they were write-protected, and `reprotect` protects those again in the same pass.
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
    public func scan(start: UInt64, end: UInt64, writtenOnly: Bool = false, reprotect: Bool = false,
                     fileInfo: Bool = false, trackedOnly: Bool = false, vector: ScanVector) throws -> [Range] {
        guard ranged else { return try scanWords(start: start, end: end) }
        var out: [Range] = []
        let there = UInt64(WB_PAGE_IS_PRESENT | WB_PAGE_IS_SWAPPED)
        let written = UInt64(WB_PAGE_IS_WRITTEN), file = fileInfo ? UInt64(WB_PAGE_IS_FILE) : 0
        // Untracked mappings inside the range are skipped with trackedOnly (by the kernel
        // itself when protecting, which keeps a written-only scan on its fast path);
        // otherwise the kernel is asked to fail on them.
        let flags = UInt64(reprotect ? (WB_PM_SCAN_WP_MATCHING | (trackedOnly ? 0 : WB_PM_SCAN_CHECK_WPASYNC)) : 0)
        var at = start
        while at < end {
            var count: UInt64 = 0, walkEnd: UInt64 = 0
            // Asking only for the written bit keeps the kernel on its fast path (no page lookups).
            let e = vector.regions.withUnsafeMutableBufferPointer {
                wb_pagemap_scan(pagemap.rawValue, at, end, flags,
                                (writtenOnly ? written : 0) | (trackedOnly && !reprotect ? UInt64(WB_PAGE_IS_WPALLOWED) : 0), writtenOnly ? 0 : there,
                                writtenOnly ? written : there | written | file, $0.baseAddress, UInt64($0.count), &count, &walkEnd)
            }
            if e == ESRCH { throw WBError.processGone(pid: pid, what: "scanning memory") }
            if e == EAGAIN { usleep(100); continue }   // mappings changing: the event reader catches up
            try check(e, "ioctl(PAGEMAP_SCAN)", "scanning the memory of pid \(pid) at \(hex(at))")
            // The kernel can report regions past walk_end (where the next call starts), and
            // when protecting it has protected them already: every region reported is kept,
            // and pages a later call reports again are dropped below.
            for r in vector.regions.prefix(Int(count)) {
                out.append(Range(start: r.start, end: r.end, file: r.categories & file != 0 && r.categories & UInt64(WB_PAGE_IS_SWAPPED) == 0,
                                 written: r.categories & written != 0))
            }
            if walkEnd <= at || walkEnd >= end { break }
            at = walkEnd
        }
        return PageScanner.disjoint(out)
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
            for (i, w) in words.enumerated() where w & (ProcFS.pagePresent | ProcFS.pageSwapped) != 0 {
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
