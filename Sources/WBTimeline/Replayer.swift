import CWBNative
import CWBRecord
import Foundation
import Glibc
import WBCore
import WBRestore
import WBSymbols
import WBTrace

/// `wb replay TIMELINE`: the last checkpoint before a recorded crash is restored and run
/// again with its input log fed back in place of the outside world. Every input call stops
/// at wb (a seccomp filter), which checks it is the call the log has next for that thread,
/// writes what the kernel wrote then and skips the call; writes and sends are skipped with
/// their recorded result, accepts get a stand-in socket. A call the log does not have, or
/// an end the recording did not have, is a divergence and is reported as such.
public final class Replayer {
    public struct Outcome: Encodable, Sendable {
        /// The crash happened again: same signal at the same instruction.
        public var reproduced: Bool
        public var what: String
        public var checkpoint: Int
        public var image: String
        public var callsReplayed: Int
        public var callsLogged: Int
        public var thread: Int32?
        public var signalNumber: Int32?
        public var signal: String?
        public var pc: String?
        public var recordedSignal: String?
        public var recordedPC: String?
        public var sameInstruction: Bool
        public var sameBacktrace: Bool
        public var divergence: String?
        public var backtrace: [Frame]
        public var recordedBacktrace: [Frame]
    }

    public let timeline: Timeline
    public let start: Timeline.Checkpoint
    public let crash: Timeline.Checkpoint
    /// Seconds to wait for the crash.
    public var timeout: Double = 60
    public var report: (String) -> Void = { _ in }
    /// After `run(keepAtCrash: true)` reproduced the crash: the process, stopped at it.
    public private(set) var restored: RestoredProcess?
    private var restorer: Restorer?

    /// Removes the copies of the files the process was given, once the process kept at the
    /// crash (for gdb) is done with.
    public func removePrivateFiles() { restorer?.removePrivateFiles() }
    /// The image and files of the recorded crash (for gdb: the process has the same maps).
    public private(set) var crashImage: Image
    public private(set) var crashFiles: ResolvedFiles
    public var restoreOptions: RestoreOptions = {
        var o = RestoreOptions()
        o.isolateSockets = true
        return o
    }()
    /// The replayed process writes copies of the files it may write (which are removed when
    /// it ends), unless `liveFiles`.
    public var liveFiles = false

    private var queues: [Int32: [InputRecord]] = [:]
    private var positions: [Int32: Int] = [:]
    private var logged = 0
    private var replayed = 0
    /// Replay thread -> recorded thread, for threads the replay made.
    private var threadMap: [Int32: Int32] = [:]
    private var unclaimedThreads: [Int32] = []
    /// Calls made again with changed arguments, to be checked at their end.
    private var remade: [Int32: (record: InputRecord, registers: Registers)] = [:]
    private var tracee: Tracee!

    /// Chooses the checkpoint to replay from: `from` (a checkpoint number), or the last one
    /// before the crash.
    public init(timeline: Timeline, from: Int? = nil) throws {
        self.timeline = timeline
        guard timeline.manifest.recording else {
            throw WBError.invalidArgument("\(timeline.directory) was not recorded: run the program with wb run --timeline DIR --record to replay it")
        }
        guard let crash = timeline.checkpoints.last(where: { $0.reason == "fault" || $0.reason == "signal" }) else {
            throw WBError.invalidArgument("\(timeline.directory) has no checkpoint at a crash (the program \(timeline.manifest.ended ?? "is still running")): nothing to replay")
        }
        self.crash = crash
        let earlier = timeline.checkpoints.filter { $0.number < crash.number && $0.reason != "bisect" }
        if let from {
            guard let c = earlier.first(where: { $0.number == from }) else {
                throw WBError.invalidArgument("--from \(from): no such checkpoint before the crash (checkpoint \(crash.number)); wb timeline \(timeline.directory) lists them")
            }
            start = c
        } else {
            guard let c = earlier.last else {
                throw WBError.invalidArgument("\(timeline.directory) has no checkpoint before the crash to replay from")
            }
            start = c
        }
        crashImage = try Image(path: timeline.imagePath(crash))
        crashFiles = try FileResolver(image: crashImage, cache: FileCache(directory: restoreOptions.cacheDirectory)).resolveAll()
    }

