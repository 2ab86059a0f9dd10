import Foundation
import Glibc
import WBCheckpoint
import WBCore
import WBTrace
import CWBNative
import CWBRecord

/// Runs a program under wb's controller for its whole life (`wb run --timeline`): a
/// checkpoint on a schedule into the timeline, and a last one at the moment a signal is
/// about to kill it, taken before the signal is delivered.
public final class Supervisor {
    public struct Options: Sendable {
        public var every: Double?
        public var keep: Int?
        public var record = false
        /// How long a checkpoint waits for each thread to stop (nil: without end). A thread
        /// that does not come back from the kernel in time (a vfork parent, a hung file
        /// system) costs that checkpoint, not the program's other threads their run.
        public var stopTimeout: Double? = 5
        public var environment: [String: String]
        public init(environment: [String: String]) { self.environment = environment }
    }

    public let timeline: Timeline
    public let store: TimelineStore
    public let options: Options
    public let pid: Int32
    let tracee: Tracee
    var recorder: InputRecorder?
    let started = Clock.monotonic
    /// One line per checkpoint, for the user.
    public var report: (String) -> Void = { _ in }
    /// Why a scheduled checkpoint was not taken (said once until the reason changes).
    public var warn: (String) -> Void = { _ in }
    private var lastWarning: String?

    /// Starts `program` (its stdio is wb's) and takes hold of it before its exec. With
    /// `record`, it runs with the seccomp filter and the preload library of recording from
    /// its first instruction.
    public init(program: String, arguments: [String], directory: String, options: Options) throws {
        self.options = options
        // Stops of the program are waited for with sigtimedwait: SIGCHLD stays pending.
        Signals.block([SIGCHLD])
        var pid: Int32 = 0
        do {
            // Held before its exec until wb has seized it: nothing the program does, not
            // even an immediate exit, happens before wb is watching.
            var environment = options.environment
            var filter: [UInt8] = []
            if options.record {
                let library = try InputRecorder.library()
                environment["LD_PRELOAD"] = [library, environment["LD_PRELOAD"]].compactMap { $0 }.joined(separator: ":")
                environment[WB_RECORD_GADGET_ENV] = String(InputRecorder.gadget, radix: 16)
                filter = InputRecorder.filter.bytes
            }
            let held = try Subprocess.spawnHeld(program, arguments, environment: environment, stdin: 0, stdout: 1, stderr: 2, filter: filter)
            pid = held.pid
            tracee = try Tracee.supervise(pid, recording: options.record)
            tracee.stopTimeout = options.stopTimeout
            try held.release(program)
            self.pid = pid
            timeline = try Timeline(creating: directory, program: [program] + arguments, pid: pid, every: options.every,
                                    keep: options.keep, recording: options.record)
            store = try TimelineStore(timeline: timeline)
            if options.record {
                let recorder = try InputRecorder(timeline: timeline.directory, tracee: tracee)
                self.recorder = recorder
                tracee.eventHandler = { tid, event in try recorder.handle(tid, event: event) }
                tracee.otherStop = Supervisor.passThrough
            }
        } catch {
            if pid > 0 {
                kill(pid, SIGKILL)
                var st: Int32 = 0
                waitpid(pid, &st, 0)
            }
            throw error
        }
    }

    /// A child the recorded program started reports to wb (so that its inherited filter
    /// works); it is not recorded, and goes on at once.
    static func passThrough(_ pid: Int32, _ status: Int32) {
        guard wb_wifstopped(status) != 0 else { return }
        let event = wb_wptrace_event(status)
        let sig = wb_wstopsig(status)
        if event == WB_PTRACE_EVENT_STOP {
            if Signals.stopping.contains(sig) { _ = wb_ptrace(WB_PTRACE_LISTEN, pid, 0, 0, nil); return }
            _ = wb_ptrace(WB_PTRACE_CONT, pid, 0, 0, nil)
        } else if event != 0 || sig == SIGTRAP | 0x80 {
            _ = wb_ptrace(WB_PTRACE_CONT, pid, 0, 0, nil)
        } else {
            _ = wb_ptrace(WB_PTRACE_CONT, pid, 0, UInt64(sig), nil)
        }
    }

