import CWBNative
import Foundation
import Glibc

/// Readers and parsers for /proc/PID. Parsers are pure functions over the text so that
/// unit tests can feed them recorded files.
public enum ProcFS {
    // MARK: maps and smaps

    public struct MapsEntry: Equatable, Sendable {
        public var start: UInt64
        public var end: UInt64
        public var perms: String
        public var offset: UInt64
        public var device: String
        public var inode: UInt64
        public var path: String
        public var vmFlags: [String] = []
        /// Resident and swapped kilobytes (smaps only; nil from maps).
        public var rssKB: UInt64?
        public var swapKB: UInt64?

        public var protection: Int32 {
            let c = Array(perms)
            return (c[0] == "r" ? 1 : 0) | (c[1] == "w" ? 2 : 0) | (c[2] == "x" ? 4 : 0)
        }
        public var shared: Bool { Array(perms)[3] == "s" }
    }

    /// Parses /proc/PID/maps, or /proc/PID/smaps (its VmFlags lines are attached to the entries).
    public static func parseMaps(_ text: String) -> [MapsEntry] {
        var out: [MapsEntry] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("VmFlags:") {
                if !out.isEmpty {
                    out[out.count - 1].vmFlags = line.dropFirst("VmFlags:".count).split(separator: " ").map(String.init)
                }
                continue
            }
            if line.hasPrefix("Rss:") || line.hasPrefix("Swap:") {
                let kb = UInt64(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
                if !out.isEmpty {
                    if line.hasPrefix("Rss:") { out[out.count - 1].rssKB = kb } else { out[out.count - 1].swapKB = kb }
                }
                continue
            }
            guard let entry = parseMapsLine(Substring(line)) else { continue }
            out.append(entry)
        }
        return out
    }

    static func parseMapsLine(_ line: Substring) -> MapsEntry? {
        // start-end perms offset dev inode [path]
        var fields: [Substring] = []
        var rest = line[...]
        for _ in 0..<5 {
            rest = rest.drop { $0 == " " }
            guard let space = rest.firstIndex(of: " ") else { return nil }
            fields.append(rest[..<space])
            rest = rest[space...]
        }
        let path = String(rest.drop { $0 == " " })
        let range = fields[0].split(separator: "-")
        guard range.count == 2, let start = UInt64(range[0], radix: 16), let end = UInt64(range[1], radix: 16),
              fields[1].count == 4, let offset = UInt64(fields[2], radix: 16), let inode = UInt64(fields[4]) else { return nil }
        return MapsEntry(start: start, end: end, perms: String(fields[1]), offset: offset,
                         device: String(fields[3]), inode: inode, path: path)
    }

