import Foundation
import Glibc
import WBCore
import WBRestore
import WBSymbols
import WBSystem
import WBTrace

/// One run's outcome.
public enum Outcome: Equatable, Sendable {
    case exited(Int32)
    /// The process went back for more input (read the input again after its end, or read
    /// something with nothing to read): the end of one iteration, as in persistent mode.
    case waiting
    /// A fatal signal, with the faulting address (si_addr) where there is one.
    case crashed(signal: Int32, address: UInt64)
    case hang
    /// The process forked or exec'd: a snapshot cannot be branched over a new process, so
    /// the run ends there (not a finding).
    case forked

    /// A crash or a hang: what a campaign keeps as a finding.
    public var isFinding: Bool {
        if case .crashed = self { return true }
        return self == .hang
    }
}

/// What a run found.
public struct RunResult: Sendable {
    public var outcome: Outcome
    /// Basic blocks reached for the first time.
    public var newBlocks: [UInt64]
    /// Values compared by compare instructions (comparison-tracing runs only).
    public var comparisons: [Comparison]
    /// For crashes: the crashing thread, its registers and its frames.
    public var crash: CrashState?
    /// Byte strings compared by the C library's memcmp, strcmp and kin (comparison-tracing
    /// runs only).
    public var stringComparisons: [StringComparison] = []
    /// The input with the checksums the run was made to pass written as the program
    /// computed them (nil when it passed them all as it was).
    public var repaired: [UInt8]?
}

/// The two byte strings a memcmp, strcmp, strncmp, strcasecmp or strncasecmp call compared
/// (up to the length it was given, or to the first NUL).
public struct StringComparison: Hashable, Sendable {
    public var left: [UInt8]
    public var right: [UInt8]
}

public struct Comparison: Hashable, Sendable {
    public var left: UInt64
    public var right: UInt64
    public var width: Int
    /// The compare instruction, and which of its executions in the run this was (from 0).
    public var address: UInt64 = 0
    public var hit = 0
    /// Where the comparison is, in runs of different inputs.
    public var site: Site { Site(address: address, hit: hit) }
    public struct Site: Hashable, Sendable { public var address: UInt64; public var hit: Int }

    public init(left: UInt64, right: UInt64, width: Int, address: UInt64 = 0, hit: Int = 0) {
        self.left = left; self.right = right; self.width = width; self.address = address; self.hit = hit
    }
}

public struct CrashState: Sendable {
    public var tid: Int32
    public var signal: Int32
    public var address: UInt64
    public var registers: Registers
    public var frames: [Frame]
}

/// Runs a restored process again and again from the same state. Each run: the input goes in
/// (a file behind the input fd, a file the process opens, or a buffer in memory), every
/// thread gets the snapshot's registers, the process runs until it exits, crashes or times
/// out, and then only the pages it wrote are put back (userfaultfd write-protect in async
/// mode and PAGEMAP_SCAN find them). A seccomp filter turns exit into a stop at the
/// controller, and tells it when the process changed its mappings or fds.
public final class Executor {
    public let restored: RestoredProcess
    public var tracee: Tracee { restored.tracee }
    public let image: Image
    public let input: InputChannel
    /// Where a server's input is cut into messages (`--input-split`).
    public let split: [UInt8]?
    /// For a server's input: the connection of each run.
    private var socketInput: SocketInput?
    public let symbols: Backtracer
    /// The image's files as this machine has them (for a debugger's sysroot).
    public let files: ResolvedFiles
    /// How the process goes back to the snapshot after a run.
    public private(set) var reset: String
    /// Seconds a run may take.
    public var timeout: Double = 1
    /// Branching: every run starts from the snapshot. Once: one run, the process is left as it ends
    /// (for replaying a crash).
    public enum Mode: Sendable { case branching, once }
    public let mode: Mode

    private let memory: ImageMemory
    private var snapshot: [Int32: (Registers, Data, UInt64)] = [:]
    private var tracker: DirtyTracker!
    private var scanner: PageScanner!
    private var trackedSpan: (UInt64, UInt64) = (0, 0)
    /// Writable memory the kernel cannot track (libraries' data), copied whole before the
    /// first run: its ranges, and its contents in one buffer of wb's as (local, remote,
    /// length) triples, written back with the run's pages in one call.
    private var copied: [(start: UInt64, end: UInt64)] = []
    private var copiedBuffer: UnsafeMutableRawPointer?
    private var copiedTriples: [UInt64] = []
    /// The snapshot's guard markers, put back where a run's mapping changes took them.
    private var snapshotGuards: [(start: UInt64, end: UInt64)] = []
    /// Pages written in each of the last `hotAfterRuns` runs (the stack's, libc's data):
    /// left unprotected and put back in every run, which spares their protect calls and the
    /// process's write faults. At most `hotPagesAtMost`.
    private var hotPages: Set<UInt64> = []
    private var hotTriples: [UInt64] = []
    /// For each page the last run wrote (and not hot): how many runs in a row wrote it.
    private var writeStreaks: [UInt64: Int] = [:]
    static let hotAfterRuns = 8, hotPagesAtMost = 256
    /// Whether tracked memory may hold guard markers: the snapshot's, or a run's (madvise
    /// stops at wb for them). Without any, a page scan spares the walk that finds them.
    private var markersPossible = true
    private var layout: SnapshotLayout!
    /// Ranges of the snapshot's mappings the current run unmapped, moved or mapped over.
    private var touched: [(start: UInt64, end: UInt64)] = []
    private var inputFD: FileDescriptor?
    /// The fds that hold the input (fd N and its duplicates).
    public private(set) var inputFDs: Set<Int32> = []
    /// Reads seen, by fd, and how many of them were of the input.
    public private(set) var readsByFD: [Int32: Int] = [:]
    public private(set) var inputReads = 0
    private var inputSize = -1
    private var pageCache: [UInt64: UnsafeMutableRawPointer] = [:]
    private let scanVector = ScanVector()
    private var protectWhileScanning = false
    /// Tracked memory gathered into huge pages before the first run.
    private var collapsedBytes: UInt64 = 0
    private var inputBuffer: (address: UInt64, size: UInt64)?
    private var inputLength: (address: UInt64, size: UInt64)?
    private var layoutChanged = false, fdsChanged = false
    private var defaultTerminates: Set<Int32> = []
    /// Whether this run has already read the end of the input.
    private var endOfInputRead = false

    /// Coverage: one-shot breakpoints on basic-block starts.
    public private(set) var blocks: [UInt64: UInt8] = [:]
    public private(set) var blockCount = 0
    public private(set) var covered: Set<UInt64> = []
    /// The covered blocks in the order they were reached.
    public private(set) var coveredInOrder: [UInt64] = []
    /// How often one compare instruction reports its operands in a traced run.
    static let compareHitsPerRun = 8
    /// The files whose code gets coverage breakpoints (names only).
    public private(set) var coveredObjects: [String] = []
    /// Entry points of the C library's comparison functions the covered code calls through
    /// its GOT, for comparison-tracing runs: whether the length is in rdx.
    private var stringCompares: [UInt64: Bool] = [:]
    static let stringCompareFunctions: [String: Bool] = ["memcmp": true, "bcmp": true, "strncmp": true, "strncasecmp": true,
                                                         "strcmp": false, "strcasecmp": false]
    /// Compare instructions, for comparison-tracing runs.
    private var compares: [UInt64: Disassembler.Instruction] = [:]
    private var compareBytes: [UInt64: UInt8] = [:]
    /// Checksum compares left without their breakpoint by the last run (passed too often).
    private var disarmed: Set<UInt64> = []
    /// Compares whose result feeds a test for equality (je, jne, sete, setne, cmove, cmovne).
    public private(set) var equalityCompares: Set<UInt64> = []
    /// Checksum compares every run is made to pass (`passChecksums`), armed in every run.
    public private(set) var checksums: [UInt64: ChecksumSite] = [:]
    /// How often one checksum compare is passed in a run at most (one per chunk).
    static let checksumHitsPerRun = 256
    /// Constants compared against in the code: a dictionary for free.
    public private(set) var constants: [[UInt8]] = []
    public private(set) var executions = 0
    private let debugTrace = ProcessInfo.processInfo.environment["WB_FUZZ_TRACE"] != nil

    /// Restores `image` stopped and prepares it for runs. `cover` chooses the code that gets
    /// coverage breakpoints: "exe", "all", or a library name.
    public init(image: Image, input: InputChannel, split: [UInt8]? = nil, cover: String?, options: RestoreOptions, mode: Mode = .branching) throws {
        self.image = image
        self.input = input
        self.split = split
        self.mode = mode
        reset = mode == .branching ? "dirty pages (userfaultfd write-protect + PAGEMAP_SCAN)" : "none (one run)"
        // Runs wait for the process's stops with sigtimedwait: SIGCHLD must stay pending.
        Signals.block([SIGCHLD])
        let restorer = Restorer(image: image, options: options)
        restored = try restorer.restore()
        let files = restorer.files ?? ResolvedFiles()
        self.files = files
        memory = try ImageMemory(image: image, files: files)
        let procMemory = restored.tracee.memory
        symbols = try Backtracer(mappings: image.process.mappings, files: files, debugDirectories: [],
                                 read: { try? procMemory.readWord($0) })
        do {
            try prepare(cover: cover)
        } catch {
            restored.terminate()
            throw error
        }
    }