    /// Runs until the program ends; returns its wait status as an exit code (128 + N for
    /// signal N).
    public func run() throws -> Int32 {
        var next = options.every.map { started + $0 } ?? .infinity
        while true {
            // The end may have been collected by a wait inside a checkpoint.
            if let end = tracee.ended { return try finish(end) }
            let wait = next.isFinite ? max(0.001, next - Clock.monotonic) : 3600
            let got: (tid: Int32, stop: Tracee.Stop)?
            do {
                got = try tracee.waitAny(timeout: wait)
            } catch {
                if let end = tracee.ended { return try finish(end) }
                throw error
            }
            guard let (tid, stop) = got else {
                do {
                    try checkpoint(reason: "scheduled", signal: nil)
                    lastWarning = nil
                } catch {
                    let text = "no checkpoint at \(String(format: "%.2f", Clock.monotonic - started)) s: \(error)"
                    // The same reason again (a child the program keeps) is not said again.
                    let reason = "\(error)"
                    if lastWarning != reason { warn(text) }
                    lastWarning = reason
                }
                if let every = options.every {
                    while next <= Clock.monotonic { next += every }
                }
                // A thread that was about to die when the checkpoint stopped it.
                if let (tid, sig) = tracee.heldStops.first {
                    tracee.heldStops = [:]
                    fatal(tid, sig)
                }
                continue
            }
            switch stop {
            case .exited where tid == pid, .killed where tid == pid:
                return try finish(stop)
            case .exited, .killed:
                continue
            case let .signal(sig):
                if Supervisor.isFatal(sig, pid: pid) {
                    tracee.holdSignal(tid)
                    fatal(tid, sig)
                } else {
                    try? tracee.resume(tid, .continue, signal: sig)
                }
            case let .event(ev):
                if ev == WB_PTRACE_EVENT_EXEC && recorder != nil && !startTaken {
                    // exec is not over yet at this stop (it sets rax on its way out): go to
                    // its end, where the program is whole and has run nothing.
                    startTaken = true
                    startPending = tid
                    try tracee.resume(tid, .syscall)
                    continue
                }
                if ev == Tracee.syscallStopEvent && startPending == tid {
                    // The start of a recorded run, from which every later moment can be
                    // replayed.
                    startPending = nil
                    try InputRecorder.hideVDSO(tracee, tid)
                    try checkpoint(reason: "start", signal: nil, stopped: true)
                    try? tracee.resume(tid, .continue)
                    continue
                }
                let how = try recorder?.handle(tid, event: ev) ?? .continue
                try? tracee.resume(tid, how)
                resumeNewThreads()
            case let .interrupted(sig):
                try? tracee.goOn(tid, afterStopWith: sig)
            }
        }
    }

    private var startTaken = false
    private var startPending: Int32?

    /// A signal is about to kill the process (thread `tid` is stopped with it held): the
    /// last moment the process is whole. Every thread is stopped, the checkpoint taken, and
    /// then the signal does its work.
    private func fatal(_ tid: Int32, _ sig: Int32) {
        let fault = [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS].contains(sig)
        do {
            // A thread that does not stop in time costs the checkpoint: the process cannot be
            // taken whole.
            try tracee.stopAll(alreadyStopped: [tid])
            try checkpoint(reason: fault ? "fault" : "signal", signal: sig, stopped: true)
        } catch {
            warn("no checkpoint at \(SignalNames.name(sig)): \(error)")
        }
        tracee.resumeAll()
    }

    private func finish(_ end: Tracee.Stop) throws -> Int32 {
        recorder?.close()
        if let problem = recorder?.problem { report("the input log is incomplete: \(problem)") }
        switch end {
        case let .exited(code):
            try timeline.setEnded("exited with status \(code)")
            return code
        case let .killed(sig):
            try timeline.setEnded("killed by \(SignalNames.name(sig))")
            return 128 + sig
        default:
            return 1
        }
    }

    private var known = Set<Int32>()

