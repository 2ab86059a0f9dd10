import CWBNative
import Glibc

/// A thread group under ptrace. This class owns the waitpid loop for its threads and is the
/// only way wb resumes them, so every stop is seen and accounted for in one place.
///
/// ptrace is per OS thread: a Tracee must be used from the thread that created it.
public final class Tracee {
    public let pid: Int32
    /// Threads under control, leader first.
    public internal(set) var tids: [Int32] = []
    /// How the process ended, once its end has been waited for (by any of wb's waits).
    public private(set) var ended: Stop?
    /// Signals a thread had dequeued when it stopped for us; they go back on detach.
    public private(set) var interceptedSignals: [Int32: [UInt8]] = [:]
    /// Threads left stopped by `resumeAll(hold:)`, with the signal each is about to take.
    public var heldStops: [Int32: Int32] = [:]
    /// What to do with a thread in an event stop while wb waits for it to stop (stopping all
    /// threads): a recording controller handles its seccomp and syscall stops here. Without
    /// it, the thread just goes on.
    public var eventHandler: ((Int32, Int32) throws -> Resume)?
    /// Stops and exits of processes that are not this one but report to wb (children a
    /// recorded program started); without it they are ignored.
    public var otherStop: ((Int32, Int32) -> Void)?
    /// How long a thread may take to stop once asked, while seizing or stopping all (nil: as
    /// long as it takes), and a check run about every 0.1 s meanwhile that throws to give up
    /// (a request to stop). The timed wait sleeps on SIGCHLD (see `wb_wait_tid`).
    public var stopTimeout: Double?
    public var whileStopping: (() throws -> Void)?
    /// Address of a `syscall` instruction used for remote syscalls.
    public var syscallGadget: UInt64 = 0
    /// The process may not map executable memory (memory-deny-write-execute): batches of
    /// remote calls run one call at a time through the syscall gadget instead of from code
    /// written into scratch memory.
    public var executableScratchDenied = false
    let options: UInt32
    private var detached = false
    /// The process's memory.
    public let memory: ProcessMemory

    public enum Stop: Equatable, Sendable {
        /// PTRACE_EVENT_STOP: the stop PTRACE_INTERRUPT asks for, a group-stop, or the first
        /// stop of a new thread.
        case interrupted(signal: Int32)
        /// Signal-delivery-stop.
        case signal(Int32)
        /// Another ptrace event (clone, exec, ...).
        case event(Int32)
        case exited(code: Int32)
        case killed(signal: Int32)
    }

    init(pid: Int32, options: UInt32) {
        self.pid = pid
        self.options = options
        memory = ProcessMemory(pid: pid)
    }

    // MARK: Attaching

    /// Seizes every thread of `pid` and stops them all. Threads created meanwhile are caught
    /// too. The process keeps all its state; `detach()` lets it run on untouched.
    /// With `stopTimeout`, a thread that does not stop in time (or `whileStopping` throwing)
    /// ends the seizing with an error; see `stopTimeout`.
    public static func seize(_ pid: Int32, stopTimeout: Double? = nil, whileStopping: (() throws -> Void)? = nil) throws -> Tracee {
        let t = Tracee(pid: pid, options: UInt32(WB_PTRACE_O_TRACECLONE | WB_PTRACE_O_TRACEEXEC))
        t.stopTimeout = stopTimeout
        t.whileStopping = whileStopping
        do {
            try t.seizeAll()
        } catch {
            t.detach()
            throw error
        }
        return t
    }

    /// Takes control of a freshly spawned stub: it dies with wb (PTRACE_O_EXITKILL) until
    /// the restore hands it over.
    public static func adoptStub(_ pid: Int32) throws -> Tracee {
        let t = Tracee(pid: pid, options: UInt32(WB_PTRACE_O_TRACECLONE | WB_PTRACE_O_EXITKILL))
        try t.seizeAll()
        return t
    }

