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
                       writer: ImageWriter, deferred: inout [DeferredRuns]) throws -> FileEmbedder {
        let entries = try ProcFS.maps(pid, withFlags: !store.tracking)
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
                var present = try scanner.scanInParallel(start: e.start, end: e.end, fileInfo: policy == .privateCopies)
                if policy == .privateCopies { present.removeAll(where: \.file) }
                let (tracked, untracked) = store.split(present)
                // Tracked memory was stored while the process ran: only pages written since
                // are stored again now.
                try store.store(tracked.filter(\.written), hold: true)
                let runs = try store.store(untracked, base: e.start)
                if tracked.isEmpty {
                    m.pages = runs
                } else {
                    deferred.append(DeferredRuns(mapping: p.mappings.count, start: e.start, end: e.end, present: tracked, untracked: runs))
                }
            }
            p.mappings.append(m)
        }
        notes += files.notes
        if let exe = files.identity(ofPath: p.exe) { p.exeFile = exe }
        return files
    }
}