    deinit {
        tracker?.release()
        for p in pageCache.values { p.deallocate() }
        copiedBuffer?.deallocate()
    }

    private func prepare(cover: String?) throws {
        let tracee = restored.tracee
        let maps = try ProcFS.maps(tracee.pid, withFlags: false)
        tracee.syscallGadget = try tracee.findSyscallGadget(in: maps)
        for a in image.process.sigactions where a.handler == 0 && [1, 2, 3, 4, 5, 6, 7, 8, 11, 13, 14, 15, 24, 25, 26, 27, 31].contains(a.signal) {
            defaultTerminates.insert(a.signal)
        }
        for tid in tracee.tids {
            snapshot[tid] = (try tracee.registers(tid), try tracee.xstate(tid), try tracee.signalMask(tid))
        }
        if mode == .once {
            try tracee.withSyscalls(in: tracee.pid) { s in
                let scratch = try s.mapScratch(bytes: 4096)
                defer { _ = try? s.raw(.munmap, scratch, 4096) }
                try setUpInput(s, scratch: scratch)
            }
            if let cover { try placeBreakpoints(cover: cover, maps: maps) }
            return
        }
        // The process dies with wb (it could not exit on its own once the filter is in).
        try tracee.addOptions(Tracee.traceSeccompOption | Tracee.exitKillOption)
        try tracee.withSyscalls(in: tracee.pid) { s in
            let scratch = try s.mapScratch(bytes: 4096)
            defer { _ = try? s.raw(.munmap, scratch, 4096) }
            try setUpInput(s, scratch: scratch)
            try silenceOutput(s, scratch: scratch)
            try installFilter(s, scratch: scratch)
            collapsedBytes = try collapseLargeMemory(s, maps: maps)
            tracker = try DirtyTracker(tracee: tracee, syscalls: s)
        }
        scanner = try PageScanner(pid: tracee.pid)
        // Writable private memory is tracked where the kernel can write-protect it, and
        // copied back whole where it cannot (small: libraries' data).
        let now = try ProcFS.maps(tracee.pid, withFlags: false)
        var low = UInt64.max, high: UInt64 = 0
        for e in now where !e.shared && e.protection & 2 != 0 && e.path != "[vvar]" && e.path != "[vvar_vclock]" {
            if tracker.register(start: e.start, end: e.end) {
                low = min(low, e.start); high = max(high, e.end)
            } else {
                copied.append((e.start, e.end))
            }
        }
        trackedSpan = (low, high)
        let copiedBytes = copied.reduce(0) { $0 + Int($1.end - $1.start) }
        if copiedBytes > 0 {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: copiedBytes, alignment: 4096)
            copiedBuffer = buffer
            var at = 0
            for c in copied {
                let n = Int(c.end - c.start)
                try tracee.read(c.start, into: UnsafeMutableRawBufferPointer(start: buffer + at, count: n))
                copiedTriples += [UInt64(UInt(bitPattern: buffer + at)), c.start, UInt64(n)]
                at += n
            }
        }
        snapshotGuards = image.process.mappings.flatMap { $0.guards ?? [] }.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil }
        markersPossible = !snapshotGuards.isEmpty || !PageScanner.knowsGuards
        let trackedBytes = tracker.ranges.reduce(0) { $0 + $1.end - $1.start }
        // Memory in huge pages is scanned one entry per 2 MiB either way.
        protectWhileScanning = trackedBytes - min(trackedBytes, collapsedBytes) > 256 << 20
        reset = "written pages of \(trackedBytes >> 20) MiB tracked (userfaultfd write-protect, PAGEMAP_SCAN"
            + (collapsedBytes > 0 ? ", \(collapsedBytes >> 20) MiB in huge pages" : "")
            + (protectWhileScanning ? ", protecting while scanning)" : ")")
        if debugTrace {
            FileHandle.standardError.write(Data("wb-trace: tracked \(tracker.ranges.map { "\(hex($0.start))-\(hex($0.end))" }) copied \(copied.map { "\(hex($0.start))+\($0.end - $0.start)" })\n".utf8))
        }
        try tracker.protectAll()
        // A client connection each run replaces is not the snapshot's to put back.
        let skip = socketInput?.replaced.map { Set([$0.fd]) } ?? []
        layout = try SnapshotLayout(pid: tracee.pid, brk: image.process.mm.brk, skipFDs: skip) { try self.tracee.takeFD($0) }
        if let cover { try placeBreakpoints(cover: cover, maps: now) }
    }

    /// Large private anonymous memory (64 MiB or more in one mapping) is gathered into huge
    /// pages (madvise MADV_COLLAPSE) before it is tracked: the scan after each run then looks
    /// at one page-table entry per 2 MiB the run did not write, instead of 512, and a large
    /// snapshot costs little more per run than a small one. A 2 MiB page a run writes is split
    /// by the kernel at that write. Where the kernel cannot (no huge page free, an older
    /// kernel), memory stays as it is, only slower to scan. The program sees the same memory.
    private func collapseLargeMemory(_ s: RemoteSyscalls, maps: [ProcFS.MapsEntry]) throws -> UInt64 {
        let huge: UInt64 = 2 << 20
        var collapsed: UInt64 = 0
        for e in maps where !e.shared && e.inode == 0 && e.protection & 2 != 0 && !e.path.hasPrefix("[v") && e.path != "[stack]" {
            let start = (e.start + huge - 1) & ~(huge - 1), end = e.end & ~(huge - 1)
            guard end > start, end - start >= 64 << 20 else { continue }
            if try s.raw(.madvise, start, end - start, 25 /* MADV_COLLAPSE */) == 0 { collapsed += end - start }
        }
        if debugTrace && collapsed > 0 {
            FileHandle.standardError.write(Data("wb-trace: \(collapsed >> 20) MiB gathered into huge pages\n".utf8))
        }
        return collapsed
    }

    // MARK: Input

    private func setUpInput(_ s: RemoteSyscalls, scratch: UInt64) throws {
        switch input {
        case let .fd(n):
            // The input follows the open file, not the number: every fd that shares fd n's
            // open file description (a dup of stdin) gets the input too.
            let all = try ProcFS.fds(tracee.pid)
            var targets = all.filter { $0 == n || (all.contains(n) && SharedFiles.sameDescription(tracee.pid, $0, tracee.pid, n)) }
            if targets.isEmpty { targets = [n] }
            try tracee.write(Array("wb-input".utf8) + [0], to: scratch)
            let m = try s.call(.memfdCreate, scratch, 0, what: "creating the input file")
            for fd in targets {
                let closeOnExec = (try? Paths.readText("/proc/\(tracee.pid)/fdinfo/\(fd)")).flatMap(SnapshotLayout.fdinfoFlags).map { $0 & Int32(O_CLOEXEC) != 0 } ?? false
                try s.call(.dup3, m, UInt64(fd), closeOnExec ? UInt64(O_CLOEXEC) : 0, what: "putting the input on fd \(fd)")
            }
            try s.call(.close, m, what: "closing a spare fd")
            inputFDs = Set(targets)
            inputFD = try tracee.takeFD(n)
        case .tcp, .unix:
            socketInput = try SocketInput(channel: input, split: split, tracee: tracee, threads: snapshot.values.map(\.0),
                                      fds: image.process.fds)
        case let .file(path):
            // A relative path is the process's: relative to its working directory.
            let full = path.hasPrefix("/") ? path : image.process.cwd + "/" + path
            inputFD = try FileDescriptor.open(full, O_RDWR | O_CREAT, mode: 0o644, what: "creating the input file \(full)")
        case let .memory(symbol, lengthSymbol):
            guard let b = symbols.lookup(symbol) else {
                throw WBError.invalidArgument("--input mem:\(symbol): no symbol \(symbol) in the process (is it static, or stripped?)")
            }
            inputBuffer = b
            if let l = lengthSymbol {
                guard let len = symbols.lookup(l), len.size == 4 || len.size == 8 else {
                    throw WBError.invalidArgument("--input mem:\(symbol):\(l): no 4- or 8-byte symbol \(l) in the process")
                }
                inputLength = len
            }
        }
    }

    /// stdout and stderr of the fuzzing copy go to /dev/null: thousands of runs would
    /// otherwise write to the terminal or the files they had open.
    private func silenceOutput(_ s: RemoteSyscalls, scratch: UInt64) throws {
        let fds = try ProcFS.fds(tracee.pid)
        let targets = [Int32(1), 2].filter { fd in fds.contains(fd) && input != .fd(fd) }
        guard !targets.isEmpty else { return }
        try tracee.write(Array("/dev/null".utf8) + [0], to: scratch)
        let null = try s.call(.openat, UInt64(bitPattern: Int64(AT_FDCWD)), scratch, UInt64(O_WRONLY | O_CLOEXEC), what: "opening /dev/null")
        for fd in targets { try s.call(.dup2, null, UInt64(fd), what: "sending fd \(fd) to /dev/null") }
        try s.call(.close, null, what: "closing a spare fd")
    }

    private func deliver(_ data: [UInt8]) throws {
        switch input {
        case .fd, .file:
            if !data.isEmpty { try inputFD!.write(data, at: 0) }
            if data.count != inputSize { try inputFD!.truncate(to: UInt64(data.count)) }
            inputSize = data.count
            if case .fd = input { _ = lseek(inputFD!.rawValue, 0, SEEK_SET) }
        case .tcp, .unix:
            if let end = try socketInput!.begin(data), let r = socketInput!.replaced {
                // The run's connection in place of the client's the snapshot was reading.
                try tracee.withSyscalls(in: tracee.pid) { s in
                    let scratch = try s.mapScratch(bytes: 4096)
                    defer { _ = try? s.raw(.munmap, scratch, 4096) }
                    try s.install(SnapshotLayout.HeldFD(copy: end, closeOnExec: r.closeOnExec, offset: nil), as: r.fd, tracee: tracee, scratch: scratch)
                }
            }
        case .memory:
            let b = inputBuffer!
            let n = min(UInt64(data.count), b.size == 0 ? UInt64(data.count) : b.size)
            try tracee.write(Array(data.prefix(Int(n))), to: b.address)
            if let l = inputLength {
                let bytes = withUnsafeBytes(of: n.littleEndian) { Array($0.prefix(Int(l.size))) }
                try tracee.write(bytes, to: l.address)
            }
        }
    }

    // MARK: Seccomp

    /// exit and exit_group stop at wb (data 1); calls that change mappings (2) or fds (4)
    /// are noted so the reset after the run repairs them; clone, fork and exec (8) end the
    /// run; calls that wait for input (16: reads, accept, poll, epoll_wait) let wb see the
    /// process going back for more.
    static let traced: [(Int, UInt32)] = [(231, 1), (60, 1), (12, 2), (9, 2), (11, 2), (25, 2), (10, 2),
                                       (2, 4), (257, 4), (3, 4), (32, 4), (33, 4), (292, 4), (22, 4), (293, 4),
                                       (41, 4), (319, 4), (290, 4), (291, 4), (43, 20), (288, 20), (56, 8), (435, 8), (59, 8), (322, 8),
                                       (0, 16), (19, 16), (45, 16), (47, 16), (17, 16), (295, 16), (327, 16), (299, 16),
                                       (7, 16), (271, 16), (23, 16), (270, 16), (232, 16), (281, 16), (441, 16),
                                       (329, 2), (28, 2), (440, 2)]
    static let filterData = Dictionary(uniqueKeysWithValues: traced)
    /// madvise and process_madvise stop only to put guard markers in or take them out
    /// (MADV_GUARD_INSTALL, MADV_GUARD_REMOVE): the other advice is seen without a stop
    /// (discarded pages through the userfaultfd).
    static let guardAdvice: [UInt32] = [102, 103]
    /// Calls that read at the file's position (read, readv) or at their own (pread, preadv,
    /// preadv2): reads of the input's fds.
    static let inputReadCalls = [0, 19], inputPreadCalls = [17, 295, 327]

    /// Reads of the input's fds do not stop: a run costs the same however many calls it
    /// reads its input in. Whether the process came back for more after its end is then
    /// seen only once `carefulReads` is on.
    private func installFilter(_ s: RemoteSyscalls, scratch: UInt64) throws {
        var conditions: [Int: SeccompFilter.Condition] = [28: .init(argument: 2, values: Executor.guardAdvice, stops: true),
                                                          440: .init(argument: 3, values: Executor.guardAdvice, stops: true)]
        if !inputFDs.isEmpty {
            for nr in Executor.inputReadCalls + Executor.inputPreadCalls { conditions[nr] = .init(argument: 0, values: inputFDValues, stops: false) }
        }
        let filter = SeccompFilter(traced: Executor.traced.map { (nr: $0.0, data: UInt16($0.1)) }, conditions: conditions)
        try filter.install(tracee, s, scratch: scratch)
    }

    /// The input's fds as a filter compares them.
    private var inputFDValues: [UInt32] { inputFDs.sorted().map { UInt32(bitPattern: $0) } }

    /// Whether reads of the input's fds stop at wb: turned on for good when a run that read
    /// all of its input went on reading past the timeout, as a process does that reads its
    /// input to the end and then goes back to read more (a loop over requests on stdin).
    public private(set) var carefulReads = false

    /// Stacks a second filter that stops read and readv of the input's fds (a filter cannot
    /// be taken back; the stricter action of the two wins).
    private func readCarefully() throws {
        var conditions: [Int: SeccompFilter.Condition] = [:]
        for nr in Executor.inputReadCalls { conditions[nr] = .init(argument: 0, values: inputFDValues, stops: true) }
        let filter = SeccompFilter(traced: Executor.inputReadCalls.map { (nr: $0, data: 16) }, conditions: conditions)
        try tracee.withSyscalls(in: tracee.pid) { s in
            let scratch = try s.mapScratch(bytes: 4096)
            defer { _ = try? s.raw(.munmap, scratch, 4096) }
            try filter.install(tracee, s, scratch: scratch)
        }
        carefulReads = true
    }

    /// Whether the running process makes read calls over the next 2 ms (its count of them
    /// in /proc/PID/io).
    private func readsGoOn() throws -> Bool {
        guard let before = ProcFS.readCalls(tracee.pid) else { return false }
        usleep(2000)
        return (ProcFS.readCalls(tracee.pid) ?? before) > before
    }

    /// How far the run has read the input (the position of wb's copy of its open file).
    private var inputPosition: Int {
        guard case .fd = input, let f = inputFD else { return 0 }
        return Int(lseek(f.rawValue, 0, SEEK_CUR))
    }

    // MARK: Coverage

    private func placeBreakpoints(cover: String, maps: [ProcFS.MapsEntry]) throws {
        // Chosen by the paths the process had (a file restored from the image's own copy
        // shows another path here), then found here by address.
        let exe = image.process.exe
        let picked = image.process.mappings.filter { m in
            guard m.protection & 4 != 0, m.kind == .file, let path = m.path, path.hasPrefix("/") else { return false }
            let name = String(path.split(separator: "/").last ?? "")
            switch cover {
            case "exe": return path == exe
            case "all": return true
            case "auto": return path == exe || !Executor.isRuntime(name)
            default:
                return cover.split(separator: ",").contains { c in c == "exe" ? path == exe : name.hasPrefix(c) }
            }
        }
        let chosen = Set(picked.map(\.start))
        coveredObjects = Array(Set(picked.compactMap { $0.path?.split(separator: "/").last.map(String.init) })).sorted()
        let code = maps.filter { $0.protection & 4 != 0 && chosen.contains($0.start) }
        if code.isEmpty { throw WBError.invalidArgument("--cover \(cover): no executable mapping of the process matches; give exe, all, auto or a library's name") }
        var constants = Set<[UInt8]>()
        var texts: [(start: UInt64, bytes: [UInt8])] = []
        for e in code {
            var text = [UInt8](repeating: 0, count: Int(e.end - e.start))
            for page in stride(from: 0, to: text.count, by: 4096) {
                if let p = memory.read(e.start + UInt64(page), count: 4096) { text.replaceSubrange(page..<(page + 4096), with: p) }
            }
            var changed = text
            for range in codeRanges(of: e) {
                let lo = Int(range.lowerBound - e.start), hi = Int(range.upperBound - e.start)
                let instructions = Disassembler.disassemble(Array(text[lo..<hi]), at: range.lowerBound)
                for start in Disassembler.blockStarts(instructions) {
                    let i = Int(start - e.start)
                    blocks[start] = text[i]
                    changed[i] = 0xCC
                }
                for (k, i) in instructions.enumerated() where i.kind == .compare {
                    compares[i.address] = i
                    if k + 1 < instructions.count, Executor.testsEquality(Array(text[Int(i.next - e.start)..<min(text.count, Int(i.next - e.start) + 4)])) {
                        equalityCompares.insert(i.address)
                    }
                    for case let .immediate(v) in i.operands where i.width >= 2 && v > 255 {
                        constants.insert(withUnsafeBytes(of: UInt64(bitPattern: v).littleEndian) { Array($0.prefix(i.width)) })
                    }
                }
            }
            try tracee.write(changed, to: e.start)
            texts.append((e.start, text))
        }
        blockCount = blocks.count
        self.constants = Array(constants).sorted { $0.lexicographicallyPrecedes($1) }
        // The comparison functions the covered files import: where their GOT slots point.
        var jumps: [UInt64: UInt64]?
        for path in Set(picked.compactMap(\.path)) {
            guard let first = image.process.mappings.filter({ $0.path == path && $0.offset == 0 }).map(\.start).min(),
                  let file = picked.first(where: { $0.path == path })?.file, let local = files.path(for: file),
                  let slots = ELFSymbols.importSlots(of: local) else { continue }
            for (name, slot) in slots {
                guard let counted = Executor.stringCompareFunctions[name] else { continue }
                // The PLT's jump through the slot is taken on every call, bound yet or not
                // (a lazily bound slot points back into the PLT until the first call, and
                // every run starts before it); a slot without one (bound at load, called
                // through the GOT) is caught where it points.
                if jumps == nil { jumps = Executor.pltJumps(in: texts) }
                if let jump = jumps?[first &+ slot] {
                    stringCompares[jump] = counted
                    continue
                }
                guard let target = try? tracee.memory.readWord(first &+ slot), target != 0,
                      maps.contains(where: { $0.protection & 4 != 0 && target >= $0.start && target < $0.end }) else { continue }
                stringCompares[target] = counted
            }
        }
    }

    /// Every `jmp *slot(%rip)` (ff 25, or f2 ff 25 with a bnd prefix) in `texts`, by the slot
    /// it jumps through: a PLT entry's jump through a GOT slot.
    static func pltJumps(in texts: [(start: UInt64, bytes: [UInt8])]) -> [UInt64: UInt64] {
        var out: [UInt64: UInt64] = [:]
        for t in texts {
            t.bytes.withUnsafeBufferPointer { b in
                var i = 0
                while i + 6 <= b.count {
                    if b[i] == 0xFF && b[i + 1] == 0x25 {
                        let disp = Int32(bitPattern: UInt32(b[i + 2]) | UInt32(b[i + 3]) << 8 | UInt32(b[i + 4]) << 16 | UInt32(b[i + 5]) << 24)
                        let at = t.start + UInt64(i)
                        let slot = at &+ 6 &+ UInt64(bitPattern: Int64(disp))
                        if out[slot] == nil { out[slot] = i > 0 && b[i - 1] == 0xF2 ? at - 1 : at }
                    }
                    i += 1
                }
            }
        }
        return out
    }

    /// Libraries `--cover auto` leaves out: the C library and dynamic loader, and the C++,
    /// Swift and compiler runtimes. Input rarely decides their paths, and their code is large.
    static func isRuntime(_ name: String) -> Bool {
        let runtime = ["libc.so", "ld-linux", "ld64.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "libresolv.so",
                       "libutil.so", "libanl.so", "libmvec.so", "libnss_", "libthread_db", "libstdc++.so", "libgcc_s.so",
                       "libc++.so", "libc++abi.so", "libunwind.so", "libswift", "libFoundation", "lib_Foundation", "libdispatch.so",
                       "libBlocksRuntime.so", "libatomic.so", "libgomp.so", "libasan.so", "libubsan.so", "linux-vdso"]
        return runtime.contains { name.hasPrefix($0) }
    }

    // MARK: Running

    /// Runs the process once on `data`. With `traceComparisons`, compare instructions also
    /// report their operands (slower; for new inputs only).
    public func run(_ data: [UInt8], traceComparisons: Bool = false) throws -> RunResult {
        do {
            return try runOnce(data, traceComparisons: traceComparisons)
        } catch let error as WBError {
            // The process gone under wb's hands (killed from outside while it waited between
            // runs, or by the kernel): said with how it ended, which no run of its own shows.
            guard case .processGone = error, let ending = endedBy() else { throw error }
            throw WBError.failed("the process being fuzzed \(ending) between wb's steps, not in a run of its own (\(error)); it cannot go on")
        }
    }

    /// How the fuzzed process ended, once it has (its wait status, collected as its tracer),
    /// or nil while it is still there.
    private func endedBy() -> String? {
        while tracee.ended == nil, (try? tracee.waitAny(block: false)) != nil {}
        if let ended = tracee.ended { return Executor.describe(ended) }
        return ProcFS.exists(tracee.pid) ? nil : "ended"
    }

    /// The end of a process in words: one killed from outside wb is named with the likely
    /// senders of a SIGKILL.
    static func describe(_ end: Tracee.Stop) -> String {
        switch end {
        case let .exited(code): return "exited with status \(code)"
        case .killed(SIGKILL):
            return "was killed by SIGKILL (from outside wb: the OOM killer, a CPU-time limit (RLIMIT_CPU counts every run's time), or a kill)"
        case let .killed(signal): return "was killed by \(SignalNames.name(signal))"
        default: return "ended"
        }
    }

    private func runOnce(_ data: [UInt8], traceComparisons: Bool) throws -> RunResult {
        executions += 1
        endOfInputRead = false
        if mode == .branching { layout.rewindFiles() }
        try deliver(data)
        if traceComparisons { try setCompareBreakpoints(true) }
        defer { if traceComparisons { try? setCompareBreakpoints(false) } }
        // Checksum compares a previous run passed more often than it may are armed again.
        for a in disarmed where compareBytes[a] != nil { try tracee.memory.writeCode([0xCC], to: a) }
        disarmed = []
        // The input as the checksums the run passes repair it.
        var input = data, repaired = false
        for (tid, s) in snapshot {
            try tracee.setRegisters(tid, s.0)
            try tracee.setXstate(tid, s.1)
            try tracee.setSignalMask(tid, s.2)
        }
        for tid in snapshot.keys { try tracee.resume(tid, .continue) }
        var running = Set(snapshot.keys)
        var result = RunResult(outcome: .hang, newBlocks: [], comparisons: [], crash: nil)
        var stepping: [Int32: UInt64] = [:]
        var compareHits: [UInt64: Int] = [:]
        /// Threads the run made: ended with it.
        var born: [Int32] = []
        var backForMore = false
        let deadline = Clock.monotonic + timeout
        runLoop: while true {
            // A run wb does not stop at each wait sends a server's messages as it reads them.
            let pacing = mode == .once && socketInput?.hasMore == true
            let wait = max(0.001, deadline - Clock.monotonic)
            guard let (tid, stop) = try tracee.waitAny(timeout: pacing ? min(wait, 0.005) : wait) else {
                if pacing && Clock.monotonic < deadline {
                    socketInput!.pace(tracee: tracee)
                    continue
                }
                result.outcome = .hang
                if !carefulReads, !inputFDs.isEmpty, inputSize > 0, inputPosition >= inputSize {
                    // Read to its end and still going: if it keeps making read calls, it is
                    // most likely back for more input (which the reads that do not stop
                    // cannot show), not stuck.
                    backForMore = try readsGoOn()
                }
                try stopAll(running)
                running = []
                // Where it was stuck, for the hang's bucket.
                let main = snapshot.keys.contains(tracee.pid) ? tracee.pid : snapshot.keys.min()!
                if let regs = try? tracee.registers(main) {
                    result.crash = capture(main, signal: 0, address: 0, regs)
                }
                break runLoop
            }
            if debugTrace && ProcessInfo.processInfo.environment["WB_FUZZ_TRACE"] == "2" { FileHandle.standardError.write(Data("wb-trace: \(tid) \(stop) rip=\(hex((try? tracee.registers(tid))?.rip ?? 0)) nr=\((try? tracee.registers(tid))?.origRax ?? 0) rdi=\((try? tracee.registers(tid))?.rdi ?? 0)\n".utf8)) }
            switch stop {
            case let .event(ev) where ev == Tracee.seccompEvent:
                // The filter's data says what the call is; it follows from the call's number.
                let regs = try tracee.registers(tid)
                let data = Executor.filterData[Int(truncatingIfNeeded: regs.origRax)] ?? 0
                if data & 1 != 0 && born.contains(tid) && regs.origRax == 60 {
                    // A thread of the run's own ending itself.
                    try tracee.resume(tid, .continue)
                    continue
                }
                if data & 1 != 0 {
                    // exit or exit_group: the run is over. The thread stays in this stop; the
                    // next run gives it the snapshot's registers, which skip the call.
                    result.outcome = .exited(Int32(truncatingIfNeeded: regs.rdi))
                    running.remove(tid)
                    break runLoop
                }
                if data & 2 != 0 {
                    layoutChanged = true
                    touched += layout.removedBy(regs)
                    if regs.origRax == 28 || regs.origRax == 440 {
                        // Guard markers: scans look for them from now on, and the ranges
                        // are built again after the run (with the snapshot's markers).
                        markersPossible = true
                        if regs.origRax == 440 { touched += guardedByProcessMadvise(regs) }
                    }
                }
                if data & 4 != 0 { fdsChanged = true }
                if data & 16 != 0, try wouldWaitForInput(regs) {
                    result.outcome = .waiting
                    running.remove(tid)
                    break runLoop
                }
                if data & 8 != 0 {
                    if try makesThread(tid, regs) {
                        // Followed (PTRACE_O_TRACECLONE) and ended with the run.
                        try tracee.resume(tid, .continue)
                        continue
                    }
                    // fork, vfork, exec: not something a snapshot can be branched over.
                    result.outcome = .forked
                    running.remove(tid)
                    break runLoop
                }
                try tracee.resume(tid, stepping[tid] != nil ? .singleStep : .continue)
            case let .event(ev):
                if ev == Tracee.cloneEvent {
                    for t in tracee.tids where snapshot[t] == nil && !born.contains(t) {
                        born.append(t)
                        running.insert(t)
                        try tracee.resume(t, .continue)
                    }
                }
                try tracee.resume(tid, stepping[tid] != nil ? .singleStep : .continue)
            case let .signal(sig):
                if sig == SIGTRAP {
                    var regs = try tracee.registers(tid)
                    let code = (try? tracee.signalInfo(tid)).map { $0.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: Int32.self) } } ?? 0
                    if code == 2 /* TRAP_TRACE */, let original = stepping.removeValue(forKey: tid) {
                        // Stepped over a compare: put its breakpoint back, unless it has
                        // reported enough for this run (a compare in a loop would trap on
                        // every iteration).
                        compareHits[original, default: 0] += 1
                        let limit = checksums[original] != nil ? Executor.checksumHitsPerRun : Executor.compareHitsPerRun
                        if compareHits[original]! < limit {
                            try tracee.memory.writeCode([0xCC], to: original)
                        } else if checksums[original] != nil {
                            disarmed.insert(original)
                        }
                        try tracee.resume(tid, .continue)
                        continue
                    }
                    let at = regs.rip &- 1
                    var handled = false
                    if let original = blocks.removeValue(forKey: at) {
                        // A block reached for the first time: its breakpoint goes for good.
                        if compareBytes[at] != nil { compareBytes[at] = original } else { try tracee.memory.writeCode([original], to: at) }
                        covered.insert(at)
                        coveredInOrder.append(at)
                        result.newBlocks.append(at)
                        regs.rip = at
                        try tracee.setRegisters(tid, regs)
                        handled = true
                    }
                    if let original = compareBytes[at], compares[at] != nil || stringCompares[at] != nil {
                        regs.rip = at
                        try tracee.setRegisters(tid, regs)
                        if traceComparisons, let insn = compares[at], var c = compared(insn, regs) {
                            c.address = at
                            c.hit = compareHits[at, default: 0]
                            result.comparisons.append(c)
                        }
                        if traceComparisons, let counted = stringCompares[at], let c = comparedStrings(regs, counted: counted) {
                            result.stringComparisons.append(c)
                        }
                        if let site = checksums[at], let insn = compares[at], try pass(site, hit: compareHits[at, default: 0], insn, tid: tid, &regs, input: &input) {
                            repaired = true
                        }
                        if !traceComparisons, checksums[at] != nil, let insn = compares[at], let (a, b) = operands(insn, regs) {
                            // A checksum compare in a run that does not trace compares: its
                            // flags are set here and the breakpoint stays, with no step.
                            regs.eflags = Executor.compareFlags(a, b, width: insn.width, eflags: regs.eflags)
                            regs.rip = insn.next
                            try tracee.setRegisters(tid, regs)
                            compareHits[at, default: 0] += 1
                            if compareHits[at]! >= Executor.checksumHitsPerRun {
                                try tracee.memory.writeCode([original], to: at)
                                disarmed.insert(at)
                            }
                            try tracee.resume(tid, .continue)
                            continue
                        }
                        try tracee.memory.writeCode([original], to: at)
                        stepping[tid] = at
                        try tracee.resume(tid, .singleStep)
                        continue
                    }
                    if handled { try tracee.resume(tid, .continue); continue }
                    // A breakpoint another thread reached first and wb has already taken
                    // away: the instruction is whole again, run it.
                    if code == 0x80 /* SI_KERNEL: int3 */, covered.contains(at) || compares[at] != nil || stringCompares[at] != nil,
                       let b = try? tracee.read(at, count: 1), b[0] != 0xCC {
                        regs.rip = at
                        try tracee.setRegisters(tid, regs)
                        try tracee.resume(tid, .continue)
                        continue
                    }
                    // A single-step trap left over from a step a signal cut short.
                    if code == 2 /* TRAP_TRACE */ && stepping[tid] == nil {
                        try tracee.resume(tid, .continue)
                        continue
                    }
                }
                let info = (try? tracee.signalInfo(tid)) ?? [UInt8](repeating: 0, count: 128)
                if sig == SIGTRAP || ends(tid, sig, code: info.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: Int32.self) }) {
                    // si_addr means something for faults only; for other signals the field holds the sender.
                    let fault = Executor.faultSignals.contains(sig)
                    let address = fault ? info.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self) } : 0
                    result.outcome = .crashed(signal: sig, address: address)
                    result.crash = capture(tid, signal: sig, address: address, try tracee.registers(tid))
                    running.remove(tid)
                    break runLoop
                }
                try tracee.resume(tid, stepping[tid] != nil ? .singleStep : .continue, signal: sig)
            case .interrupted:
                try tracee.resume(tid, stepping[tid] != nil ? .singleStep : .continue)
            case let .exited(code) where mode == .once && tid == tracee.pid:
                result.outcome = .exited(code)
                return result
            case .exited, .killed:
                if (mode == .once && tid != tracee.pid) || born.contains(tid) {
                    running.remove(tid)
                    born.removeAll { $0 == tid }
                    continue
                }
                throw WBError.failed("the process being fuzzed \(Executor.describe(stop)) despite wb (thread \(tid)), not where a run of its own ends; it cannot go on")
            }
        }
        if repaired { result.repaired = input }
        // Reads of the input that did not stop are seen in its position (looked at until one
        // run has read it: the count only tells whether the input is read at all).
        if inputReads == 0, !carefulReads, !inputFDs.isEmpty, inputPosition > 0 { inputReads += 1 }
        if mode == .once { return result }
        try stopAll(running)
        socketInput?.end()
        for t in born where tracee.tids.contains(t) { try tracee.endThread(t) }
        try resetMemory()
        if backForMore {
            // Run it again with the input's reads stopping, as every later run.
            try readCarefully()
            if debugTrace { FileHandle.standardError.write(Data("wb-trace: a run read all its input and kept reading; reads of the input stop from now on\n".utf8)) }
            return try runOnce(data, traceComparisons: traceComparisons)
        }
        return result
    }

    /// The state of a crashed (or stuck) thread: registers and symbolized frames. When the
    /// program counter is nowhere (a smashed return address), unwinding cannot start, so
    /// the stack is scanned for return addresses into code, which name where it happened.
    private func capture(_ tid: Int32, signal: Int32, address: UInt64, _ regs: Registers) -> CrashState {
        symbols.attach(pid: tracee.pid, threads: [(tid, regs)])
        var frames = symbols.backtrace(tid)
        if frames.isEmpty || frames[0].module == nil {
            let code = ((try? ProcFS.maps(tracee.pid, withFlags: false)) ?? []).filter { $0.protection & 4 != 0 }
            var scanned = [frames.first ?? symbols.symbolize(regs.rip)]
            for slot in 0..<256 where scanned.count < 16 {
                guard let word = try? tracee.memory.readWord(regs.rsp &+ UInt64(slot * 8)),
                      code.contains(where: { word > $0.start + 5 && word < $0.end }),
                      let before = try? tracee.read(word - 7, count: 7) else { continue }
                // A return address follows a call: e8 rel32, or ff /2 in its 2-, 3-, 6- and 7-byte forms.
                let isCall = before[2] == 0xE8 || before[5] == 0xFF && before[6] & 0x38 == 0x10
                    || before[4] == 0xFF && before[5] & 0x38 == 0x10 || before[1] == 0xFF && before[2] & 0x38 == 0x10
                    || before[0] == 0xFF && before[1] & 0x38 == 0x10
                if isCall { scanned.append(symbols.symbolize(word, exact: false)) }
            }
            frames = scanned
        }
        return CrashState(tid: tid, signal: signal, address: address, registers: regs, frames: frames)
    }

    /// Calls that read from an fd (for the count of reads by fd).
    static let readCalls: Set<Int> = [0, 19, 45, 47, 17, 295, 327, 299]

    /// Signals the kernel sends for a fault of the instruction (si_addr is the address).
    static let faultSignals: Set<Int32> = [SIGSEGV, SIGBUS, SIGILL, SIGFPE]
    /// Signals whose default action ends the process (with or without a core).
    static let terminating: Set<Int32> = [SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGKILL, SIGUSR1, SIGSEGV,
                                          SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGSTKFLT, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSYS]

    /// Whether `sig`, about to be delivered to `tid`, ends the run as a crash: what the process
    /// does with it now decides, not what it did at the snapshot — a handler it installed
    /// (a probe that catches SIGSEGV, abort's handler that re-raises) runs as it would
    /// outside wb, and an ignored signal is let go. A fault the kernel forces (a SIGSEGV
    /// while SIGSEGV is blocked) ends the process unless a handler can run.
    private func ends(_ tid: Int32, _ sig: Int32, code: Int32) -> Bool {
        guard Executor.terminating.contains(sig) else { return false }
        guard let d = ProcFS.signalDisposition(tracee.pid, tid: tid, signal: sig) else {
            return defaultTerminates.contains(sig) || Executor.faultSignals.contains(sig) || sig == SIGABRT || sig == SIGSYS
        }
        let forced = Executor.faultSignals.contains(sig) && code > 0
        if forced { return !d.caught || d.blocked }
        return !d.caught && !d.ignored
    }

    /// At a call that may wait for input (a read, accept, poll, epoll_wait): whether the
    /// process has come back for more. Reading the input fd after its end was read once, or
    /// waiting on anything with nothing ready, is the end of the iteration. A server's next
    /// message (or the end of its connection) is sent here first, when one is left.
    private func wouldWaitForInput(_ r: Registers) throws -> Bool {
        let call = Int(truncatingIfNeeded: r.origRax)
        let fd = Int32(truncatingIfNeeded: r.rdi)
        if Executor.readCalls.contains(call) {
            if readsByFD.count < 64 || readsByFD[fd] != nil { readsByFD[fd, default: 0] += 1 }
            if inputFDs.contains(fd) { inputReads += 1 }
            if case .file = input, inputReads == 0, executions < 100, let f = inputFD,
               SharedFiles.sameFile(tracee.pid, fd, as: f.rawValue) {
                inputReads += 1
            }
            if let socket = socketInput, socket.isConnection(fd, tracee: tracee) { inputReads += 1 }
        }
        // pread and preadv read at an offset of their own: they never mean "more input".
        if call == 17 || call == 295 || call == 327 { return false }
        if case .fd = input, inputFDs.contains(fd), let f = inputFD {
            guard lseek(f.rawValue, 0, SEEK_CUR) >= inputSize else { return false }
            if endOfInputRead { return true }
            endOfInputRead = true
            return false
        }
        while try wouldBlock(r, call: call) {
            guard let socket = socketInput, socket.feed() else { return true }
        }
        return false
    }

    /// Whether the call would wait: nothing to read or accept on its fd, nothing ready for a
    /// poll or epoll_wait with a timeout. A non-blocking fd, MSG_DONTWAIT or a zero timeout
    /// never waits.
    private func wouldBlock(_ r: Registers, call: Int) throws -> Bool {
        func ready(_ fds: [(Int32, Int16)]) -> Bool {
            var copies: [FileDescriptor] = []
            var set: [pollfd] = []
            for (fd, events) in fds where fd >= 0 {
                guard let c = try? tracee.takeFD(fd) else { continue }
                copies.append(c)
                set.append(pollfd(fd: c.rawValue, events: events, revents: 0))
            }
            if set.isEmpty { return false }
            return poll(&set, nfds_t(set.count), 0) != 0
        }
        func zeroTimespec(_ address: UInt64) -> Bool {
            guard address != 0, let t = try? tracee.read(address, count: 16) else { return false }
            return t.allSatisfy { $0 == 0 }
        }
        let fd = Int32(truncatingIfNeeded: r.rdi)
        switch call {
        case 232, 281:
            if Int32(truncatingIfNeeded: r.r10) == 0 { return false }
            return !ready([(fd, Int16(POLLIN))])
        case 441:
            if zeroTimespec(r.r10) { return false }
            return !ready([(fd, Int16(POLLIN))])
        case 7, 271:
            if call == 7 ? Int32(truncatingIfNeeded: r.rdx) == 0 : zeroTimespec(r.rdx) { return false }
            let count = Int(r.rsi)
            guard count > 0, count <= 1024, let bytes = try? tracee.read(r.rdi, count: count * 8) else { return false }
            let fds = (0..<count).map { i -> (Int32, Int16) in
                let b = bytes[(i * 8)..<(i * 8 + 8)].map { $0 }
                return (Int32(b[0]) | Int32(b[1]) << 8 | Int32(b[2]) << 16 | Int32(b[3]) << 24, Int16(b[4]) | Int16(b[5]) << 8)
            }
            return !ready(fds)
        case 23, 270:
            // select and pselect6: the read and write sets, nfds bits each.
            if call == 23 ? r.r8 != 0 && (try? tracee.read(r.r8, count: 16))?.allSatisfy({ $0 == 0 }) == true : zeroTimespec(r.r8) { return false }
            let count = Int(r.rdi)
            guard count > 0, count <= 1024 else { return false }
            var fds: [(Int32, Int16)] = []
            for (set, events) in [(r.rsi, Int16(POLLIN)), (r.rdx, Int16(POLLOUT))] where set != 0 {
                guard let bits = try? tracee.read(set, count: (count + 7) / 8) else { return false }
                for fd in 0..<count where bits[fd / 8] & (1 << (fd % 8)) != 0 { fds.append((Int32(fd), events)) }
            }
            return !ready(fds)
        default:
            let dontWait = UInt64(MSG_DONTWAIT)
            if call == 45 && r.r10 & dontWait != 0 || call == 47 && r.rdx & dontWait != 0 || call == 299 && r.rdx & dontWait != 0 { return false }
            guard let copy = try? tracee.takeFD(fd) else { return false }
            if fcntl(copy.rawValue, F_GETFL) & O_NONBLOCK != 0 { return false }
            var p = pollfd(fd: copy.rawValue, events: Int16(POLLIN), revents: 0)
            return poll(&p, 1, 0) == 0
        }
    }

    /// The ranges a process_madvise about to run puts guard markers in or takes them out of
    /// (its iovec array, read from the process).
    private func guardedByProcessMadvise(_ r: Registers) -> [(start: UInt64, end: UInt64)] {
        let count = Int(min(r.rdx, 1024))
        guard count > 0, let bytes = try? tracee.read(r.rsi, count: count * 16) else { return [] }
        return (0..<count).compactMap { i in
            let base = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i * 16, as: UInt64.self) }
            let length = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i * 16 + 8, as: UInt64.self) }
            return length == 0 ? nil : (base & ~4095, (base &+ length &+ 4095) & ~4095)
        }
    }

    /// Whether a clone or clone3 about to run makes a thread (CLONE_THREAD), not a process.
    private func makesThread(_ tid: Int32, _ r: Registers) throws -> Bool {
        let cloneThread: UInt64 = 0x10000
        switch r.origRax {
        case 56: return r.rdi & cloneThread != 0
        case 435: return (try? tracee.memory.readWord(r.rdi)).map { $0 & cloneThread != 0 } ?? false
        default: return false
        }
    }

    /// The strings a comparison function is about to compare: `counted` ones up to rdx
    /// bytes, the others up to their first NUL (64 bytes at most either way).
    private func comparedStrings(_ r: Registers, counted: Bool) -> StringComparison? {
        let limit = counted ? Int(min(r.rdx, 64)) : 64
        guard limit > 0 else { return nil }
        func string(_ address: UInt64) -> [UInt8]? {
            // Up to the end of the page first: the rest may not be mapped.
            let inPage = Int(4096 - address % 4096)
            guard var bytes = try? tracee.read(address, count: min(limit, inPage)) else { return nil }
            if bytes.count < limit, !counted && !bytes.contains(0) || counted, let more = try? tracee.read(address + UInt64(bytes.count), count: limit - bytes.count) {
                bytes += more
            }
            if !counted, let nul = bytes.firstIndex(of: 0) { bytes = Array(bytes[..<nul]) }
            return bytes
        }
        guard let a = string(r.rdi), let b = string(r.rsi), a != b, !a.isEmpty || !b.isEmpty else { return nil }
        return StringComparison(left: a, right: b)
    }

    /// The values a compare instruction is about to compare.
    private func compared(_ insn: Disassembler.Instruction, _ r: Registers) -> Comparison? {
        guard let (a, b) = operands(insn, r), a != b else { return nil }
        return Comparison(left: a, right: b, width: insn.width)
    }

    /// eflags after `cmp a, b` at `width` bytes: CF, PF, AF, ZF, SF and OF as the
    /// instruction sets them, the other bits as they were.
    static func compareFlags(_ a: UInt64, _ b: UInt64, width: Int, eflags: UInt64) -> UInt64 {
        let mask = Executor.mask(bytes: width), top = UInt64(1) << UInt64(width * 8 - 1)
        let a = a & mask, b = b & mask, result = (a &- b) & mask
        var f = eflags & ~UInt64(0x8D5)
        if a < b { f |= 0x1 }                                          // CF
        if (result & 0xFF).nonzeroBitCount % 2 == 0 { f |= 0x4 }      // PF
        if (a ^ b ^ result) & 0x10 != 0 { f |= 0x10 }                  // AF
        if result == 0 { f |= 0x40 }                                   // ZF
        if result & top != 0 { f |= 0x80 }                             // SF
        if (a ^ b) & (a ^ result) & top != 0 { f |= 0x800 }            // OF
        return f
    }

    /// The low `bytes` bytes of a word.
    static func mask(bytes: Int) -> UInt64 { bytes >= 8 ? ~0 : (1 << UInt64(bytes * 8)) - 1 }

    /// Both operands of a compare instruction, at its width.
    private func operands(_ insn: Disassembler.Instruction, _ r: Registers) -> (UInt64, UInt64)? {
        let mask = Executor.mask(bytes: insn.width)
        func value(_ o: Disassembler.Operand) -> UInt64? {
            switch o {
            case let .register(i, _, shift): return Executor.general(r, i).map { ($0 >> UInt64(shift)) & mask }
            case let .immediate(v): return UInt64(bitPattern: v) & mask
            case .memory:
                guard let a = Executor.address(of: o, insn, r), let w = try? tracee.memory.readWord(a) else { return nil }
                return w & mask
            case .none: return nil
            }
        }
        guard insn.operands.count == 2, let a = value(insn.operands[0]), let b = value(insn.operands[1]) else { return nil }
        return (a, b)
    }

    /// Sets operand `index` of a compare instruction about to run to `value` (at its width).
    private func setOperand(_ insn: Disassembler.Instruction, _ index: Int, _ value: UInt64, tid: Int32, _ r: inout Registers) throws -> Bool {
        let mask = Executor.mask(bytes: insn.width)
        switch insn.operands[index] {
        case let .register(i, _, shift):
            guard let old = Executor.general(r, i) else { return false }
            let s = UInt64(shift)
            Executor.setGeneral(&r, i, (old & ~(mask << s)) | ((value & mask) << s))
            try tracee.setRegisters(tid, r)
            return true
        case .memory:
            guard let a = Executor.address(of: insn.operands[index], insn, r) else { return false }
            try tracee.write(withUnsafeBytes(of: value.littleEndian) { Array($0.prefix(insn.width)) }, to: a)
            return true
        case .immediate, .none:
            return false
        }
    }

    /// Register `i` of struct user_regs_struct (those a compare can read).
    static func general(_ r: Registers, _ i: Int) -> UInt64? {
        switch i {
        case 0: r.r15; case 1: r.r14; case 2: r.r13; case 3: r.r12; case 4: r.rbp; case 5: r.rbx
        case 6: r.r11; case 7: r.r10; case 8: r.r9; case 9: r.r8; case 10: r.rax; case 11: r.rcx
        case 12: r.rdx; case 13: r.rsi; case 14: r.rdi; case 15: r.origRax; case 16: r.rip; case 17: r.cs
        case 18: r.eflags; case 19: r.rsp
        default: nil
        }
    }

    static func setGeneral(_ r: inout Registers, _ i: Int, _ v: UInt64) {
        switch i {
        case 0: r.r15 = v; case 1: r.r14 = v; case 2: r.r13 = v; case 3: r.r12 = v; case 4: r.rbp = v; case 5: r.rbx = v
        case 6: r.r11 = v; case 7: r.r10 = v; case 8: r.r9 = v; case 9: r.r8 = v; case 10: r.rax = v; case 11: r.rcx = v
        case 12: r.rdx = v; case 13: r.rsi = v; case 14: r.rdi = v
        default: break
        }
    }

    /// The address a memory operand refers to.
    static func address(of o: Disassembler.Operand, _ insn: Disassembler.Instruction, _ r: Registers) -> UInt64? {
        guard case let .memory(base, index, scale, disp) = o else { return nil }
        var a = UInt64(bitPattern: disp)
        if base == -2 { a = a &+ insn.next } else if base >= 0 { guard let b = general(r, base) else { return nil }; a = a &+ b }
        if index >= 0 { guard let x = general(r, index) else { return nil }; a = a &+ x &* UInt64(scale) }
        return a
    }

    /// Whether the instruction starting with `bytes` tests the flags for equality: je, jne
    /// (short or near), sete, setne, cmove, cmovne (with a REX prefix or not).
    static func testsEquality(_ bytes: [UInt8]) -> Bool {
        var b = bytes[...]
        if let f = b.first, f & 0xF0 == 0x40 { b = b.dropFirst() }
        guard let first = b.first else { return false }
        if first == 0x74 || first == 0x75 { return true }
        guard first == 0x0F, b.count >= 2 else { return false }
        return [0x84, 0x85, 0x94, 0x95, 0x44, 0x45].contains(b[b.startIndex + 1])
    }

    /// Makes every later run pass these checksum compares (and repair its input), as
    /// `ChecksumSite` describes (one already passed gets the fields found since). Their
    /// breakpoints stay in.
    public func passChecksums(_ sites: [ChecksumSite]) throws {
        var new: [UInt64] = []
        for site in sites where compares[site.address] != nil {
            if checksums[site.address] == nil { new.append(site.address) }
            checksums[site.address] = site
        }
        try setCompareBreakpoints(true, only: new)
    }

    /// At a checksum compare whose operands differ: the operand that follows the input's
    /// field gets the other's value, and `input` is repaired to match. False when the field
    /// cannot be placed (the run goes on as it is).
    private func pass(_ site: ChecksumSite, hit: Int, _ insn: Disassembler.Instruction, tid: Int32, _ r: inout Registers, input: inout [UInt8]) throws -> Bool {
        guard let (a, b) = operands(insn, r), a != b else { return false }
        let (now, wanted) = site.stored == 0 ? (a, b) : (b, a)
        guard let fixed = site.repair(input, hit: hit, now: now, wanted: wanted, compareWidth: insn.width) else { return false }
        guard try setOperand(insn, site.stored, wanted, tid: tid, &r) else { return false }
        input = fixed
        return true
    }

    /// The parts of an executable mapping that hold code: its file's executable sections
    /// (the segment also carries headers, symbol tables and relocations, which the dynamic
    /// loader reads and which must not get breakpoints), or the whole mapping when the file
    /// has no section headers.
    private func codeRanges(of e: ProcFS.MapsEntry) -> [Range<UInt64>] {
        let whole = [e.start..<e.end]
        guard let m = image.process.mappings.first(where: { $0.start == e.start }), let id = m.file,
              let path = files.path(for: id), let sections = ELFSymbols.codeSections(of: path) else { return whole }
        let fileEnd = m.offset + (e.end - e.start)
        return sections.compactMap { s in
            let lo = max(s.fileOffset, m.offset), hi = min(s.fileOffset + s.size, fileEnd)
            return lo < hi ? (e.start + (lo - m.offset))..<(e.start + (hi - m.offset)) : nil
        }
    }

    /// Puts breakpoints on every compare instruction (on; or on those of `only`) or takes them
    /// away again but for the checksums', a page at a time: one read and one write per page
    /// of code, not per instruction.
    private func setCompareBreakpoints(_ on: Bool, only: [UInt64]? = nil) throws {
        let addresses = on ? (only ?? Array(compares.keys) + Array(stringCompares.keys)).filter { compareBytes[$0] == nil }
            : Array(compareBytes.keys).filter { checksums[$0] == nil }
        for (page, here) in Dictionary(grouping: addresses, by: { $0 & ~4095 }) {
            guard var bytes = try? tracee.read(page, count: 4096) else { continue }
            for a in here {
                let i = Int(a - page)
                if on {
                    compareBytes[a] = bytes[i] == 0xCC ? (blocks[a] ?? bytes[i]) : bytes[i]
                    bytes[i] = 0xCC
                } else {
                    bytes[i] = blocks[a] != nil ? 0xCC : compareBytes[a]!
                }
            }
            try tracee.memory.writeCode(bytes, to: page)
        }
        if !on { compareBytes = compareBytes.filter { checksums[$0.key] != nil } }
    }

    private func stopAll(_ running: Set<Int32>) throws {
        for t in running { try tracee.interrupt(t) }
        for t in running {
            wait: while true {
                switch try tracee.wait(t) {
                case .interrupted: try dropPendingSignals(t); break wait
                case .exited, .killed: break wait
                case .signal, .event: try tracee.resume(t, .continue)
                }
            }
        }
    }

    /// A thread stopped by wb can still hold signals the run raised: a breakpoint's trap the
    /// kernel queued just as the stop came (the stop is reported first), a fault, a timer's
    /// signal. The next run would start by taking them, at the snapshot's first instruction,
    /// as if the input had caused them. Each one the snapshot's signal mask lets through is
    /// taken here and thrown away: the thread goes on to the signal's stop and stays there,
    /// and the next run resumes it without the signal. Signals the mask blocks stay queued,
    /// as they were in the snapshot.
    private func dropPendingSignals(_ tid: Int32) throws {
        guard let mask = snapshot[tid]?.2 else { return }
        func deliverable() throws -> Bool {
            let queued = try tracee.pendingSignals(tid, shared: false) + tracee.pendingSignals(tid, shared: true)
            return queued.contains { $0.signal > 0 && $0.signal <= 64 && mask & (1 << UInt64($0.signal - 1)) == 0 }
        }
        guard try deliverable() else { return }
        try tracee.setSignalMask(tid, mask)
        for _ in 0..<64 {
            try tracee.resume(tid, .continue)
            switch try tracee.wait(tid) {
            case .signal: if try !deliverable() { return }
            case .interrupted, .event: if try !deliverable() { return }
            case .exited, .killed: return
            }
        }
    }

    /// Puts back every page the run wrote, and repairs mappings and fds if it changed them.
    private func resetMemory() throws {
        guard trackedSpan.0 < trackedSpan.1 else {
            if layoutChanged || fdsChanged { _ = try repair() }
            if !copiedTriples.isEmpty { try tracee.memory.write(scatter: copiedTriples) }
            return
        }
        // Two ways to find the written pages, picked per snapshot. A large one is scanned on
        // the kernel's fast path, which only works while protecting what it finds; putting
        // the contents back then faults on those pages, which are protected once more below.
        // A small one is scanned without protecting (the walk is short either way).
        var written = try scanner.scan(start: trackedSpan.0, end: trackedSpan.1, writtenOnly: true, reprotect: protectWhileScanning,
                                       trackedOnly: true, vector: scanVector, markersPossible: markersPossible)
        if layoutChanged || fdsChanged {
            // Pieces built again hold the snapshot's contents (and guard markers) already.
            let rebuilt = try repair()
            if !rebuilt.isEmpty {
                written = written.flatMap { w in
                    SnapshotLayout.subtract(w.start, w.end, rebuilt).map { PageScanner.Range(start: $0.start, end: $0.end, file: w.file, written: true) }
                }
            }
        }
        // Straight from the mapped image where it holds the page; other pages (file
        // contents, zeros) are read once and kept. The untracked copies and the hot pages go
        // in the same call.
        var triples = copiedTriples + hotTriples
        var protect: [(start: UInt64, end: UInt64)] = []
        var streaks: [UInt64: Int] = [:]
        for r in written {
            var a = r.start
            while a < r.end {
                defer { a += 4096 }
                if hotPages.contains(a) { continue }
                let local = UInt64(UInt(bitPattern: snapshotPage(a)))
                let streak = (writeStreaks[a] ?? 0) + 1
                if streak >= Executor.hotAfterRuns && hotPages.count < Executor.hotPagesAtMost {
                    hotPages.insert(a)
                    hotTriples += [local, a, 4096]
                } else {
                    streaks[a] = streak
                    if let last = protect.last, last.end == a { protect[protect.count - 1].end = a + 4096 } else { protect.append((a, a + 4096)) }
                }
                if triples.count >= 3, triples[triples.count - 3] + triples[triples.count - 1] == local,
                   triples[triples.count - 2] + triples[triples.count - 1] == a {
                    triples[triples.count - 1] += 4096
                } else {
                    triples += [local, a, 4096]
                }
            }
        }
        writeStreaks = streaks
        if !triples.isEmpty { try tracee.memory.write(scatter: triples) }
        // Protected again range by range: the written ranges are few and short, and a
        // second walk of the whole span would cost more than the scan that found them.
        for r in protect { try tracker.protect(start: r.start, end: r.end) }
    }

    /// The snapshot's contents of the page at `address`: in the mapped image, or read once
    /// (from the file a mapping shows, or zeros) and kept for later runs.
    private func snapshotPage(_ address: UInt64) -> UnsafeRawPointer {
        if let p = memory.storedPage(address) { return p }
        if let p = pageCache[address] { return UnsafeRawPointer(p) }
        let p = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        let bytes = memory.read(address, count: 4096) ?? [UInt8](repeating: 0, count: 4096)
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: 4096) }
        pageCache[address] = p
        return UnsafeRawPointer(p)
    }

    /// After a run that mapped, unmapped or opened things: back to the snapshot's layout.
    /// Mappings the run made go; the parts of the snapshot's mappings it unmapped, moved,
    /// mapped over, shrank or discarded come back with the snapshot's contents, protection
    /// and breakpoints; protections it changed are put back; fds it opened are closed and
    /// fds of the snapshot it closed or replaced come back as the same open files.
    /// Returns the ranges built again, in address order.
    private func repair() throws -> [(start: UInt64, end: UInt64)] {
        let pid = tracee.pid
        var rebuilt: [(start: UInt64, end: UInt64)] = []
        let removed = touched + tracker.takeRemoved()
        let checkFDs = fdsChanged
        touched = []
        layoutChanged = false
        fdsChanged = false
        try tracee.withSyscalls(in: pid) { s in
            let text = try Paths.readText("/proc/\(pid)/maps")
            if !removed.isEmpty || !layout.sameMappings(text) {
                try layout.dropMappingsOfRun(s, now: ProcFS.parseMaps(text))
                let pieces = layout.lostPieces(lost: removed, now: try ProcFS.maps(pid, withFlags: false))
                if debugTrace { FileHandle.standardError.write(Data("wb-trace: rebuilding \(pieces.map { "\(hex($0.start))-\(hex($0.end)) \($0.entry.path)" })\n".utf8)) }
                for p in pieces { try rebuild(p, s) }
                rebuilt = SnapshotLayout.merged(pieces.map { ($0.start, $0.end) })
                // What the rebuilding itself unmapped (MAP_FIXED over tracked memory) is not the next run's doing.
                _ = tracker.takeRemoved()
                try layout.putBackProtections(s, now: try ProcFS.maps(pid, withFlags: false))
            }
            if checkFDs {
                let (opened, lost) = try layout.fdChanges(pid: pid)
                var scratch: UInt64 = 0
                defer { if scratch != 0 { _ = try? s.raw(.munmap, scratch, 4096) } }
                try layout.putBackFDs(s, opened: opened, lost: lost, tracee: tracee) {
                    if scratch == 0 { scratch = try s.mapScratch(bytes: 4096) }
                    return scratch
                }
            }
        }
        return rebuilt
    }

    /// Builds a piece of a snapshot mapping again: fresh private memory with the snapshot's
    /// contents (stored pages, the file's for file mappings), protection and coverage
    /// breakpoints, tracked for writes again.
    private func rebuild(_ p: LostPiece, _ s: RemoteSyscalls) throws {
        let e = p.entry, length = p.end - p.start
        let name = e.path.isEmpty ? "anonymous memory" : e.path
        if e.shared || e.path.hasPrefix("[v") {
            throw WBError.failed("a run unmapped \(name) at \(hex(p.start))-\(hex(p.end)) (a \(e.shared ? "shared" : "kernel") mapping); wb cannot put it back between runs: take the snapshot where the program no longer unmaps it")
        }
        let r = try s.raw(.mmap, p.start, length, UInt64(PROT_READ | PROT_WRITE), UInt64(MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED), UInt64.max, 0)
        guard UInt64(bitPattern: r) == p.start else {
            throw WBError.system(call: "remote mmap", errno: Int32(truncatingIfNeeded: -r), what: "putting \(name) back at \(hex(p.start))")
        }
        var triples: [UInt64] = []
        for a in stride(from: p.start, to: p.end, by: 4096) {
            guard let page = e.inode == 0 ? memory.storedPage(a) : snapshotPage(a) else { continue }
            let local = UInt64(UInt(bitPattern: page))
            if triples.count >= 3, triples[triples.count - 3] + triples[triples.count - 1] == local,
               triples[triples.count - 2] + triples[triples.count - 1] == a {
                triples[triples.count - 1] += 4096
            } else {
                triples += [local, a, 4096]
            }
        }
        try tracee.memory.write(scatter: triples)
        for g in snapshotGuards where g.start < p.end && p.start < g.end {
            let lo = max(g.start, p.start), hi = min(g.end, p.end)
            let r = try s.raw(.madvise, lo, hi - lo, 102 /* MADV_GUARD_INSTALL */)
            guard r == 0 else {
                throw WBError.system(call: "remote madvise(MADV_GUARD_INSTALL)", errno: Int32(truncatingIfNeeded: -r), what: "putting the guard pages at \(hex(lo))-\(hex(hi)) back")
            }
        }
        if e.protection & 4 != 0 {
            for (address, _) in blocks where address >= p.start && address < p.end { try tracee.memory.writeCode([0xCC], to: address) }
        }
        if e.protection != PROT_READ | PROT_WRITE { _ = try s.raw(.mprotect, p.start, length, UInt64(e.protection)) }
        if e.protection & PROT_WRITE != 0 && !copied.contains(where: { $0.start < p.end && p.start < $0.end }),
           tracker.register(start: p.start, end: p.end) {
            try tracker.protect(start: p.start, end: p.end)
        }
    }

    /// Pins the process's threads and the calling thread to one CPU: ptrace round trips
    /// between two processes on one core cost a fraction of those across cores.
    public func pin(cpu: Int) {
        for tid in tracee.tids { pinToCPU(tid, cpu) }
        pinToCPU(0, cpu)
    }

    /// Ends the fuzzing copy.
    public func terminate() {
        tracker?.release()
        restored.terminate()
    }
}