    func seizeAll() throws {
        var seen = Set<Int32>()
        while true {
            let current: [Int32]
            do { current = try ProcFS.tasks(pid) } catch { throw WBError.processGone(pid: pid, what: "attaching") }
            let new = current.filter { !seen.contains($0) }
            if new.isEmpty { break }
            var seized: [Int32] = []
            for tid in new {
                seen.insert(tid)
                let e = wb_ptrace(WB_PTRACE_SEIZE, tid, 0, UInt64(options), nil)
                if e == ESRCH { continue }    // the thread exited meanwhile
                // One exiting (a zombie, or on its way) cannot be seized either.
                if e == EPERM && ProcFS.exiting(pid, thread: tid) { continue }
                if e == EPERM {
                    let tracer = (try? ProcFS.status(pid))?["TracerPid"] ?? "0"
                    if tracer != "0" {
                        throw ProcFS.tracedRefusal(pid, tracer: tracer)
                    }
                }
                try check(e, "ptrace(PTRACE_SEIZE)", "attaching to thread \(tid) of pid \(pid)", pid: tid)
                seized.append(tid)
                try interrupt(tid)
            }
            // A process of one thread may exec as it is stopped: it stops again as its new
            // program (with more threads, their tids would no longer hold).
            let single = seen.count == 1 && tids.isEmpty
            for tid in seized {
                if try settle(tid, execOK: single) { tids.append(tid) }
            }
            // Threads auto-attached through clone events are in `tids` already.
            for tid in tids { seen.insert(tid) }
        }
        guard tids.contains(pid) else { throw WBError.processGone(pid: pid, what: "attaching") }
        tids.sort { a, b in a == pid ? true : (b == pid ? false : a < b) }
    }

    /// Waits until `tid` sits in a clean stop. Returns false if it exited.
    private func settle(_ tid: Int32, execOK: Bool) throws -> Bool {
        while true {
            switch try waitForStop(tid) {
            case .interrupted:
                suspendDispatch(tid)
                return true
            case let .signal(sig):
                // The thread had just dequeued `sig`. It stays stopped here; the signal goes
                // back when we let it go.
                _ = sig
                interceptSignal(tid)
                suspendDispatch(tid)
                return true
            case let .event(ev):
                if ev == WB_PTRACE_EVENT_EXEC && !execOK {
                    throw WBError.failed("pid \(pid) called exec while being checkpointed; try again")
                }
                // Not a state to capture a thread in: let it finish and stop again. Any
                // ptrace stop (this event's too) drops the interrupt asked for before it,
                // so it is asked for again, or the thread would run on.
                try interrupt(tid)
                try resume(tid, .continue)
            case .exited, .killed:
                return false
            }
        }
    }

    // MARK: The wait loop

    /// Waits for the next stop or exit of `tid`.
    public func wait(_ tid: Int32) throws -> Stop {
        var status: Int32 = 0
        var waited: pid_t = 0
        try check(wb_waitpid(tid, &status, 0, &waited), "waitpid", "waiting for thread \(tid)", pid: tid)
        return try decode(tid, status)
    }

    /// Waits for the next stop or exit of `tid`, which was asked to stop: within
    /// `stopTimeout` if set, checking `whileStopping` as it waits.
    func waitForStop(_ tid: Int32) throws -> Stop {
        guard let limit = stopTimeout else { return try wait(tid) }
        let deadline = Clock.monotonic + limit
        while true {
            var status: Int32 = 0
            let slice = min(0.1, max(0.001, deadline - Clock.monotonic))
            let e = wb_wait_tid(tid, Int32(slice * 1000), &status)
            if e == 0 { return try decode(tid, status) }
            if e != ETIMEDOUT { try check(e, "waitpid", "waiting for thread \(tid)", pid: tid) }
            try whileStopping?()
            if Clock.monotonic >= deadline {
                throw WBError.notStopped(pid: pid, tid: tid, seconds: limit, why: whyRunning(tid))
            }
        }
    }

    /// Whether two processes share one address space (kcmp KCMP_VM): a vfork child before its
    /// exec and its parent, or a child cloned with CLONE_VM.
    public static func shareMemory(_ a: Int32, _ b: Int32) -> Bool { wb_kcmp_vm(a, b) == 0 }