    /// Each mapping's page size (smaps' KernelPageSize, in bytes), by start address.
    public static func kernelPageSizes(_ pid: Int32) -> [UInt64: UInt64] {
        var out: [UInt64: UInt64] = [:]
        var start: UInt64?
        for line in ((try? Paths.readText("/proc/\(pid)/smaps")) ?? "").split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let a = UInt64(line[..<dash], radix: 16), line.contains(" " as Character) && !line.hasPrefix("KernelPageSize") && line.first?.isHexDigit == true {
                start = a
            } else if line.hasPrefix("KernelPageSize:"), let s = start {
                let kb = line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) } ?? 4
                out[s] = kb * 1024
            }
        }
        return out
    }

    public static func maps(_ pid: Int32, withFlags: Bool = true) throws -> [MapsEntry] {
        parseMaps(try Paths.readText("/proc/\(pid)/\(withFlags ? "smaps" : "maps")"))
    }

    // MARK: status, stat

    /// /proc/PID/status as key → value.
    public static func parseStatus(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            out[String(line[..<colon])] = line[line.index(after: colon)...].trimming(" \t")
        }
        return out
    }

    /// The pid a process has in its own pid namespace (the last of NSpid).
    public static func innermostPid(_ pid: Int32) -> Int32? {
        (try? status(pid))?["NSpid"]?.split(whereSeparator: { $0 == " " || $0 == "\t" }).last.flatMap { Int32($0) }
    }

    /// The process's cgroups: each hierarchy's controllers and path ("memory:/a/b", and for
    /// cgroup v2 ":/a/b"), from /proc/PID/cgroup; nil when it cannot be read.
    public static func cgroups(_ pid: Int32) -> [String]? {
        guard let text = try? Paths.readText("/proc/\(pid)/cgroup") else { return nil }
        return text.split(separator: "\n").compactMap { line in
            line.firstIndex(of: ":").map { String(line[line.index(after: $0)...]) }
        }.sorted()
    }

    /// VmLck of /proc/PID/status in kB: the process's locked memory.
    public static func lockedKB(_ pid: Int32) -> UInt64? {
        guard let v = (try? status(pid))?["VmLck"] else { return nil }
        return UInt64(v.split(separator: " ").first ?? "")
    }

    public static func status(_ pid: Int32, thread: Int32? = nil) throws -> [String: String] {
        let path = thread.map { "/proc/\(pid)/task/\($0)/status" } ?? "/proc/\(pid)/status"
        return parseStatus(try Paths.readText(path))
    }

    /// How many read calls (read, readv, pread, recv...) process `pid` has made: syscr in
    /// /proc/PID/io; nil when it cannot be read.
    public static func readCalls(_ pid: Int32) -> UInt64? {
        guard let text = try? Paths.readText("/proc/\(pid)/io"),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("syscr:") }) else { return nil }
        return UInt64(line.dropFirst(6).trimmingCharacters(in: .whitespaces))
    }

    /// What thread `tid` of `pid` does with `signal` now: caught by a handler, ignored, or
    /// blocked in the thread (SigCgt, SigIgn, SigBlk); nil when the thread is gone.
    public static func signalDisposition(_ pid: Int32, tid: Int32, signal: Int32) -> (caught: Bool, ignored: Bool, blocked: Bool)? {
        guard let status = try? status(pid, thread: tid) else { return nil }
        func set(_ key: String) -> Bool { (status[key].flatMap { UInt64($0, radix: 16) } ?? 0) & (1 << UInt64(signal - 1)) != 0 }
        return (set("SigCgt"), set("SigIgn"), set("SigBlk"))
    }

    /// The five capability sets of a parsed /proc status (CapInh, CapPrm, CapEff, CapBnd,
    /// CapAmb, hexadecimal).
    public static func capabilities(_ status: [String: String]) -> CapabilitySets {
        func caps(_ key: String) -> UInt64 { UInt64(status[key] ?? "0", radix: 16) ?? 0 }
        return CapabilitySets(inheritable: caps("CapInh"), permitted: caps("CapPrm"), effective: caps("CapEff"),
                              bounding: caps("CapBnd"), ambient: caps("CapAmb"))
    }

    /// /proc/PID/stat fields, numbered as in proc(5) (1 = pid, 2 = comm, 3 = state, ...).
    public static func parseStat(_ text: String) -> [Int: String] {
        guard let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")") else { return [:] }
        var out: [Int: String] = [1: text[..<open].trimming(" "),
                                  2: String(text[text.index(after: open)..<close])]
        let rest = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        for (i, f) in rest.enumerated() { out[3 + i] = f.trimming("\n") }
        return out
    }

    public static func stat(_ pid: Int32) throws -> [Int: String] {
        parseStat(try Paths.readText("/proc/\(pid)/stat"))
    }

    /// Whether a process (or one thread: `thread`) has ended or is ending: gone, a zombie, or
    /// on its way out (PF_EXITING in its flags: no longer seizable, its memory maybe gone).
    public static func exiting(_ pid: Int32, thread: Int32? = nil) -> Bool {
        let path = thread.map { "/proc/\(pid)/task/\($0)/stat" } ?? "/proc/\(pid)/stat"
        guard let text = try? Paths.readText(path) else { return true }
        let stat = parseStat(text)
        let PF_EXITING: UInt = 0x4
        return stat[3] == "Z" || stat[3] == "X" || (UInt(stat[9] ?? "") ?? 0) & PF_EXITING != 0
    }

    // MARK: fds

    public struct FDInfo: Equatable, Sendable {
        public var position: UInt64
        public var flags: Int32
        public var mountID: Int
        public var extra: [String: String]
        public init(position: UInt64, flags: Int32, mountID: Int, extra: [String: String]) {
            self.position = position; self.flags = flags; self.mountID = mountID; self.extra = extra
        }
    }

    /// An fd's fdinfo: its position and flags alone when that is all it holds (besides
    /// mnt_id and ino; read without Swift strings: a server's thousand sockets), else the
    /// whole text parsed, with the text. Nil when the fd is gone.
    /// With `whole` false, only the position and flags (an epoll set's thousand watches are
    /// neither read whole nor parsed).
    public static func fdInfo(_ pid: Int32, _ fd: Int32, whole: Bool = true) -> (text: String, info: FDInfo)? {
        var pos: UInt64 = 0, flags: Int32 = 0, more: Int32 = 0
        guard wb_fdinfo_basic(pid, fd, &pos, &flags, &more) == 0 else { return nil }
        if more == 0 || !whole { return ("", FDInfo(position: pos, flags: flags, mountID: 0, extra: [:])) }
        guard let text = try? Paths.readText("/proc/\(pid)/fdinfo/\(fd)") else { return nil }
        return (text, parseFDInfo(text))
    }

    public static func parseFDInfo(_ text: String) -> FDInfo {
        // An epoll set's watches ("tfd:" lines, a server's thousand connections) come after
        // the fields and are no fields (parseEpollWatches reads them).
        // (A byte search: Foundation's range(of:) took milliseconds on such a text.)
        let head = text.utf8.firstRange(of: "\ntfd:".utf8).map { String(text[..<$0.lowerBound]) } ?? text
        let kv = parseStatus(head)
        return FDInfo(position: UInt64(kv["pos"] ?? "0") ?? 0,
                      flags: Int32(kv["flags"] ?? "0", radix: 8) ?? 0,
                      mountID: Int(kv["mnt_id"] ?? "0") ?? 0, extra: kv)
    }

    /// The interest list in an epoll fd's fdinfo ("tfd: 5 events: 19 data: 5 ...").
    public static func parseEpollWatches(_ text: String) -> [EpollWatch] {
        parseEpollWatchesWithInodes(text).map(\.watch)
    }

    /// The watches with the inode of each watched file ("ino:" in hex).
    /// Read byte by byte: a server's epoll set holds thousands of watches, read while it is
    /// stopped.
    public static func parseEpollWatchesWithInodes(_ text: String) -> [(watch: EpollWatch, inode: UInt64?)] {
        var out: [(watch: EpollWatch, inode: UInt64?)] = []
        var copy = text
        copy.withUTF8 { bytes in
            var i = 0
            let n = bytes.count
            // The next token (bytes up to a space or line end) from i; i stops at its end.
            func token() -> (Int, Int) {
                while i < n && (bytes[i] == 0x20 || bytes[i] == 0x09) { i += 1 }
                let start = i
                while i < n && bytes[i] != 0x20 && bytes[i] != 0x09 && bytes[i] != 0x0A { i += 1 }
                return (start, i)
            }
            func number(_ r: (Int, Int), radix: UInt64, from offset: Int = 0) -> UInt64? {
                guard r.1 > r.0 + offset else { return nil }
                var v: UInt64 = 0
                for k in (r.0 + offset)..<r.1 {
                    let c = bytes[k]
                    let d: UInt64
                    switch c {
                    case 0x30...0x39: d = UInt64(c - 0x30)
                    case 0x61...0x66 where radix == 16: d = UInt64(c - 0x61 + 10)
                    case 0x41...0x46 where radix == 16: d = UInt64(c - 0x41 + 10)
                    default: return nil
                    }
                    let (m, o1) = v.multipliedReportingOverflow(by: radix)
                    let (a, o2) = m.addingReportingOverflow(d)
                    if o1 || o2 { return nil }
                    v = a
                }
                return v
            }
            func starts(_ r: (Int, Int), _ prefix: StaticString) -> Bool {
                let p = UnsafeRawBufferPointer(start: prefix.utf8Start, count: prefix.utf8CodeUnitCount)
                guard r.1 - r.0 >= p.count else { return false }
                for k in 0..<p.count where bytes[r.0 + k] != p[k] { return false }
                return true
            }
            while i < n {
                let lineEnd = (i..<n).first { bytes[$0] == 0x0A } ?? n
                let first = token()
                if starts(first, "tfd:") && first.1 - first.0 == 4 {
                    let fd = number(token(), radix: 10)
                    _ = token()
                    let events = number(token(), radix: 16)
                    _ = token()
                    let data = number(token(), radix: 16)
                    var inode: UInt64?
                    while i < lineEnd {
                        let t = token()
                        if t.1 == t.0 { break }
                        if starts(t, "ino:") { inode = number(t, radix: 16, from: 4) }
                    }
                    if let fd, fd <= UInt64(Int32.max), let events, events <= UInt64(UInt32.max), let data {
                        out.append((EpollWatch(fd: Int32(fd), events: UInt32(events), data: data), inode))
                    }
                }
                i = lineEnd + 1
            }
        }
        return out
    }

    /// "(seconds, nanoseconds)" from a timerfd's fdinfo, in nanoseconds.
    public static func parseTimespecPair(_ text: String?) -> UInt64 {
        guard let text else { return 0 }
        let parts = text.trimming("() ").split(separator: ",").map { $0.trimming(" ") }
        guard parts.count == 2, let s = UInt64(parts[0]), let ns = UInt64(parts[1]) else { return 0 }
        return s * 1_000_000_000 + ns
    }

    /// /proc/PID/timers: one block per POSIX timer (values come from timer_gettime).
    public static func parsePosixTimers(_ text: String) -> [PosixTimer] {
        var out: [PosixTimer] = []
        var current: PosixTimer?
        for line in text.split(separator: "\n") {
            let kv = line.split(separator: ":", maxSplits: 1).map { $0.trimming(" \t") }
            guard kv.count == 2 else { continue }
            switch kv[0] {
            case "ID":
                if let c = current { out.append(c) }
                current = PosixTimer(id: Int32(kv[1]) ?? 0, clock: 0, notify: .signal, signal: 0, value: 0, thread: nil,
                                     valueNanoseconds: 0, intervalNanoseconds: 0)
            case "signal":
                let p = kv[1].split(separator: "/")
                current?.signal = Int32(p.first ?? "0") ?? 0
                current?.value = p.count > 1 ? UInt64(p[1], radix: 16) ?? 0 : 0
            case "notify":
                // KIND/pid.N or KIND/tid.N: KIND is signal, thread or none; "tid" marks a
                // signal sent to one thread (SIGEV_THREAD_ID, as glibc's SIGEV_THREAD timers
                // use for their helper thread), "pid" one sent to the process.
                let p = kv[1].split(separator: "/")
                let kind = PosixTimer.Notify(rawValue: String(p.first ?? "signal")) ?? .signal
                if kind != .none, p.count > 1, p[1].hasPrefix("tid.") {
                    current?.notify = .thread
                    current?.thread = Int32(p[1].dropFirst(4))
                } else {
                    current?.notify = kind == .none ? .none : .signal
                }
            case "ClockID":
                current?.clock = Int32(kv[1]) ?? 0
            default:
                break
            }
        }
        if let c = current { out.append(c) }
        return out
    }

    public static func fds(_ pid: Int32) throws -> [Int32] {
        try Paths.list("/proc/\(pid)/fd").compactMap { Int32($0) }.sorted()
    }

    public static func tasks(_ pid: Int32) throws -> [Int32] {
        try Paths.list("/proc/\(pid)/task").compactMap { Int32($0) }.sorted()
    }

    /// Children of every thread of `pid`.
    public static func children(_ pid: Int32) -> [Int32] {
        var out: [Int32] = []
        for tid in (try? tasks(pid)) ?? [] {
            let text = (try? Paths.readText("/proc/\(pid)/task/\(tid)/children")) ?? ""
            out += text.split(separator: " ").compactMap { Int32($0.trimming("\n ")) }
        }
        return out.sorted()
    }

    // MARK: pagemap

    /// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
    public static let pagePresent: UInt64 = 1 << 63
    public static let pageSwapped: UInt64 = 1 << 62
    public static let pageFileOrSharedAnon: UInt64 = 1 << 61
    public static let pageExclusive: UInt64 = 1 << 56
    /// The page frame number (bits 0-54; zero unless the reader has CAP_SYS_ADMIN).
    public static let pageFrame: UInt64 = (1 << 55) - 1

    /// One 64-bit pagemap entry per page of [start, end).
    public static func pagemap(_ fd: FileDescriptor, start: UInt64, end: UInt64) throws -> [UInt64] {
        let count = Int((end - start) / 4096)
        var out = [UInt64](repeating: 0, count: count)
        let got = try out.withUnsafeMutableBytes { try fd.read(into: $0, at: (start / 4096) * 8) }
        if got < count * 8 { out.removeLast(count - got / 8) }
        return out
    }

    /// /proc/PID/auxv as 64-bit words.
    public static func auxv(_ pid: Int32) throws -> [UInt64] {
        let bytes = try Paths.readBytes("/proc/\(pid)/auxv")
        return stride(from: 0, to: bytes.count - 7, by: 8).map { i in
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[i + $1]) << (8 * UInt64($1)) }
        }
    }

    /// NUL-separated strings (cmdline, environ).
    public static func strings(_ pid: Int32, _ file: String) -> [String] {
        let bytes = (try? Paths.readBytes("/proc/\(pid)/\(file)")) ?? []
        return bytes.split(separator: 0, omittingEmptySubsequences: false).dropLast().map { String(decoding: $0, as: UTF8.self) }
    }

    /// Whether the pid exists (as a process or a thread) in our pid namespace.
    public static func exists(_ pid: Int32) -> Bool { Paths.exists("/proc/\(pid)") }
}
