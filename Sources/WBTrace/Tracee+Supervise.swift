import CWBNative
import Glibc

/// A process wb keeps under ptrace for its whole life while it runs (`wb run --timeline`):
/// stopped for a moment now and then (a checkpoint) and let go again, and watched for the
/// signal that would kill it.
extension Tracee {
    /// Seizes every thread of a running process and leaves them running. With `exitKill`
    /// the process dies if wb does.
    /// With `recording`, seccomp stops, syscall-exit stops, thread exits and the program's
    /// children report to wb too (`wb run --record`).
    public static func supervise(_ pid: Int32, exitKill: Bool = false, recording: Bool = false) throws -> Tracee {
        var options = UInt32(WB_PTRACE_O_TRACECLONE | WB_PTRACE_O_TRACEEXEC)
        if exitKill { options |= UInt32(WB_PTRACE_O_EXITKILL) }
        if recording {
            options |= UInt32(WB_PTRACE_O_TRACESECCOMP | WB_PTRACE_O_TRACESYSGOOD | WB_PTRACE_O_TRACEEXIT
                              | WB_PTRACE_O_TRACEFORK | WB_PTRACE_O_TRACEVFORK)
        }
        let t = Tracee(pid: pid, options: options)
        do {
            try t.seizeAll()
        } catch {
            t.detach()
            throw error
        }
        t.resumeAll()
        return t
    }

    /// Stops every thread (PTRACE_INTERRUPT) and waits until each is in a clean stop; a
    /// signal a thread had dequeued is kept, to be delivered by `resumeAll`.
    /// Threads in `alreadyStopped` are in a stop wb has seen already (a signal it is holding).
    public func stopAll(alreadyStopped: Set<Int32> = []) throws {
        for tid in tids where !alreadyStopped.contains(tid) { try interrupt(tid) }
        for tid in tids where !alreadyStopped.contains(tid) {
            _ = try settleRunning(tid)
        }
        tids.removeAll { tid in !Paths.exists("/proc/\(pid)/task/\(tid)") }
    }

    /// Lets every thread run on, each with the signal it had dequeued when it stopped. A
    /// thread whose signal `hold` picks stays stopped with it instead (in `heldStops`): the
    /// caller has something to do before that signal is delivered.
    public func resumeAll(hold: ((Int32) -> Bool)? = nil) {
        for tid in tids {
            var sig: Int32 = 0
            if var info = interceptedSignals[tid] {
                sig = info.withUnsafeBytes { $0.load(as: Int32.self) }
                if let hold, hold(sig) {
                    heldStops[tid] = sig
                    continue
                }
                _ = info.withUnsafeMutableBytes { wb_ptrace(WB_PTRACE_SETSIGINFO, tid, 0, UInt64(UInt(bitPattern: $0.baseAddress)), nil) }
                dropInterceptedSignal(tid)
            }
            _ = wb_ptrace(WB_PTRACE_CONT, tid, 0, UInt64(sig), nil)
        }
    }

    /// Keeps the signal `tid` is stopped for (a signal-delivery-stop wb has seen): it goes in
    /// an image as pending, and is delivered by `resumeAll`.
    public func holdSignal(_ tid: Int32) { interceptSignal(tid) }

    /// Leaves a thread in a group-stop (SIGSTOP, SIGTSTP, ...) as the stop asks, still
    /// reporting to wb (PTRACE_LISTEN).
    public func listen(_ tid: Int32) {
        _ = wb_ptrace(WB_PTRACE_LISTEN, tid, 0, 0, nil)
    }

    /// Lets a thread go on from a PTRACE_EVENT_STOP wb did not ask for: a group-stop stays
    /// stopped (listening), any other goes on.
    public func goOn(_ tid: Int32, afterStopWith signal: Int32) throws {
        if Signals.stopping.contains(signal) { listen(tid) } else { try resume(tid, .continue) }
    }

    /// Waits for `tid` to stop after an interrupt: the interrupt's own stop, or a signal it
    /// was about to take (kept). Events (a clone, an exec) let it go on to the stop.
    private func settleRunning(_ tid: Int32) throws -> Bool {
        while true {
            switch try waitForStop(tid) {
            case .interrupted:
                return true
            case .signal:
                interceptSignal(tid)
                return true
            case let .event(ev):
                // The event's stop dropped the interrupt: asked for again (see `settle`).
                try interrupt(tid)
                try resume(tid, try eventHandler?(tid, ev) ?? .continue)
            case .exited, .killed:
                return false
            }
        }
    }
}