    /// Why a thread asked to stop may not have: it has not come back from the kernel. Its
    /// state and where it waits, and a vfork child it waits for (one that shares its memory).
    func whyRunning(_ tid: Int32) -> String {
        let state = ProcFS.parseStat((try? Paths.readText("/proc/\(pid)/task/\(tid)/stat")) ?? "")[3] ?? "?"
        let wchan = ((try? Paths.readText("/proc/\(pid)/task/\(tid)/wchan")) ?? "").trimming("\n ")
        var why = "state \(state)" + (wchan.isEmpty || wchan == "0" ? "" : ", in the kernel at \(wchan)")
        if let child = ProcFS.children(pid).first(where: { Tracee.shareMemory(pid, $0) }) {
            why = "it waits for its vfork child \(child) to call exec or exit; " + why
        }
        return why
    }

    /// What a wait status says about thread `tid` (new threads from clone events are added).
    func decode(_ tid: Int32, _ status: Int32) throws -> Stop {
        if wb_wifexited(status) != 0 {
            tids.removeAll { $0 == tid }
            if tid == pid { ended = .exited(code: wb_wexitstatus(status)) }
            return .exited(code: wb_wexitstatus(status))
        }
        if wb_wifsignaled(status) != 0 {
            tids.removeAll { $0 == tid }
            if tid == pid { ended = .killed(signal: wb_wtermsig(status)) }
            return .killed(signal: wb_wtermsig(status))
        }
        let event = wb_wptrace_event(status)
        if event == WB_PTRACE_EVENT_STOP { return .interrupted(signal: wb_wstopsig(status)) }
        if event == WB_PTRACE_EVENT_CLONE {
            var msg: UInt = 0
            _ = withUnsafeMutablePointer(to: &msg) { p in
                wb_ptrace(WB_PTRACE_GETEVENTMSG, tid, 0, UInt64(UInt(bitPattern: p)), nil)
            }
            let child = Int32(truncatingIfNeeded: msg)
            if child > 0 && !tids.contains(child) {
                tids.append(child)
                // A new thread starts in PTRACE_EVENT_STOP; collect that stop now.
                _ = try settle(child, execOK: false)
            }
            return .event(event)
        }
        if event != 0 { return .event(event) }
        if wb_wstopsig(status) == SIGTRAP | 0x80 { return .event(Tracee.syscallStopEvent) }
        return .signal(wb_wstopsig(status))
    }

    /// How a thread goes on: freely, for one instruction, or to the end of its syscall.
    public enum Resume { case `continue`, singleStep, syscall }

    /// A stop at the end of a syscall (PTRACE_SYSCALL with PTRACE_O_TRACESYSGOOD), reported
    /// as an event of this number.
    public static let syscallStopEvent: Int32 = 0x1000

    /// The one entry point that lets a thread run.
    public func resume(_ tid: Int32, _ how: Resume, signal: Int32 = 0) throws {
        let (request, name): (Int32, String) = switch how {
        case .continue: (Int32(WB_PTRACE_CONT), "ptrace(PTRACE_CONT)")
        case .singleStep: (Int32(WB_PTRACE_SINGLESTEP), "ptrace(PTRACE_SINGLESTEP)")
        case .syscall: (Int32(WB_PTRACE_SYSCALL), "ptrace(PTRACE_SYSCALL)")
        }
        try check(wb_ptrace(Int(request), tid, 0, UInt64(signal), nil), name, "resuming thread \(tid)", pid: tid)
    }

    // MARK: Letting go

    /// Detaches from every thread; each runs on from exactly where it stopped, with any signal
    /// it had dequeued delivered again. `stopSignal` leaves the process stopped instead.
    public func detach(stopSignal: Int32 = 0) {
        if detached { return }
        detached = true
        // Queued while every thread is still stopped, the stop signal is taken before any of
        // them runs an instruction.
        if stopSignal != 0 { _ = Glibc.kill(pid, stopSignal) }
        for tid in tids {
            resumeDispatch(tid)
            var sig: Int32 = 0
            if var info = interceptedSignals[tid] {
                sig = info.withUnsafeBytes { $0.load(as: Int32.self) }
                _ = info.withUnsafeMutableBytes { wb_ptrace(WB_PTRACE_SETSIGINFO, tid, 0, UInt64(UInt(bitPattern: $0.baseAddress)), nil) }
            }
            _ = wb_ptrace(WB_PTRACE_DETACH, tid, 0, UInt64(sig), nil)
        }
    }

