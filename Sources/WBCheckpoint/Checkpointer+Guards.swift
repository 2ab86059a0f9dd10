import WBCore
import WBTrace

/// Guard pages (madvise MADV_GUARD_INSTALL, Linux 6.13+) are page-table markers, not
/// memory: the image records where they are for each mapping (`Mapping.guards`) and stores no
/// data for them, and restore puts them back once the pages are in.
extension Checkpointer {
    /// The guard ranges of every mapping of `entries` that can have them, by mapping start:
    /// one scan over the address space (unmapped space costs the walk nothing), cut at
    /// mapping boundaries. Empty when the kernel cannot tell guard markers (PageScanner
    /// then refuses memory it cannot read).
    func guardRanges(_ entries: [ProcFS.MapsEntry], scanner: PageScanner) throws -> [UInt64: [[UInt64]]] {
        // The kernel's own mappings take no guards; [vsyscall] is beyond user space.
        let special: Set<String> = ["[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"]
        let candidates = entries.filter { !special.contains($0.path) && $0.end <= 1 << 47 }
        guard let first = candidates.first, let last = candidates.last else { return [:] }
        let found = try scanner.guards(start: first.start, end: last.end)
        guard !found.isEmpty else { return [:] }
        var out: [UInt64: [[UInt64]]] = [:]
        var k = 0
        for e in candidates {
            while k < found.count && found[k].end <= e.start { k += 1 }
            var j = k
            while j < found.count && found[j].start < e.end {
                out[e.start, default: []].append([max(found[j].start, e.start), min(found[j].end, e.end)])
                j += 1
            }
        }
        return out
    }

    /// `ranges` (in address order) less the pages under `guards` ([start, end) pairs in order).
    static func unguarded(_ ranges: [PageScanner.Range], _ guards: [[UInt64]]?) -> [PageScanner.Range] {
        guard let guards, !guards.isEmpty else { return ranges }
        let markers = guards.map { PageScanner.Range(start: $0[0], end: $0[1], file: false, written: false) }
        return PageScanner.subtracting(markers, from: ranges)
    }

    /// Page runs of a mapping starting at `base` less the pages under `guards`: runs stored
    /// while the process ran, before a guard went on.
    static func unguarded(_ runs: [PageRun], base: UInt64, _ guards: [[UInt64]]?) -> [PageRun] {
        guard let guards, !guards.isEmpty else { return runs }
        var out: [PageRun] = []
        for r in runs {
            var page = r.page
            let end = r.page + r.count
            while page < end {
                let address = base + UInt64(page) * 4096
                if let g = guards.first(where: { $0[0] <= address && address < $0[1] }) {
                    page = min(end, UInt32((g[1] - base) / 4096))
                    continue
                }
                let next = guards.first { $0[0] > address }.map { UInt32(($0[0] - base) / 4096) } ?? end
                let stop = min(end, next)
                out.append(PageRun(page: page, count: stop - page, dataOffset: r.dataOffset + UInt64(page - r.page) * 4096, source: r.source))
                page = stop
            }
        }
        return out
    }
}