    /// Loads the log from the start checkpoint (`startImage`) on, one queue per recorded thread.
    private func loadLog(_ startImage: Image) throws {
        let numbers = ((try? Paths.list(InputLog.directory(timeline.directory))) ?? [])
            .compactMap { $0.hasSuffix(".log") ? Int($0.dropLast(4)) : nil }
            .filter { $0 >= start.number && $0 < crash.number }.sorted()
        guard numbers.first == start.number else {
            throw WBError.badImage(path: InputLog.segment(timeline.directory, start.number), problem: "the input log after checkpoint \(start.number) is missing")
        }
        var skip = Set<Int32>()
        var order: [Int32] = []
        for n in numbers {
            for r in try InputLog.read(InputLog.segment(timeline.directory, n)) {
                // Notes of calls in flight at a checkpoint count when replaying from it.
                if r.skipsNext {
                    if n == start.number { skip.insert(r.tid) }
                    continue
                }
                if skip.remove(r.tid) != nil { continue }
                if queues[r.tid] == nil { order.append(r.tid) }
                queues[r.tid, default: []].append(r)
                logged += 1
            }
        }
        let existing = Set(startImage.process.threads.map(\.tid))
        unclaimedThreads = order.filter { !existing.contains($0) }
    }

    /// The thread as it was called when recorded.
    private func recordedTid(_ tid: Int32) -> Int32 {
        if let t = threadMap[tid] { return t }
        // In a new pid namespace the thread has its recorded number inside it.
        if let inner = ProcFS.innermostPid(tid) {
            if queues[inner] != nil || !unclaimedThreads.contains(inner) {
                threadMap[tid] = inner
                return inner
            }
        }
        return tid
    }

