import Foundation
import Glibc
import WBTrace

/// Puts pages of a process into the image's page section, 8 MiB of reads at a time. All-zero
/// pages are not stored. Pages in tracked ranges remember where they went, so that a page
/// written again later is stored again in the same place; the image's page runs for a
/// mapping are then built from what is where.
final class PageStore {
    let memory: ProcessMemory
    let writer: ImageWriter
    let checkStop: () throws -> Void
    private static let capacity = 8 << 20
    /// Two buffers: pages are read into one while the other's are written to the image (each
    /// buffer's group is done once its writes are).
    private let buffers: [UnsafeMutableRawBufferPointer]
    private let writes = [DispatchGroup(), DispatchGroup()]
    private var next = 0
    /// Tracked ranges and the data offset of each of their pages (UInt64.max: not stored).
    private var tables: [(start: UInt64, end: UInt64, offsets: [UInt64])] = []
    private(set) var storedBytes: UInt64 = 0
    private(set) var rewrittenBytes: UInt64 = 0

    init(memory: ProcessMemory, writer: ImageWriter, checkStop: @escaping () throws -> Void) {
        self.memory = memory
        self.writer = writer
        self.checkStop = checkStop
        buffers = (0..<2).map { _ in .allocate(byteCount: PageStore.capacity, alignment: 4096) }
    }

    deinit {
        for g in writes { g.wait() }
        for b in buffers { b.deallocate() }
        for h in held where h.owned { h.data.deallocate() }
        holdSpace?.deallocate()
    }

    /// Starts remembering the pages of [start, end).
    func track(start: UInt64, end: UInt64) {
        tables.append((start, end, [UInt64](repeating: .max, count: Int((end - start) / 4096))))
        tables.sort { $0.start < $1.start }
    }

