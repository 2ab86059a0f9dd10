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
    /// For each of the child's mappings that can share pages with the parent's (by start):
    /// the indexes of the pages it shares. `childPid` and `parentPid` as wb sees them.
    static func sharedPages(child: ProcessState, childPid: Int32, parent: ProcessState, parentPid: Int32) -> [UInt64: [Int]] {
        let pairs = child.mappings.compactMap { m in
            parent.mappings.first { m.canShareCopyOnWrite(with: $0) }.map { (m, $0) }
        }
        guard !pairs.isEmpty,
              let mine = try? FileDescriptor.open("/proc/\(childPid)/pagemap", O_RDONLY),
              let theirs = try? FileDescriptor.open("/proc/\(parentPid)/pagemap", O_RDONLY) else { return [:] }
        let frame: UInt64 = (1 << 55) - 1
        var out: [UInt64: [Int]] = [:]
        for (m, _) in pairs {
            guard let a = try? ProcFS.pagemap(mine, start: m.start, end: m.end),
                  let b = try? ProcFS.pagemap(theirs, start: m.start, end: m.end), a.count == b.count else { continue }
            var shared: [Int] = []
            for i in 0..<a.count where a[i] & ProcFS.pagePresent != 0 && b[i] & ProcFS.pagePresent != 0 {
                let f = a[i] & frame
                if f != 0 && f == b[i] & frame { shared.append(i) }
            }
            if !shared.isEmpty { out[m.start] = shared }
        }
        return out
    }

    /// Points the child's runs for its shared pages at the parent's data for them (a page the
    /// parent stores as zeros, by not storing it, the child does not store either).
    static func share(_ child: inout ProcessState, parent: ProcessState, pages: [UInt64: [Int]]) {
        for (k, m) in child.mappings.enumerated() {
            guard let shared = pages[m.start], let pm = parent.mappings.first(where: { m.canShareCopyOnWrite(with: $0) }) else { continue }
            var data = m.pageData()
            let theirs = pm.pageData()
            for i in shared where i < data.count { data[i] = theirs[i] }
            child.mappings[k].pages = Mapping.runs(from: data)
        }
    }
}