    /// Replays up to the crash. With `keepAtCrash` the process stays stopped at the crash,
    /// in `restored`, for gdb; otherwise it is killed.
    public func run(keepAtCrash: Bool = false) throws -> Outcome {
        let image = try Image(path: timeline.imagePath(start))
        try loadLog(image)
        Signals.block([SIGCHLD])
        var options = restoreOptions
        options.silenceOutput = true
        if !liveFiles { options.privateFiles = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp" }
        let restorer = Restorer(image: image, options: options)
        self.restorer = restorer
        let restored = try restorer.restore()
        let tracee = restored.tracee
        self.tracee = tracee
        var kept = false
        defer { if !kept { _ = restored.terminate(); restorer.removePrivateFiles() } }
        try tracee.addOptions(Tracee.traceSeccompOption | Tracee.exitKillOption | UInt32(WB_PTRACE_O_TRACESYSGOOD))
        let maps = try ProcFS.maps(tracee.pid, withFlags: false)
        tracee.syscallGadget = try tracee.findSyscallGadget(in: maps)
        // Every input call stops at wb, the library's included.
        let filter = SeccompFilter(traced: InputLog.stopping)
        try tracee.withSyscalls(in: tracee.pid) { s in
            let scratch = try s.mapScratch(bytes: 4096)
            defer { _ = try? s.raw(.munmap, scratch, 4096) }
            try filter.install(tracee, s, scratch: scratch)
        }
        for tid in tracee.tids { _ = recordedTid(tid) }
        report("replaying from checkpoint \(start.number) (\(start.reason), \(String(format: "%.2f", start.seconds)) s) with \(logged) logged calls")

        var outcome = Outcome(reproduced: false, what: "", checkpoint: start.number, image: timeline.imagePath(start),
                              callsReplayed: 0, callsLogged: logged, thread: nil, signalNumber: nil, signal: nil, pc: nil,
                              recordedSignal: crash.signal.map(SignalNames.name), recordedPC: nil,
                              sameInstruction: false, sameBacktrace: false, divergence: nil, backtrace: [], recordedBacktrace: [])
        let recorded = recordedCrash()
        outcome.recordedPC = recorded.pc.map(hex)
        outcome.recordedBacktrace = recorded.frames
        var known = Set(tracee.tids)
        for tid in tracee.tids { try tracee.resume(tid, .continue) }
        let deadline = Clock.monotonic + timeout
        func diverged(_ why: String) -> Outcome {
            outcome.divergence = why
            outcome.what = "diverged from the recording: \(why)"
            outcome.callsReplayed = replayed
            return outcome
        }
        while true {
            guard let (tid, stop) = try tracee.waitAny(timeout: max(0.001, deadline - Clock.monotonic)) else {
                return diverged("no crash within \(Int(timeout)) s (\(replayed) of \(logged) logged calls replayed)")
            }
            switch stop {
            case let .event(ev) where ev == Tracee.seccompEvent:
                switch try call(tid) {
                case let .resume(how): try tracee.resume(tid, how)
                case let .diverged(why): return diverged(why)
                }
            case let .event(ev) where ev == Tracee.syscallStopEvent:
                if let why = try finishRemade(tid) { return diverged(why) }
                try tracee.resume(tid, .continue)
            case .event:
                try tracee.resume(tid, .continue)
                for t in tracee.tids where !known.contains(t) {
                    known.insert(t)
                    if !unclaimedThreads.isEmpty { threadMap[t] = unclaimedThreads.removeFirst() }
                    try? tracee.resume(t, .continue)
                }
            case let .interrupted(sig):
                try tracee.goOn(tid, afterStopWith: sig)
            case let .signal(sig):
                guard Supervisor.isFatal(sig, pid: tracee.pid) else {
                    try tracee.resume(tid, .continue, signal: sig)
                    continue
                }
                let regs = try tracee.registers(tid)
                outcome.thread = tid
                outcome.signal = SignalNames.name(sig)
                outcome.signalNumber = sig
                outcome.pc = hex(regs.rip)
                outcome.callsReplayed = replayed
                outcome.backtrace = liveBacktrace(tid, regs)
                outcome.sameInstruction = crash.signal == sig && recorded.pc == regs.rip
                outcome.sameBacktrace = !outcome.backtrace.isEmpty && outcome.backtrace.map(\.pc) == recorded.frames.map(\.pc)
                outcome.reproduced = outcome.sameInstruction
                outcome.what = outcome.reproduced
                    ? "reproduced \(SignalNames.name(sig)) at \(hex(regs.rip))\(outcome.backtrace.first?.function.map { " in \($0)" } ?? "")"
                    : "crashed differently: \(SignalNames.name(sig)) at \(hex(regs.rip)); recorded \(outcome.recordedSignal ?? "?") at \(outcome.recordedPC ?? "?")"
                if replayed < logged { outcome.what += " (\(logged - replayed) logged calls left unused)" }
                if keepAtCrash {
                    tracee.holdSignal(tid)
                    kept = true
                    self.restored = restored
                }
                return outcome
            case let .exited(code) where tid == tracee.pid:
                return diverged("the program exited with status \(code); the recording ended with \(outcome.recordedSignal ?? "a crash")")
            case let .killed(sig) where tid == tracee.pid:
                return diverged("the program was killed by \(SignalNames.name(sig)) without stopping at it")
            case .exited, .killed:
                continue
            }
        }
    }

    private enum Step {
        case resume(Tracee.Resume)
        case diverged(String)
    }

    /// A call stopped at the filter: fed from the log.
    private func call(_ tid: Int32) throws -> Step {
        var regs = try tracee.registers(tid)
        let nr = Int(truncatingIfNeeded: regs.origRax)
        if nr == InputLog.marker {
            // The library in the replayed process: its buffer need not be kept.
            if regs.rdi == UInt64(WB_RECORD_OP_FLUSH) || regs.rdi == UInt64(WB_RECORD_OP_LARGE) {
                try tracee.write(withUnsafeBytes(of: UInt64(0)) { Array($0) }, to: regs.rsi + 8)
            }
            regs.origRax = UInt64.max
            regs.rax = 0
            try tracee.setRegisters(tid, regs)
            return .resume(.continue)
        }
        guard wb_record_traced(UInt32(truncatingIfNeeded: nr)) != 0 else { return .resume(.continue) }
        let who = recordedTid(tid)
        let made = InputRecord(tid: who, nr: nr, args: [regs.rdi, regs.rsi, regs.rdx], result: 0, writes: [])
        let at = positions[who, default: 0]
        guard let queue = queues[who], at < queue.count else {
            return .diverged("thread \(who) called \(made.description.dropLast(4)) after the end of its log (\(replayed) calls replayed)")
        }
        let record = queue[at]
        guard record.nr == nr, record.args == made.args else {
            return .diverged("thread \(who) called \(made.description.dropLast(4)) where the log has \(record.description) (call \(at + 1) of the thread)")
        }
        positions[who] = at + 1
        replayed += 1
        if nr == 9 || nr == 25 {
            // Memory goes where it went when recorded (the kernel would pick anew).
            remade[tid] = (record, regs)
            if record.result >= 0 && record.result < 1 << 47 {
                if nr == 9 && regs.r10 & 0x10 == 0 /* MAP_FIXED */ {
                    regs.rdi = UInt64(record.result)
                    regs.r10 |= 0x100000 /* MAP_FIXED_NOREPLACE */
                } else if nr == 25 && regs.r10 & 1 != 0 && regs.r10 & 2 == 0 && UInt64(record.result) != regs.rdi {
                    regs.r10 |= 2 /* MREMAP_FIXED */
                    regs.r8 = UInt64(record.result)
                }
                try tracee.setRegisters(tid, regs)
            }
            return .resume(.syscall)
        }
        if (nr == 43 || nr == 288) && record.result >= 0 {
            // The connection is gone: a socket stands in for it, on the same fd.
            remade[tid] = (record, regs)
            let flags = nr == 288 ? regs.r10 & UInt64(O_NONBLOCK | O_CLOEXEC) : 0
            regs.origRax = 41 // socket
            regs.rdi = UInt64(AF_UNIX)
            regs.rsi = UInt64(SOCK_STREAM.rawValue) | flags
            regs.rdx = 0
            try tracee.setRegisters(tid, regs)
            return .resume(.syscall)
        }
        for w in record.writes { try tracee.write(w.bytes, to: w.address) }
        regs.origRax = UInt64.max
        regs.rax = UInt64(bitPattern: record.result)
        try tracee.setRegisters(tid, regs)
        return .resume(.continue)
    }

    /// A call made again is over (a mapping placed, a stand-in socket made): its result must
    /// be the recorded one, and its arguments are put back.
    private func finishRemade(_ tid: Int32) throws -> String? {
        guard let (record, saved) = remade.removeValue(forKey: tid) else { return nil }
        var regs = try tracee.registers(tid)
        let got = Int64(bitPattern: regs.rax)
        if got != record.result {
            let what = record.nr == 9 || record.nr == 25 ? "\(InputLog.names[record.nr]!) in thread \(record.tid) gave \(hex(UInt64(bitPattern: got))), recorded \(hex(UInt64(bitPattern: record.result)))"
                : "accept in thread \(record.tid) would give fd \(got), the recorded connection was fd \(record.result)"
            return what
        }
        for w in record.writes { try tracee.write(w.bytes, to: w.address) }
        regs.rdi = saved.rdi
        regs.rsi = saved.rsi
        regs.rdx = saved.rdx
        regs.r10 = saved.r10
        regs.r8 = saved.r8
        regs.rax = UInt64(bitPattern: record.result)
        try tracee.setRegisters(tid, regs)
        return nil
    }

    /// Where the recorded crash happened: the thread that had the fatal signal pending.
    private func recordedCrash() -> (pc: UInt64?, frames: [Frame]) {
        let threads = crashImage.process.threads
        guard let t = threads.first(where: { $0.pending.contains { p in p.signal == crash.signal } }) ?? threads.first else { return (nil, []) }
        let frames = (try? Backtracer(image: crashImage, files: crashFiles))?.backtrace(t.tid) ?? []
        return (t.registers.rip, frames)
    }

    private func liveBacktrace(_ tid: Int32, _ regs: Registers) -> [Frame] {
        let memory = tracee.memory
        guard let tracer = try? Backtracer(mappings: crashImage.process.mappings, files: crashFiles, debugDirectories: [],
                                           read: { try? memory.readWord($0) }) else { return [] }
        tracer.attach(pid: tracee.pid, threads: [(tid, regs)])
        return tracer.backtrace(tid)
    }
}
