import Foundation
import Glibc
import WBTrace

/// Reads back what a restore built, before the process runs, and compares it with the image:
/// the memory map with each mapping's protections, kernel flags and guard pages, every fd's
/// kind, target, flags, offset and close-on-exec, the threads, signal dispositions, masks and
/// pending signals, umask and working directory. Every difference is named (process, field, what the
/// image has and what came back): the restore ends with it, or runs with it as a note when the
/// user forces it. So a restored process is the one the image holds, or the user is told how it
/// is not. (Credentials and the rest of the security state are audited by SecurityBuilder.)
struct RestoreAudit {
    let process: ProcessState
    /// The restored process as wb sees it.
    let pid: Int32
    /// Differences already told to the user as notes (so not differences any more).
    let noted: [String]
    /// Files the process was given copies of (bisect, replays).
    let copies: PrivateFiles?
    /// Fds wb put /dev/null on by request (RestoreOptions.silenceOutput): not the image's.
    var silenced: Set<Int32> = []
    /// The flags (with O_CLOEXEC) of the process's sockets, read back in it once its fds were
    /// built (`Restorer.readBackSocketFlags`), when it has many.
    var socketInfo: [Int32: ProcFS.FDInfo] = [:]

    /// VmFlags whose loss or gain changes what the process can do: access (rd wr ex sh),
    /// what mprotect may later allow (mr mw me ms), growth (gd), locking (lo), madvise
    /// advice (dc don't-fork, dd don't-dump, wf wipe-on-fork, hg/nh huge pages, sr/rr
    /// access patterns, mg KSM merging), sealing (sl).
    static let auditedFlags: Set<String> = ["rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "lo", "lf", "dc", "dd", "wf", "hg", "nh", "sr", "rr", "sl", "mg"]

    /// With WB_TIMING, a moment of the audit on stderr (as the restore's steps).
    static func mark(_ what: String) {
        if Restorer.timing { FileHandle.standardError.write(Data(String(format: "wb-timing %.0f audit: %@\n", Clock.monotonic * 1e9, what).utf8)) }
    }

    /// Everything found different, each named.
    func differences() throws -> [String] {
        var out: [String] = []
        try memory(&out)
        RestoreAudit.mark("memory")
        try files(&out)
        RestoreAudit.mark("files")
        try signals(&out)
        let status = try ProcFS.status(pid)
        if let umask = status["Umask"].flatMap({ UInt32($0, radix: 8) }), umask != process.umask {
            out.append("umask \(String(umask, radix: 8)) (the image has \(String(process.umask, radix: 8)))")
        }
        if let k = process.knobs, let adj = Int32(((try? Paths.readText("/proc/\(pid)/oom_score_adj")) ?? "").trimming("\n")),
           adj != k.oomScoreAdj, !noted.contains(where: { $0.contains("oom_score_adj") }) {
            out.append("oom_score_adj \(adj) (the image has \(k.oomScoreAdj))")
        }
        if process.controllingPty != nil, let stat = try? ProcFS.stat(pid), (Int(stat[7] ?? "0") ?? 0) == 0 {
            out.append("no controlling terminal (the image has /dev/pts/\(process.controllingPty!))")
        }
        if let n = status["Threads"].flatMap({ Int($0) }), n != process.threads.count {
            out.append("\(n) threads (the image has \(process.threads.count))")
        }
        if let cwd = try? Paths.readLink("/proc/\(pid)/cwd"), cwd != process.cwd, !noted.contains(where: { $0.contains(process.cwd) }),
           process.root == "/" {
            out.append("working directory \(cwd) (the image has \(process.cwd))")
        }
        return out
    }

    private func memory(_ out: inout [String]) throws {
        // Both lists are in address order (the image's is checked to be when it is decoded):
        // one pass over each finds the entries a mapping overlaps.
        let here = try ProcFS.maps(pid, withFlags: true)
        let skipped: Set<Mapping.Kind> = [.vdso, .vvar, .vvarVclock, .vsyscall]
        var first = 0
        for m in process.mappings where !skipped.contains(m.kind) {
            let name = "mapping \(hex(m.start))-\(hex(m.end)) (\(m.path ?? m.kind.rawValue))"
            while first < here.count && here[first].end <= m.start { first += 1 }
            let parts = here[first...].prefix { $0.start < m.end }
            var covered = m.start
            for e in parts {
                guard e.start <= covered else { break }
                covered = max(covered, e.end)
            }
            guard covered >= m.end else {
                out.append("\(name) is not mapped whole")
                continue
            }
            for e in parts {
                if e.perms != m.permissions {
                    out.append("\(name) is \(e.perms) at \(hex(max(e.start, m.start))) (the image has \(m.permissions))")
                    break
                }
                // KSM's flag, where the restore noted the kernel refused it, is no surprise.
                let audited = noted.contains(where: { $0.contains("(MADV_MERGEABLE)") }) ? Self.auditedFlags.subtracting(["mg"]) : Self.auditedFlags
                let want = Set(m.vmFlags).intersection(audited), got = Set(e.vmFlags).intersection(audited)
                if !m.vmFlags.isEmpty && want != got {
                    let lost = want.subtracting(got).sorted(), gained = got.subtracting(want).sorted()
                    out.append("\(name) " + [lost.isEmpty ? nil : "lacks kernel flags \(lost.joined(separator: " ")) the image's had",
                                               gained.isEmpty ? nil : "has kernel flags \(gained.joined(separator: " ")) the image's had not"]
                        .compactMap { $0 }.joined(separator: " and "))
                    break
                }
            }
        }
        try guards(&out)
        var next = 0
        for e in here {
            while next < process.mappings.count && process.mappings[next].end <= e.start { next += 1 }
            let known = next < process.mappings.count && process.mappings[next].start < e.end
            if !known && !e.path.hasPrefix("[vdso") && !e.path.hasPrefix("[vvar") && e.path != "[vsyscall]" {
                out.append("an extra mapping \(hex(e.start))-\(hex(e.end)) \(e.perms) \(e.path) that the image does not have")
            }
        }
    }

    /// Guard pages are page-table markers, not VmFlags (nothing above sees them): each
    /// mapping's are read back with PAGEMAP_SCAN, where the kernel tells them (Linux 6.14+).
    private func guards(_ out: inout [String]) throws {
        let guarded = process.mappings.filter { !($0.guards ?? []).isEmpty }
        guard !guarded.isEmpty, PageScanner.knowsGuards else { return }
        let scanner = try PageScanner(pid: pid)
        for m in guarded {
            let got = try scanner.guards(start: m.start, end: m.end).map { [$0.start, $0.end] }
            if got != m.guards! {
                func text(_ g: [[UInt64]]) -> String { g.isEmpty ? "none" : g.map { "\(hex($0[0]))-\(hex($0[1]))" }.joined(separator: " ") }
                out.append("mapping \(hex(m.start))-\(hex(m.end)) (\(m.path ?? m.kind.rawValue)) has guard pages \(text(got)) (the image has \(text(m.guards!)))")
            }
        }
    }

    private func files(_ out: inout [String]) throws {
        let here = Set(try ProcFS.fds(pid))
        RestoreAudit.mark("fds listed")
        let wanted = Set(process.fds.map(\.fd))
        for fd in here.subtracting(wanted).sorted() {
            let link = (try? Paths.readLink("/proc/\(pid)/fd/\(fd)")) ?? "?"
            out.append("an extra fd \(fd) (\(link)) that the image does not have")
        }
        // Status flags the kernel keeps per open file description; O_LARGEFILE is added by
        // the kernel on 64-bit and says nothing.
        let statusFlags = O_ACCMODE | O_APPEND | O_NONBLOCK | 0o40000 /* O_DIRECT */ | 0o1000000 /* O_NOATIME */ | O_SYNC | O_DSYNC | O_ASYNC | 0o10000000 /* O_PATH */
        // A socket's fdinfo holds nothing but its flags (and the locks on it): for many sockets
        // F_GETFL and F_GETFD run in the process, in one batch, instead of a /proc file each
        // (a server's thousand connections). Every other fd's fdinfo is read, on every core.
        let pid = self.pid, fds = process.fds
        var infos = [(ProcFS.FDInfo, [FileLock], [Inotify.Mark])?](repeating: nil, count: fds.count)
        var slow: [Int] = []
        for (i, s) in fds.enumerated() {
            if (s.locks ?? []).isEmpty, let info = socketInfo[s.fd] { infos[i] = (info, [], []) } else { slow.append(i) }
        }
        // The whole text only where the audit reads more than flags and offset: an inotify
        // instance's marks, the locks the image has on the fd.
        let read = try Parallel.map(slow.count) { k -> (ProcFS.FDInfo, [FileLock], [Inotify.Mark])? in
            let s = fds[slow[k]], inotify = s.kind == .inotify
            guard let (text, info) = ProcFS.fdInfo(pid, s.fd, whole: inotify || !(s.locks ?? []).isEmpty) else { return nil }
            let locks = text.utf8.firstRange(of: "lock:".utf8) != nil ? text.split(separator: "\n").filter { $0.hasPrefix("lock:") }.compactMap { FileLock.parse(String($0)).0 } : []
            return (info, locks, inotify ? Inotify.marks(text) : [])
        }
        for (k, i) in slow.enumerated() { infos[i] = read[k] }
        RestoreAudit.mark("fdinfo read")
        // Pipes to something outside the process, and those on fds 0-2: looked up once
        // (a server holds a thousand fds).
        let externalPipes = Set(process.pipes.filter(\.external).map(\.id))
        let standardPipes = Set(process.fds.filter { $0.fd <= 2 && $0.kind == .pipe }.compactMap(\.pipe))
        for (index, s) in process.fds.enumerated() {
            var name: String { "fd \(s.fd) (\(s.path))" }
            guard here.contains(s.fd) else {
                out.append("\(name) is missing")
                continue
            }
            guard let (info, locks, marks) = infos[index], !silenced.contains(s.fd) else { continue }
            if s.kind == .inotify {
                let want = (s.inotify ?? []).map { "\($0.wd)/\(String($0.mask, radix: 16))" }.sorted()
                let have = marks.map { "\($0.wd)/\(String($0.mask, radix: 16))" }.sorted()
                if want != have { out.append("\(name) has inotify watches \(have) (the image has \(want))") }
            }
            for l in s.locks ?? [] where !locks.contains(l) {
                out.append("\(name) does not hold its \(l.write ? "write" : "read") \(l.kind.rawValue) lock")
            }
            if (info.flags & O_CLOEXEC != 0) != s.closeOnExec {
                out.append("\(name) is \(s.closeOnExec ? "not " : "")close-on-exec (the image's was\(s.closeOnExec ? "" : " not"))")
            }
            // Terminals, placeholders and pipes to something outside the process on 0-2 (and
            // their duplicates) are attached to what this host has (wb's own stdin, stdout,
            // stderr): their flags are those of the fd wb gives them.
            let external = s.kind == .pipe && s.pipe.map { externalPipes.contains($0) } == true
            let onStandardFD = s.pipe.map { standardPipes.contains($0) } == true
            if s.kind == .tty || s.kind == .placeholder || (external && onStandardFD) { continue }
            if info.flags & statusFlags != s.flags & statusFlags {
                out.append("\(name) has open flags 0\(String(info.flags & statusFlags, radix: 8)) (the image has 0\(String(s.flags & statusFlags, radix: 8)))")
            }
            if (s.kind == .file || s.kind == .deletedFile), info.position != s.offset {
                out.append("\(name) is at offset \(info.position) (the image has \(s.offset))")
            }
            let expected = s.deleted == true ? s.path + " (deleted)" : copies?.copy(of: s.path) ?? s.path
            if s.kind == .file || s.kind == .fifo || s.kind == .device || s.kind == .mqueue, let link = try? Paths.readLink("/proc/\(pid)/fd/\(s.fd)"),
               link != expected, !noted.contains(where: { $0.hasPrefix("fd \(s.fd) was the deleted") || $0.hasPrefix("the deleted directory \(expected) (")
                   || $0.hasPrefix("the POSIX message queue \(s.path) (fd \(s.fd)), removed while open, was made again") }) {
                out.append("\(name) names \(link)")
            }
            // The same path on another kind of filesystem is another object (a file where a
            // message queue or a /proc file was).
            if s.kind == .file || s.kind == .mqueue, let then = s.kind == .mqueue ? Filesystems.mqueue : s.filesystem,
               let now = Filesystems.magic("/proc/\(pid)/fd/\(s.fd)"), !Filesystems.sameKind(then, now) {
                out.append("\(name) is a file on \(Filesystems.name(now)) (the image's was on \(Filesystems.name(then)))")
            }
        }
    }

    private func signals(_ out: inout [String]) throws {
        let status = try ProcFS.status(pid)
        var ignored: UInt64 = 0, caught: UInt64 = 0
        for a in process.sigactions where a.signal != SIGKILL && a.signal != SIGSTOP {
            let bit = UInt64(1) << UInt64(a.signal - 1)
            if a.handler == 1 { ignored |= bit } else if a.handler > 1 { caught |= bit }
        }
        func mask(_ text: String?) -> UInt64 { UInt64(text ?? "0", radix: 16) ?? 0 }
        if !process.sigactions.isEmpty {
            if mask(status["SigIgn"]) != ignored { out.append("ignored signals \(hex(mask(status["SigIgn"]))) (the image has \(hex(ignored)))") }
            if mask(status["SigCgt"]) != caught { out.append("caught signals \(hex(mask(status["SigCgt"]))) (the image has \(hex(caught)))") }
        }
        var shared: UInt64 = 0
        for p in process.sharedPending { shared |= UInt64(1) << UInt64(p.signal - 1) }
        // Armed timers go on during the restore and may add their signals.
        var timers: UInt64 = 0
        for t in process.itimers where t.valueMicroseconds > 0 || t.intervalMicroseconds > 0 {
            timers |= UInt64(1) << UInt64([SIGALRM, SIGVTALRM, SIGPROF][Int(t.which)] - 1)
        }
        for t in process.posixTimers where t.notify != .none && t.signal > 0 && (t.valueNanoseconds > 0 || t.intervalNanoseconds > 0) {
            timers |= UInt64(1) << UInt64(t.signal - 1)
        }
        let pending = mask(status["ShdPnd"])
        if pending & shared != shared || pending & ~shared & ~timers != 0 {
            out.append("signals pending for the process \(hex(pending)) (the image has \(hex(shared)))")
        }
    }
}