    private func table(for address: UInt64) -> Int? {
        var lo = 0, hi = tables.count - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            if address < tables[mid].start { hi = mid - 1 } else if address >= tables[mid].end { lo = mid + 1 } else { return mid }
        }
        return nil
    }

    var tracking: Bool { !tables.isEmpty }


    /// `ranges` cut into the parts inside tracked ranges and the parts outside.
    func split(_ ranges: [PageScanner.Range]) -> (tracked: [PageScanner.Range], untracked: [PageScanner.Range]) {
        var tracked: [PageScanner.Range] = [], untracked: [PageScanner.Range] = []
        for r in ranges {
            var a = r.start
            while a < r.end {
                var piece = r
                piece.start = a
                if let t = table(for: a) {
                    piece.end = min(r.end, tables[t].end)
                    tracked.append(piece)
                } else {
                    let next = tables.first { $0.start > a }?.start ?? r.end
                    piece.end = min(r.end, next)
                    untracked.append(piece)
                }
                a = piece.end
            }
        }
        return (tracked, untracked)
    }

    /// Pages of tracked memory read with `hold` and not written to the image yet (`owned`:
    /// memory of their own, not part of `holdSpace`).
    private var held: [(pages: [UInt64], data: UnsafeMutableRawBufferPointer, owned: Bool)] = []
    /// Memory for `store(hold:)`, made ready while the process runs (see `reserveHold`).
    private var holdSpace: UnsafeMutableRawBufferPointer?
    private var holdUsed = 0

    /// Makes room for about `bytes` of pages to be read with `hold`, every page of it touched
    /// now: a stopped process then waits for no page faults of wb's own (on a machine that
    /// hands its free memory back to the host, new memory costs more than the reads).
    func reserveHold(_ bytes: UInt64) {
        let want = min(32 << 20, max(2 << 20, (Int(bytes) * 2 + 4095) & ~4095))
        guard held.isEmpty, (holdSpace?.count ?? 0) < want else { return }
        holdSpace?.deallocate()
        let space = UnsafeMutableRawBufferPointer.allocate(byteCount: want, alignment: 4096)
        space.initializeMemory(as: UInt8.self, repeating: 0)
        holdSpace = space
    }

    /// Stores the pages of `ranges` (stored again in place when they were stored before).
    /// Returns the page runs for the pages of untracked memory, relative to `base`. With
    /// `hold` (tracked pages only) the pages are only read into memory now, the fast part,
    /// and written to the image by `writeHeld`, so a stopped process waits for reads only.
    @discardableResult
    func store(_ ranges: [PageScanner.Range], base: UInt64 = 0, hold: Bool = false) throws -> [PageRun] {
        var runs: [PageRun] = []
        var batch: [UInt64] = []
        func flush() throws {
            try checkStop()
            if hold {
                let bytes = batch.count * 4096
                let data: UnsafeMutableRawBufferPointer
                let owned: Bool
                if let space = holdSpace, holdUsed + bytes <= space.count {
                    data = UnsafeMutableRawBufferPointer(rebasing: space[holdUsed..<(holdUsed + bytes)])
                    holdUsed += bytes
                    owned = false
                } else {
                    data = .allocate(byteCount: bytes, alignment: 4096)
                    owned = true
                }
                held.append((batch, data, owned))
                try read(batch, into: data)
            } else {
                let i = next
                next ^= 1
                writes[i].wait()
                try read(batch, into: buffers[i])
                try place(batch, from: buffers[i], base: base, runs: &runs, group: writes[i])
            }
            batch.removeAll(keepingCapacity: true)
        }
        for r in ranges {
            var a = r.start
            while a < r.end {
                batch.append(a)
                if batch.count * 4096 == PageStore.capacity { try flush() }
                a += 4096
            }
        }
        if !batch.isEmpty { try flush() }
        return runs
    }

    /// Writes the pages `store(hold:)` read.
    func writeHeld() throws {
        var ignored: [PageRun] = []
        let group = DispatchGroup()
        defer {
            group.wait()
            for h in held where h.owned { h.data.deallocate() }
            held = []
            holdSpace?.deallocate()
            holdSpace = nil
            holdUsed = 0
        }
        for (pages, data, _) in held {
            try place(pages, from: data, base: 0, runs: &ignored, group: group)
        }
    }

    private func read(_ pages: [UInt64], into data: UnsafeMutableRawBufferPointer) throws {
        var ranges: [UInt64] = []
        var i = 0
        while i < pages.count {
            var j = i
            while j + 1 < pages.count && pages[j + 1] == pages[j] + 4096 { j += 1 }
            ranges += [pages[i], UInt64(j - i + 1) * 4096]
            i = j + 1
        }
        try memory.readKeepingShared(ranges: ranges, into: UnsafeMutableRawBufferPointer(rebasing: data[0..<(pages.count * 4096)]))
    }

    /// Puts read pages into the image: back in place when stored before, else appended.
    /// The writes go to the background under `group`; `buffer` is left alone until it is done.
    private func place(_ pages: [UInt64], from buffer: UnsafeMutableRawBufferPointer, base: UInt64, runs: inout [PageRun],
                       group: DispatchGroup) throws {
        // Pages stored before go back to their place, in groups that lie together.
        var k = 0
        var fresh: [Int] = []
        var rewrites: [(bytes: UnsafeRawBufferPointer, offset: UInt64)] = []
        while k < pages.count {
            guard let t = table(for: pages[k]) else { fresh.append(k); k += 1; continue }
            let index = Int((pages[k] - tables[t].start) / 4096)
            let offset = tables[t].offsets[index]
            if offset == .max { fresh.append(k); k += 1; continue }
            var n = 1
            while k + n < pages.count, pages[k + n] == pages[k] + UInt64(n) * 4096, index + n < tables[t].offsets.count,
                  tables[t].offsets[index + n] == offset + UInt64(n) * 4096 { n += 1 }
            rewrites.append((UnsafeRawBufferPointer(rebasing: buffer[(k * 4096)..<((k + n) * 4096)]), offset))
            rewrittenBytes += UInt64(n) * 4096
            k += n
        }
        if !rewrites.isEmpty { try writer.rewritePages(rewrites, group: group) }
        // New non-zero pages are packed to the front and appended in one write.
        var kept: [Int] = []
        // Packing moves pages over others: rewrites of this buffer must be out first.
        if !fresh.isEmpty && fresh.count < pages.count { group.wait() }
        for k in fresh {
            let src = buffer.baseAddress! + k * 4096
            if MemoryCompare.isZero(src, count: 4096) { continue }
            let dst = kept.count
            if dst != k { (buffer.baseAddress! + dst * 4096).copyMemory(from: src, byteCount: 4096) }
            kept.append(k)
        }
        guard !kept.isEmpty else { return }
        let at = try writer.appendPages(UnsafeRawBufferPointer(rebasing: buffer[0..<(kept.count * 4096)]), group: group)
        storedBytes += UInt64(kept.count) * 4096
        for (n, k) in kept.enumerated() {
            let offset = at + UInt64(n) * 4096
            if let t = table(for: pages[k]) {
                tables[t].offsets[Int((pages[k] - tables[t].start) / 4096)] = offset
            } else {
                PageStore.append(page: UInt32((pages[k] - base) / 4096), offset: offset, to: &runs)
            }
        }
    }

    /// The stored runs of a tracked mapping [start, end), for the pages `present` says are
    /// there now (pages gone since they were stored are not part of the image).
    func runs(start: UInt64, end: UInt64, present: [PageScanner.Range]) -> [PageRun] {
        var runs: [PageRun] = []
        for r in present {
            var a = max(r.start, start)
            let stop = min(r.end, end)
            while a < stop {
                guard let t = table(for: a) else { a += 4096; continue }
                let table = tables[t]
                var index = Int((a - table.start) / 4096)
                let last = Int((min(stop, table.end) - table.start) / 4096)
                while index < last {
                    let offset = table.offsets[index]
                    if offset != .max {
                        PageStore.append(page: UInt32((table.start + UInt64(index) * 4096 - start) / 4096), offset: offset, to: &runs)
                    }
                    index += 1
                }
                a = table.start + UInt64(last) * 4096
            }
        }
        return runs
    }

    /// Forgets the pages of `ranges`: the process discarded them, so they are zero (or come
    /// back as written pages, stored anew).
    func forget(_ ranges: [(start: UInt64, end: UInt64)]) {
        for r in ranges {
            var a = r.start & ~4095
            while a < r.end {
                if let t = table(for: a) {
                    let last = Int((min(r.end, tables[t].end) - tables[t].start + 4095) / 4096)
                    for i in Int((a - tables[t].start) / 4096)..<last { tables[t].offsets[i] = .max }
                    a = tables[t].start + UInt64(last) * 4096
                } else {
                    a = tables.first { $0.start > a }?.start ?? r.end
                }
            }
        }
    }

    /// Two lists of runs of one mapping, merged in page order.
    static func merge(_ a: [PageRun], _ b: [PageRun]) -> [PageRun] {
        var out: [PageRun] = []
        var i = 0, j = 0
        while i < a.count || j < b.count {
            let next: PageRun
            if j >= b.count || (i < a.count && a[i].page < b[j].page) { next = a[i]; i += 1 } else { next = b[j]; j += 1 }
            if var last = out.last, last.page + last.count == next.page, last.dataOffset + last.byteCount == next.dataOffset {
                last.count += next.count
                out[out.count - 1] = last
            } else {
                out.append(next)
            }
        }
        return out
    }

    static func append(page: UInt32, offset: UInt64, to runs: inout [PageRun]) {
        if var last = runs.last, last.page + last.count == page, last.dataOffset + last.byteCount == offset {
            last.count += 1
            runs[runs.count - 1] = last
        } else {
            runs.append(PageRun(page: page, count: 1, dataOffset: offset))
        }
    }
}
