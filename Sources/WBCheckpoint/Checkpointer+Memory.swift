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
}

extension Checkpointer {
    /// Copies memory into the image: for each mapping, the pages pagemap says are there and
    /// that are not all zeros, in runs, through large process_vm_readv batches.
    func captureMemory(_ tracee: Tracee, into p: inout ProcessState, writer: ImageWriter) throws -> FileEmbedder {
        let entries = try ProcFS.maps(pid)
        let pagemap = try FileDescriptor.open("/proc/\(pid)/pagemap", O_RDONLY, what: "opening the page map of pid \(pid)")
        let copier = PageCopier(tracee: tracee, writer: writer, shouldStop: { [unowned self] in try self.checkStop() })
        defer { copier.release() }
        var files = FileEmbedder(pid: pid, writer: writer, embedLimit: options.embedLimit, exe: p.exe)
        let executableFiles = Set(entries.filter { $0.protection & 4 != 0 && $0.inode != 0 }.map { "\($0.device):\($0.inode)" })
        for e in entries {
            var m = Mapping(start: e.start, end: e.end, protection: e.protection, shared: e.shared,
                            kind: .anonymous, offset: e.offset, path: nil)
            m.vmFlags = e.vmFlags
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
                } else if e.path.hasPrefix("/") {
                    m.kind = .file
                    let (path, deleted) = e.path.deletedStripped
                    m.path = path
                    m.deleted = deleted
                    let code = executableFiles.contains("\(e.device):\(e.inode)")
                    m.file = try files.identify(e, path: path, deleted: deleted, code: code)
                    policy = e.shared ? .none : .privateCopies
                } else {
                    notes.append("mapping \(hex(e.start))-\(hex(e.end)) \(e.path) stored as anonymous memory")
                }
            }
            if policy != .none && ((e.rssKB ?? 1) > 0 || (e.swapKB ?? 1) > 0) {
                m.pages = try copier.copy(mapping: e, policy: policy, pagemap: pagemap)
            }
            p.mappings.append(m)
        }
        notes += files.notes
        if let exe = files.identity(ofPath: p.exe) { p.exeFile = exe }
        return files
    }
}

/// Moves pages from the tracee into the image in batches of up to 8 MiB.
final class PageCopier {
    let tracee: Tracee
    let writer: ImageWriter
    let capacity = 8 << 20
    let buffer: UnsafeMutableRawBufferPointer
    let checkStop: () throws -> Void

    init(tracee: Tracee, writer: ImageWriter, shouldStop: @escaping () throws -> Void) {
        self.tracee = tracee
        self.writer = writer
        checkStop = shouldStop
        buffer = .allocate(byteCount: capacity, alignment: 4096)
    }

    func release() { buffer.deallocate() }

    func copy(mapping e: ProcFS.MapsEntry, policy: PagePolicy, pagemap: FileDescriptor) throws -> [PageRun] {
        var runs: [PageRun] = []
        var batch: [Int] = []           // page indexes within the mapping
        let pages = Int((e.end - e.start) / 4096)
        let window = 1 << 16            // pagemap entries read at a time
        var first = 0
        while first < pages {
            let last = min(pages, first + window)
            let entries = try ProcFS.pagemap(pagemap, start: e.start + UInt64(first) * 4096, end: e.start + UInt64(last) * 4096)
            for (i, entry) in entries.enumerated() {
                let there = entry & (ProcFS.pagePresent | ProcFS.pageSwapped) != 0
                guard there else { continue }
                if policy == .privateCopies && entry & ProcFS.pageFileOrSharedAnon != 0 && entry & ProcFS.pageSwapped == 0 { continue }
                batch.append(first + i)
                if batch.count * 4096 == capacity {
                    try flush(batch, mapping: e, into: &runs)
                    batch.removeAll(keepingCapacity: true)
                }
            }
            first = last
        }
        if !batch.isEmpty { try flush(batch, mapping: e, into: &runs) }
        return runs
    }

    /// Reads the pages, drops the all-zero ones, writes the rest as one block and records
    /// the runs they form.
    private func flush(_ pages: [Int], mapping e: ProcFS.MapsEntry, into runs: inout [PageRun]) throws {
        try checkStop()
        var ranges: [UInt64] = []
        var i = 0
        while i < pages.count {
            var j = i
            while j + 1 < pages.count && pages[j + 1] == pages[j] + 1 { j += 1 }
            ranges.append(e.start + UInt64(pages[i]) * 4096)
            ranges.append(UInt64(j - i + 1) * 4096)
            i = j + 1
        }
        let bytes = pages.count * 4096
        try tracee.read(ranges: ranges, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes]))
        var kept: [Int] = []
        var out = 0
        for (k, page) in pages.enumerated() {
            let src = buffer.baseAddress! + k * 4096
            if isZeroPage(src) { continue }
            if out != k { (buffer.baseAddress! + out * 4096).copyMemory(from: src, byteCount: 4096) }
            kept.append(page)
            out += 1
        }
        guard out > 0 else { return }
        let base = try writer.appendPages(UnsafeRawBufferPointer(rebasing: buffer[0..<(out * 4096)]))
        for (k, page) in kept.enumerated() {
            let offset = base + UInt64(k) * 4096
            if var last = runs.last, Int(last.page + last.count) == page, last.dataOffset + last.byteCount == offset {
                last.count += 1
                runs[runs.count - 1] = last
            } else {
                runs.append(PageRun(page: UInt32(page), count: 1, dataOffset: offset))
            }
        }
    }
}

@inline(__always) func isZeroPage(_ p: UnsafeRawPointer) -> Bool {
    MemoryCompare.isZero(p, count: 4096)
}