    /// Threads that appeared through clone events start stopped: they go on.
    private func resumeNewThreads() {
        for t in tracee.tids where !known.contains(t) {
            known.insert(t)
            if t != pid { try? tracee.resume(t, .continue) }
        }
    }

    /// A checkpoint into the timeline. The process is running (it is stopped, copied and let
    /// go), or with `stopped` already held stopped by wb.
    func checkpoint(reason: String, signal: Int32?, stopped: Bool = false) throws {
        known.formUnion(tracee.tids)
        let (number, name) = timeline.takeNumber()
        let temporary = "\(timeline.directory)/.\(name).partial-image"
        var options = CheckpointOptions()
        options.allowUnsupported = self.options.record
        let checkpointer = Checkpointer(pid: pid, options: options)
        checkpointer.holdSignals = { [pid] sig in Supervisor.isFatal(sig, pid: pid) }
        let result: CheckpointResult
        do {
            if let recorder {
                // The log up to this moment is complete before the memory is copied, and
                // the next one starts with it.
                if !stopped { try tracee.stopAll(alreadyStopped: Set(tracee.heldStops.keys)) }
                recorder.drain()
                result = try checkpointer.checkpoint(to: temporary, stopped: tracee)
                try recorder.begin(segment: number)
                recorder.noteCallsInFlight()
                if !stopped { tracee.resumeAll(hold: checkpointer.holdSignals) }
            } else {
                result = stopped ? try checkpointer.checkpoint(to: temporary, stopped: tracee)
                                 : try checkpointer.checkpoint(to: temporary, attached: tracee)
            }
        } catch {
            Paths.remove(temporary)
            timeline.giveBack(number)
            if recorder != nil && !stopped { tracee.resumeAll(hold: checkpointer.holdSignals) }
            throw error
        }
        let interned = try store.intern(temporary, as: name, pack: number)
        let entry = Timeline.Checkpoint(number: number, image: name, seconds: Clock.monotonic - started,
                                        time: ISO8601DateFormatter().string(from: Date()), reason: reason, signal: signal,
                                        storedBytes: interned.storedBytes, newBytes: interned.newBytes, fullBytes: interned.fullBytes,
                                        pauseSeconds: result.pauseSeconds)
        try timeline.append(entry, packs: interned.pack.map { [$0] } ?? [])
        report("checkpoint \(number) (\(reason)\(signal.map { ", \(SignalNames.name($0))" } ?? "")) at \(String(format: "%.2f", entry.seconds)) s: "
               + "\(Timeline.bytes(entry.storedBytes)) of memory, \(Timeline.bytes(entry.newBytes)) new on disk, paused \(String(format: "%.1f", entry.pauseSeconds * 1000)) ms")
        if let keep = self.options.keep, reason == "scheduled" {
            let scheduled = timeline.checkpoints.filter { $0.reason == "scheduled" }
            if scheduled.count > keep {
                let old = Set(scheduled.prefix(scheduled.count - keep).map(\.number))
                try store.prune(old)
                for n in old { Paths.remove(InputLog.segment(timeline.directory, n)) }
            }
        }
    }

    /// Whether `sig` would end the process now: not ignored, not caught, and its default
    /// action is to terminate.
    static func isFatal(_ sig: Int32, pid: Int32) -> Bool {
        if [SIGCHLD, SIGCONT, SIGURG, SIGWINCH].contains(sig) || Signals.stopping.contains(sig) { return false }
        guard let status = try? ProcFS.status(pid) else { return false }
        let bit = UInt64(1) << UInt64(sig - 1)
        let ignored = UInt64(status["SigIgn"] ?? "0", radix: 16) ?? 0
        let caught = UInt64(status["SigCgt"] ?? "0", radix: 16) ?? 0
        return ignored & bit == 0 && caught & bit == 0
    }
}

extension Timeline {
    public static func bytes(_ n: UInt64) -> String {
        if n < 1024 { return "\(n) B" }
        if n < 1 << 20 { return String(format: "%.1f KiB", Double(n) / 1024) }
        if n < 1 << 30 { return String(format: "%.1f MiB", Double(n) / 1048576) }
        return String(format: "%.2f GiB", Double(n) / 1073741824)
    }
}
