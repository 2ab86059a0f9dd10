import Foundation
import Glibc
import WBCore
import WBRestore
import WBSymbols
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
}

public struct Comparison: Hashable, Sendable {
    public var left: UInt64
    public var right: UInt64
    public var width: Int
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
    private var copied: [(start: UInt64, bytes: [UInt8])] = []
    private var snapshotMaps: [String] = []
    private var snapshotFDs: [Int32] = []
    private var inputFD: FileDescriptor?
    private var inputSize = -1
    private var pageCache: [UInt64: UnsafeMutableRawPointer] = [:]
    private let scanVector = ScanVector()
    private var protectWhileScanning = false
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
    /// Compare instructions, for comparison-tracing runs.
    private var compares: [UInt64: Disassembler.Instruction] = [:]
    private var compareBytes: [UInt64: UInt8] = [:]
    /// Constants compared against in the code: a dictionary for free.
    public private(set) var constants: [[UInt8]] = []
    public private(set) var executions = 0
    private let debugTrace = ProcessInfo.processInfo.environment["WB_FUZZ_TRACE"] != nil

    /// Restores `image` stopped and prepares it for runs. `cover` chooses the code that gets
    /// coverage breakpoints: "exe", "all", or a library name.
    public init(image: Image, input: InputChannel, cover: String?, options: RestoreOptions, mode: Mode = .branching) throws {
        self.image = image
        self.input = input
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
                copied.append((e.start, try tracee.read(e.start, count: Int(e.end - e.start))))
            }
        }
        trackedSpan = (low, high)
        let trackedBytes = tracker.ranges.reduce(0) { $0 + $1.end - $1.start }
        protectWhileScanning = trackedBytes > 256 << 20
        reset = "written pages of \(trackedBytes >> 20) MiB tracked (userfaultfd write-protect, PAGEMAP_SCAN"
            + (protectWhileScanning ? ", protecting while scanning)" : ")")
        if debugTrace {
            FileHandle.standardError.write(Data("wb-trace: tracked \(tracker.ranges.map { "\(hex($0.start))-\(hex($0.end))" }) copied \(copied.map { "\(hex($0.start))+\($0.bytes.count)" })\n".utf8))
        }
        try tracker.protectAll()
        snapshotMaps = try Paths.readText("/proc/\(tracee.pid)/maps").split(separator: "\n").map(String.init)
        snapshotFDs = try ProcFS.fds(tracee.pid)
        if let cover { try placeBreakpoints(cover: cover, maps: now) }
    }

    // MARK: Input

    private func setUpInput(_ s: RemoteSyscalls, scratch: UInt64) throws {
        switch input {
        case let .fd(n):
            try tracee.write(Array("wb-input".utf8) + [0], to: scratch)
            let m = try s.call(.memfdCreate, scratch, 0, what: "creating the input file")
            try s.call(.dup2, m, UInt64(n), what: "putting the input on fd \(n)")
            try s.call(.close, m, what: "closing a spare fd")
            inputFD = try tracee.takeFD(n)
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
    /// run; reads (16) let wb see the process going back for more input.
    static let traced: [(Int, UInt32)] = [(231, 1), (60, 1), (12, 2), (9, 2), (11, 2), (25, 2), (10, 2),
                                       (2, 4), (257, 4), (3, 4), (32, 4), (33, 4), (292, 4), (22, 4), (293, 4),
                                       (41, 4), (319, 4), (290, 4), (291, 4), (43, 4), (288, 4), (56, 8), (435, 8), (59, 8), (322, 8),
                                       (0, 16), (19, 16), (45, 16), (47, 16)]
    static let filterData = Dictionary(uniqueKeysWithValues: traced)

    private func installFilter(_ s: RemoteSyscalls, scratch: UInt64) throws {
        let filter = SeccompFilter(traced: Executor.traced.map { (nr: $0.0, data: UInt16($0.1)) })
        try filter.install(tracee, s, scratch: scratch)
    }

    // MARK: Coverage

    private func placeBreakpoints(cover: String, maps: [ProcFS.MapsEntry]) throws {
        // Chosen by the paths the process had (a file restored from the image's own copy
        // shows another path here), then found here by address.
        let exe = image.process.exe
        let chosen = Set(image.process.mappings.filter { m in
            guard m.protection & 4 != 0, m.kind == .file, let path = m.path, path.hasPrefix("/") else { return false }
            switch cover {
            case "exe": return path == exe
            case "all": return true
            default: return path.split(separator: "/").last.map { $0.hasPrefix(cover) } ?? false
            }
        }.map(\.start))
        let code = maps.filter { $0.protection & 4 != 0 && chosen.contains($0.start) }
        if code.isEmpty { throw WBError.invalidArgument("--cover \(cover): no executable mapping of the process matches") }
        var constants = Set<[UInt8]>()
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
                for i in instructions where i.kind == .compare {
                    compares[i.address] = i
                    for case let .immediate(v) in i.operands where i.width >= 2 && v > 255 {
                        constants.insert(withUnsafeBytes(of: UInt64(bitPattern: v).littleEndian) { Array($0.prefix(i.width)) })
                    }
                }
            }
            try tracee.write(changed, to: e.start)
        }
        blockCount = blocks.count
        self.constants = Array(constants).sorted { $0.lexicographicallyPrecedes($1) }
    }

    // MARK: Running

    /// Runs the process once on `data`. With `traceComparisons`, compare instructions also
    /// report their operands (slower; for new inputs only).
    public func run(_ data: [UInt8], traceComparisons: Bool = false) throws -> RunResult {
        executions += 1
        endOfInputRead = false
        try deliver(data)
        if traceComparisons { try setCompareBreakpoints(true) }
        defer { if traceComparisons { try? setCompareBreakpoints(false) } }
        for (tid, s) in snapshot {
            try tracee.setRegisters(tid, s.0)
            try tracee.setXstate(tid, s.1)
            try tracee.setSignalMask(tid, s.2)
        }
        for tid in snapshot.keys { try tracee.resume(tid, .continue) }
        var running = Set(snapshot.keys)
        var result = RunResult(outcome: .hang, newBlocks: [], comparisons: [], crash: nil)
        var stepping: [Int32: UInt64] = [:]
        let deadline = Clock.monotonic + timeout
        runLoop: while true {
            guard let (tid, stop) = try tracee.waitAny(timeout: max(0.001, deadline - Clock.monotonic)) else {
                result.outcome = .hang
                try stopAll(running)
                running = []
                // Where it was stuck, for the hang's bucket.
                let main = snapshot.keys.contains(tracee.pid) ? tracee.pid : snapshot.keys.min()!
                if let regs = try? tracee.registers(main) {
                    result.crash = capture(main, signal: 0, address: 0, regs)
                }
                break runLoop
            }
            if debugTrace && ProcessInfo.processInfo.environment["WB_FUZZ_TRACE"] == "2" { FileHandle.standardError.write(Data("wb-trace: \(tid) \(stop) rip=\(hex((try? tracee.registers(tid))?.rip ?? 0))\n".utf8)) }
            switch stop {
            case let .event(ev) where ev == Tracee.seccompEvent:
                // The filter's data says what the call is; it follows from the call's number.
                let regs = try tracee.registers(tid)
                let data = Executor.filterData[Int(truncatingIfNeeded: regs.origRax)] ?? 0
                if data & 1 != 0 {
                    // exit or exit_group: the run is over. The thread stays in this stop; the
                    // next run gives it the snapshot's registers, which skip the call.
                    result.outcome = .exited(Int32(truncatingIfNeeded: regs.rdi))
                    running.remove(tid)
                    break runLoop
                }
                if data & 2 != 0 { layoutChanged = true }
                if data & 4 != 0 { fdsChanged = true }
                if data & 16 != 0, try wouldWaitForInput(tid, fd: Int32(truncatingIfNeeded: regs.rdi)) {
                    result.outcome = .waiting
                    running.remove(tid)
                    break runLoop
                }
                if data & 8 != 0 {
                    // clone, fork, exec: not something a snapshot can be branched over.
                    result.outcome = .crashed(signal: SIGSYS, address: 0)
                    running.remove(tid)
                    break runLoop
                }
                try tracee.resume(tid, .continue)
            case .event:
                try tracee.resume(tid, .continue)
            case let .signal(sig):
                if sig == SIGTRAP {
                    var regs = try tracee.registers(tid)
                    if let original = stepping.removeValue(forKey: tid) {
                        // Stepped over a compare: put its breakpoint back.
                        try tracee.memory.writeCode([0xCC], to: original)
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
                    if let original = compareBytes[at], let insn = compares[at] {
                        regs.rip = at
                        try tracee.setRegisters(tid, regs)
                        if let c = compared(insn, regs) { result.comparisons.append(c) }
                        try tracee.memory.writeCode([original], to: at)
                        stepping[tid] = at
                        try tracee.resume(tid, .singleStep)
                        continue
                    }
                    if handled { try tracee.resume(tid, .continue); continue }
                }
                if sig == SIGTRAP || defaultTerminates.contains(sig) || [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS].contains(sig) {
                    let info = (try? tracee.signalInfo(tid)) ?? [UInt8](repeating: 0, count: 128)
                    // si_addr means something for faults only; for other signals the field holds the sender.
                    let fault = [SIGSEGV, SIGBUS, SIGILL, SIGFPE].contains(sig)
                    let address = fault ? info.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self) } : 0
                    result.outcome = .crashed(signal: sig, address: address)
                    result.crash = capture(tid, signal: sig, address: address, try tracee.registers(tid))
                    running.remove(tid)
                    break runLoop
                }
                try tracee.resume(tid, .continue, signal: sig)
            case .interrupted:
                try tracee.resume(tid, .continue)
            case let .exited(code) where mode == .once && tid == tracee.pid:
                result.outcome = .exited(code)
                return result
            case .exited, .killed:
                if mode == .once && tid != tracee.pid { running.remove(tid); continue }
                throw WBError.failed("the process being fuzzed ended despite wb (thread \(tid)); it cannot go on")
            }
        }
        if mode == .once { return result }
        try stopAll(running)
        try resetMemory()
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

    /// At a read: whether the process has come back for more input. Reading the input fd
    /// after its end was read once, or any other fd with nothing to read, is the end of
    /// the iteration (the read would block, or see the end of input again).
    private func wouldWaitForInput(_ tid: Int32, fd: Int32) throws -> Bool {
        if case let .fd(n) = input, fd == n, let f = inputFD {
            guard lseek(f.rawValue, 0, SEEK_CUR) >= inputSize else { return false }
            if endOfInputRead { return true }
            endOfInputRead = true
            return false
        }
        guard let copy = try? tracee.takeFD(fd) else { return false }
        var p = pollfd(fd: copy.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 0
    }

    /// The values a compare instruction is about to compare.
    private func compared(_ insn: Disassembler.Instruction, _ r: Registers) -> Comparison? {
        let general: [UInt64] = [r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx,
                                 r.rsi, r.rdi, r.origRax, r.rip, r.cs, r.eflags, r.rsp]
        let mask: UInt64 = insn.width >= 8 ? ~0 : (1 << UInt64(insn.width * 8)) - 1
        func value(_ o: Disassembler.Operand) -> UInt64? {
            switch o {
            case let .register(i, _, shift): return i >= 0 && i < general.count ? (general[i] >> UInt64(shift)) & mask : nil
            case let .immediate(v): return UInt64(bitPattern: v) & mask
            case let .memory(base, index, scale, disp):
                var a = UInt64(bitPattern: disp)
                if base == -2 { a = a &+ insn.next } else if base >= 0 && base < general.count { a = a &+ general[base] }
                if index >= 0 && index < general.count { a = a &+ general[index] &* UInt64(scale) }
                guard let w = try? tracee.memory.readWord(a) else { return nil }
                return w & mask
            case .none: return nil
            }
        }
        guard insn.operands.count == 2, let a = value(insn.operands[0]), let b = value(insn.operands[1]), a != b else { return nil }
        return Comparison(left: a, right: b, width: insn.width)
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

    private func setCompareBreakpoints(_ on: Bool) throws {
        if on {
            for (address, _) in compares where compareBytes[address] == nil {
                guard let b = try? tracee.read(address, count: 1) else { continue }
                compareBytes[address] = b[0] == 0xCC ? (blocks[address] ?? b[0]) : b[0]
                try tracee.memory.writeCode([0xCC], to: address)
            }
        } else {
            for (address, original) in compareBytes {
                try tracee.memory.writeCode([blocks[address] != nil ? 0xCC : original], to: address)
            }
            compareBytes = [:]
        }
    }

    private func stopAll(_ running: Set<Int32>) throws {
        for t in running { try tracee.interrupt(t) }
        for t in running {
            wait: while true {
                switch try tracee.wait(t) {
                case .interrupted, .exited, .killed: break wait
                case .signal, .event: try tracee.resume(t, .continue)
                }
            }
        }
    }

    /// Puts back every page the run wrote, and repairs mappings and fds if it changed them.
    private func resetMemory() throws {
        guard trackedSpan.0 < trackedSpan.1 else { return }
        // Two ways to find the written pages, picked per snapshot. A large one is scanned on
        // the kernel's fast path, which only works while protecting what it finds; putting
        // the contents back then faults on those pages and they are protected once more
        // below. A small one is scanned without protecting (the walk is short either way),
        // so putting the contents back costs no faults.
        let written = try scanner.scan(start: trackedSpan.0, end: trackedSpan.1, writtenOnly: true, reprotect: protectWhileScanning,
                                       trackedOnly: true, vector: scanVector)
        guard !written.isEmpty else {
            for c in copied { try tracee.write(c.bytes, to: c.start) }
            if layoutChanged || fdsChanged { try repair() }
            return
        }
        // Straight from the mapped image where it holds the page; other pages (file
        // contents, zeros) are read once and kept.
        var triples: [UInt64] = []
        triples.reserveCapacity(written.count * 3)
        for r in written {
            var a = r.start
            while a < r.end {
                let local = UInt64(UInt(bitPattern: snapshotPage(a)))
                if triples.count >= 3, triples[triples.count - 3] + triples[triples.count - 1] == local,
                   triples[triples.count - 2] + triples[triples.count - 1] == a {
                    triples[triples.count - 1] += 4096
                } else {
                    triples += [local, a, 4096]
                }
                a += 4096
            }
        }
        try tracee.memory.write(scatter: triples)
        do {
            // Protected again by the page scan itself (which skips memory not tracked), one
            // call per cluster of written ranges: the unmapped space between them costs the
            // walk nothing, large clean regions are left out.
            var cluster = (start: written[0].start, end: written[0].end)
            for r in written.dropFirst() {
                if r.start - cluster.end <= 64 << 20 { cluster.end = r.end; continue }
                _ = try scanner.scan(start: cluster.start, end: cluster.end, writtenOnly: true, reprotect: true, trackedOnly: true, vector: scanVector)
                cluster = (r.start, r.end)
            }
            _ = try scanner.scan(start: cluster.start, end: cluster.end, writtenOnly: true, reprotect: true, trackedOnly: true, vector: scanVector)
        }
        for c in copied { try tracee.write(c.bytes, to: c.start) }
        if layoutChanged || fdsChanged { try repair() }
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
    private func repair() throws {
        let pid = tracee.pid
        try tracee.withSyscalls(in: pid) { s in
            if layoutChanged {
                let now = try Paths.readText("/proc/\(pid)/maps").split(separator: "\n").map(String.init)
                if now != snapshotMaps {
                    let before = ProcFS.parseMaps(snapshotMaps.joined(separator: "\n"))
                    for e in ProcFS.parseMaps(now.joined(separator: "\n")) where !before.contains(where: { $0.start == e.start && $0.end == e.end }) {
                        // A mapping the run made, or a grown heap: the part beyond the snapshot goes.
                        if let old = before.first(where: { $0.start == e.start }), e.end > old.end {
                            _ = try s.raw(.munmap, old.end, e.end - old.end)
                        } else if !before.contains(where: { $0.start < e.end && e.start < $0.end }) {
                            _ = try s.raw(.munmap, e.start, e.end - e.start)
                        }
                    }
                    _ = try s.raw(.brk, image.process.mm.brk)
                }
            }
            if fdsChanged {
                for fd in try ProcFS.fds(pid) where !snapshotFDs.contains(fd) { _ = try s.raw(.close, UInt64(fd)) }
            }
        }
        layoutChanged = false
        fdsChanged = false
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