    /// Syscall user dispatch (PR_SET_SYSCALL_USER_DISPATCH, as Wine uses): with its selector
    /// on "block", every system call the thread makes outside its allowed range raises
    /// SIGSYS, wb's injected ones too. While wb holds a thread it is off; its configuration,
    /// [mode, selector, offset, length] as PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG gives it,
    /// is put back when wb lets go.
    public private(set) var suspendedDispatch: [Int32: [UInt64]] = [:]

    private func suspendDispatch(_ tid: Int32) {
        guard suspendedDispatch[tid] == nil, let config = Tracee.dispatchConfig(tid), config[0] != 0 else { return }
        if Tracee.setDispatchConfig(tid, [0, 0, 0, 0]) { suspendedDispatch[tid] = config }
    }

    private func resumeDispatch(_ tid: Int32) {
        guard let config = suspendedDispatch.removeValue(forKey: tid) else { return }
        _ = Tracee.setDispatchConfig(tid, config)
    }

    /// A stopped thread's syscall user dispatch configuration (nil: the kernel cannot tell,
    /// before Linux 6.11).
    static func dispatchConfig(_ tid: Int32) -> [UInt64]? {
        var c = [UInt64](repeating: 0, count: 4)
        let e = c.withUnsafeMutableBytes { wb_ptrace(WB_PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG, tid, 32, UInt64(UInt(bitPattern: $0.baseAddress)), nil) }
        return e == 0 ? c : nil
    }

    /// Sets a stopped thread's syscall user dispatch configuration.
    public static func setDispatchConfig(_ tid: Int32, _ config: [UInt64]) -> Bool {
        var c = config
        return c.withUnsafeMutableBytes { wb_ptrace(WB_PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG, tid, 32, UInt64(UInt(bitPattern: $0.baseAddress)), nil) } == 0
    }

    /// Kills the whole thread group and reaps what we can.
    public func kill() {
        detached = true
        _ = Glibc.kill(pid, SIGKILL)
    }

    public var isDetached: Bool { detached }

    /// The signal mask threads have while wb runs system calls in them: all blocked but
    /// SIGTRAP (see withSyscalls).
    public static let injectionMask: UInt64 = ~UInt64(0) & ~(UInt64(1) << UInt64(SIGTRAP - 1))

    /// Whether process `pid` ignores SIGTRAP (SigIgn in /proc/PID/status).
    public static func ignoresSIGTRAP(_ pid: Int32) -> Bool {
        guard let ign = (try? ProcFS.status(pid))?["SigIgn"].flatMap({ UInt64($0, radix: 16) }) else { return false }
        return ign & (UInt64(1) << UInt64(SIGTRAP - 1)) != 0
    }

    /// Records the siginfo of the signal `tid` is stopped for, to deliver it on detach;
    /// `onlyIfSent` records it only if a process sent it (si_code <= 0), not the kernel.
    func interceptSignal(_ tid: Int32, onlyIfSent: Bool = false) {
        if interceptedSignals[tid] != nil { return }
        var info = [UInt8](repeating: 0, count: 128)
        guard info.withUnsafeMutableBytes({ wb_ptrace_getsiginfo(tid, $0.baseAddress) }) == 0 else { return }
        if onlyIfSent && info.withUnsafeBytes({ $0.load(fromByteOffset: 8, as: Int32.self) }) > 0 { return }
        interceptedSignals[tid] = info
    }

    /// Forgets a signal that was intercepted (it is in the image as pending, or was consumed).
    public func dropInterceptedSignal(_ tid: Int32) { interceptedSignals[tid] = nil }
}
