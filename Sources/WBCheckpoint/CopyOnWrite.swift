import Foundation
import Glibc
import WBTrace

/// Pages a forked child still shares with its parent copy-on-write: at the same address of
/// the same private memory, one physical page for both (the same page frame number in their
/// /proc/PID/pagemap, read while the tree is stopped; root sees frame numbers). The image
/// says so by the child's page runs naming the parent's copy of those pages, so the image
/// holds their data once for both, and restore gives the child those pages by forking it
/// from its rebuilt parent (Restorer+Tree) instead of writing a copy of its own.
enum CopyOnWrite {
    /// The indexes of the pages of [start, end) that a process shares with its parent, from
    /// their page maps (/proc/PID/pagemap of each, opened once per capture).
    static func sharedPages(mine: FileDescriptor, theirs: FileDescriptor, start: UInt64, end: UInt64) -> [Int] {
        guard let a = try? ProcFS.pagemap(mine, start: start, end: end),
              let b = try? ProcFS.pagemap(theirs, start: start, end: end), a.count == b.count else { return [] }
        var shared: [Int] = []
        for i in 0..<a.count where a[i] & ProcFS.pagePresent != 0 && b[i] & ProcFS.pagePresent != 0 {
            let f = a[i] & ProcFS.pageFrame
            if f != 0 && f == b[i] & ProcFS.pageFrame { shared.append(i) }
        }
        return shared
    }

    /// The pages `pages` (indexes, ascending) of a mapping at `start` as address ranges.
    static func ranges(of pages: [Int], in start: UInt64) -> [PageScanner.Range] {
        var out: [PageScanner.Range] = []
        for i in pages {
            let a = start + UInt64(i) * 4096
            if let last = out.last, last.end == a { out[out.count - 1].end = a + 4096; continue }
            out.append(PageScanner.Range(start: a, end: a + 4096, file: false, written: true))
        }
        return out
    }

    /// Points the child's runs for its shared pages at the parent's data for them (a page the
    /// parent stores as zeros, by not storing it, the child does not store either). Pages
    /// of mappings in `unstored` were not stored for the child: such a mapping must still
    /// be one it shares with the parent now that both are captured whole.
    static func share(_ child: inout ProcessState, parent: ProcessState, pages: [UInt64: [Int]], unstored: Set<UInt64>) throws {
        for (k, m) in child.mappings.enumerated() {
            guard let shared = pages[m.start] else { continue }
            guard let pm = parent.mappings.first(where: { m.canShareCopyOnWrite(with: $0) }) else {
                if unstored.contains(m.start) {
                    throw WBError.failed("pid \(child.pid)'s pages at \(hex(m.start)) were left to its parent \(parent.pid)'s copy, but the two mappings no longer match; nothing was written: checkpoint again")
                }
                continue
            }
            var data = m.pageData()
            let theirs = pm.pageData()
            for i in shared where i < data.count { data[i] = theirs[i] }
            child.mappings[k].pages = Mapping.runs(from: data)
        }
    }
}
