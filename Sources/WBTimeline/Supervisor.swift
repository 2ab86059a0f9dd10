import Foundation
import Glibc
import WBCheckpoint
import WBCore
import WBTrace

/// Runs a program under wb's controller for its whole life (`wb run --timeline`): a
/// checkpoint on a schedule into the timeline, and a last one at the moment a signal is
/// about to kill it, taken before the signal is delivered.
public final class Supervisor {
    public struct Options: Sendable {
        public var every: Double?
        public var keep: Int?
        public var record = false
        public var environment: [String: String]
        public init(environment: [String: String]) { self.environment = environment }
    }

    public let timeline: Timeline
    public let store: TimelineStore
    public let options: Options
    public let pid: Int32
    let tracee: Tracee
    let started = Clock.monotonic
    /// One line per checkpoint, for the user.
    public var report: (String) -> Void = { _ in }

    /// Starts `program` (its stdio is wb's) and takes hold of it.
    public init(program: String, arguments: [String], directory: String, options: Options) throws {
        self.options = options
        // Stops of the program are waited for with sigtimedwait: SIGCHLD stays pending.
        Signals.block([SIGCHLD])
        let pid = try Subprocess.spawn(program, arguments, environment: options.environment, stdin: 0, stdout: 1, stderr: 2)
        self.pid = pid
        do {
            tracee = try Tracee.supervise(pid, traceSeccomp: options.record)
            timeline = try Timeline(creating: directory, program: [program] + arguments, pid: pid, every: options.every,
                                    keep: options.keep, recording: options.record)
            store = try TimelineStore(timeline: timeline)
        } catch {
            kill(pid, SIGKILL)
            var st: Int32 = 0
            waitpid(pid, &st, 0)
            throw error
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
                try? checkpoint(reason: "scheduled", signal: nil)
                if let every = options.every {
                    while next <= Clock.monotonic { next += every }
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
                    // The last moment the process is whole: hold the signal, take the
                    // checkpoint with every thread stopped, then let the signal do its work.
                    tracee.holdSignal(tid)
                    try? tracee.stopAll(alreadyStopped: [tid])
                    let fault = [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS].contains(sig)
                    do {
                        try checkpoint(reason: fault ? "fault" : "signal", signal: sig, stopped: true)
                    } catch {
                        report("no checkpoint at \(SignalNames.name(sig)): \(error)")
                    }
                    tracee.resumeAll()
                } else {
                    try? tracee.resume(tid, .continue, signal: sig)
                }
            case .event:
                try? tracee.resume(tid, .continue)
                resumeNewThreads()
            case let .interrupted(sig):
                if [SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU].contains(sig) { tracee.listen(tid) } else { try? tracee.resume(tid, .continue) }
            }
        }
    }

    private func finish(_ end: Tracee.Stop) throws -> Int32 {
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
        let result: CheckpointResult
        do {
            result = stopped ? try checkpointer.checkpoint(to: temporary, stopped: tracee)
                             : try checkpointer.checkpoint(to: temporary, attached: tracee)
        } catch {
            Paths.remove(temporary)
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
            }
        }
    }

    /// Whether `sig` would end the process now: not ignored, not caught, and its default
    /// action is to terminate.
    static func isFatal(_ sig: Int32, pid: Int32) -> Bool {
        if [SIGCHLD, SIGCONT, SIGURG, SIGWINCH, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU].contains(sig) { return false }
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
