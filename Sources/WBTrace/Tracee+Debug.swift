import CWBNative
import Glibc

extension Tracee {
    /// Offset of u_debugreg in struct user (x86-64), for PTRACE_PEEKUSER/POKEUSER.
    static let debugRegisterOffset: UInt64 = 848

    /// Debug register `n` (0-3 addresses, 6 status, 7 control) of thread `tid`.
    public func debugRegister(_ tid: Int32, _ n: Int) throws -> UInt64 {
        var value = 0
        try check(wb_ptrace(3 /* PTRACE_PEEKUSER */, tid, Tracee.debugRegisterOffset + UInt64(n) * 8, 0, &value),
                  "ptrace(PTRACE_PEEKUSER)", "reading debug register \(n) of thread \(tid)", pid: tid)
        return UInt64(bitPattern: Int64(value))
    }

    public func setDebugRegister(_ tid: Int32, _ n: Int, _ value: UInt64) throws {
        try check(wb_ptrace(6 /* PTRACE_POKEUSER */, tid, Tracee.debugRegisterOffset + UInt64(n) * 8, value, nil),
                  "ptrace(PTRACE_POKEUSER)", "setting debug register \(n) of thread \(tid)", pid: tid)
    }

    /// Asks a thread to stop (PTRACE_INTERRUPT): at once if it runs, as soon as it goes on if
    /// it sits in another ptrace stop; `wait` then sees the stop. An exited thread is no error.
    public func interrupt(_ tid: Int32) throws {
        let e = wb_ptrace(WB_PTRACE_INTERRUPT, tid, 0, 0, nil)
        if e != 0 && e != ESRCH { try check(e, "ptrace(PTRACE_INTERRUPT)", "stopping thread \(tid)", pid: tid) }
    }

    /// Waits for the next stop or exit of any of this process's threads; nil with `block` false
    /// when none is ready.
    public func waitAny(block: Bool = true) throws -> (tid: Int32, stop: Stop)? {
        var status: Int32 = 0
        var waited: pid_t = 0
        while true {
            let e = wb_waitpid(-1, &status, block ? 0 : Int32(WB_WNOHANG), &waited)
            if e == ECHILD { throw WBError.processGone(pid: pid, what: "waiting for the process") }
            try check(e, "waitpid", "waiting for pid \(pid)")
            if waited == 0 { return nil }
            if tids.contains(waited) || waited == pid { break }
            if newThreadStopped(waited, status) { continue }
            // Not one of ours (an init, another child): it is of no concern here.
        }
        return (waited, try decode(waited, status))
    }

    /// The first stop of a thread the process just made, seen before its maker's clone
    /// event (the kernel may report either first): the thread joins `tids`, stopped, and the
    /// clone event finds it there.
    func newThreadStopped(_ tid: Int32, _ status: Int32) -> Bool {
        guard options & UInt32(WB_PTRACE_O_TRACECLONE) != 0, wb_wptrace_event(status) == WB_PTRACE_EVENT_STOP,
              Paths.exists("/proc/\(pid)/task/\(tid)") else { return false }
        tids.append(tid)
        return true
    }

    /// Ends tracing for good: the process is killed and reaped by its parent.
    public func forget() {
        tids.removeAll()
    }
}

extension Tracee {
    /// PTRACE_SETOPTIONS on every thread (adding to the options wb always uses).
    public func addOptions(_ extra: UInt32) throws {
        for tid in tids {
            try check(wb_ptrace(WB_PTRACE_SETOPTIONS, tid, 0, UInt64(options | extra), nil),
                      "ptrace(PTRACE_SETOPTIONS)", "setting trace options of thread \(tid)", pid: tid)
        }
    }

    /// PTRACE_GETEVENTMSG: the data of the last ptrace event (a seccomp filter's value).
    public func eventMessage(_ tid: Int32) throws -> UInt64 {
        var msg: UInt = 0
        try check(withUnsafeMutablePointer(to: &msg) { wb_ptrace(WB_PTRACE_GETEVENTMSG, tid, 0, UInt64(UInt(bitPattern: $0)), nil) },
                  "ptrace(PTRACE_GETEVENTMSG)", "reading an event of thread \(tid)", pid: tid)
        return UInt64(msg)
    }

    /// Waits up to `timeout` seconds for a stop or exit of any of this process's threads
    /// (SIGCHLD must be blocked in the calling thread); nil on timeout.
    public func waitAny(timeout: Double) throws -> (tid: Int32, stop: Stop)? {
        try Tracee.waitAny(among: [self], timeout: timeout, what: "waiting for pid \(pid)").map { ($0.tid, $0.stop) }
    }

    /// The ptrace event of a stop for a seccomp filter's SECCOMP_RET_TRACE.
    public static let seccompEvent = Int32(WB_PTRACE_EVENT_SECCOMP)
    /// The ptrace event of a stop for a new thread (PTRACE_O_TRACECLONE).
    public static let cloneEvent = Int32(WB_PTRACE_EVENT_CLONE)
    public static let traceSeccompOption = UInt32(WB_PTRACE_O_TRACESECCOMP)
    public static let exitKillOption = UInt32(WB_PTRACE_O_EXITKILL)
}

/// Pins `pid` to one CPU (controller and target on one core make ptrace round trips cheaper).
public func pinToCPU(_ pid: Int32, _ cpu: Int) { _ = wb_pin_cpu(pid, Int32(cpu)) }

extension Tracee {
    /// A copy of the process's fd `fd` (pidfd_getfd): the same open file description.
    public func takeFD(_ fd: Int32) throws -> FileDescriptor {
        var local: Int32 = -1
        try check(wb_take_fd(pid, fd, &local), "pidfd_getfd", "taking fd \(fd) of pid \(pid)", pid: pid)
        return FileDescriptor(owning: local)
    }

    /// The siginfo of the signal thread `tid` is stopped for (128 bytes).
    public func signalInfo(_ tid: Int32) throws -> [UInt8] {
        var info = [UInt8](repeating: 0, count: 128)
        try check(info.withUnsafeMutableBytes { wb_ptrace_getsiginfo(tid, $0.baseAddress) },
                  "ptrace(PTRACE_GETSIGINFO)", "reading the signal of thread \(tid)", pid: tid)
        return info
    }
}

extension Tracee {
    /// Ends the stopped thread `tid` alone, with exit(0) run at the process's syscall
    /// instruction (a thread the process made during a fuzzing run, at the run's end).
    public func endThread(_ tid: Int32) throws {
        var r = try registers(tid)
        r.rax = 60
        r.rdi = 0
        r.rip = syscallGadget
        r.origRax = UInt64.max
        r.eflags &= ~UInt64(0x100)
        try setRegisters(tid, r)
        try resume(tid, .continue)
        while true {
            switch try wait(tid) {
            case .exited, .killed: return
            case .signal, .interrupted, .event: try resume(tid, .continue)
            }
        }
    }
}

extension Tracee {
    /// Waits up to `timeout` seconds for the next stop or end of a thread of any of `tracees`
    /// (several processes under one controller: the members of a set). Stops of processes
    /// none of them owns go to their `otherStop`, or are ignored.
    public static func waitAny(among tracees: [Tracee], timeout: Double,
                               what: @autoclosure () -> String = "waiting for the members") throws -> (tracee: Tracee, tid: Int32, stop: Stop)? {
        let deadline = Clock.monotonic + timeout
        while true {
            let left = deadline - Clock.monotonic
            if left <= 0 { return nil }
            var pid: pid_t = 0, status: Int32 = 0
            let e = wb_wait_any_us(max(20, Int(left * 1e6)), &pid, &status)
            if e == ETIMEDOUT { return nil }
            try check(e, "waitpid", what())
            if let t = tracees.first(where: { $0.tids.contains(pid) || $0.pid == pid }) { return (t, pid, try t.decode(pid, status)) }
            if tracees.contains(where: { $0.newThreadStopped(pid, status) }) { continue }
            tracees.first?.otherStop?(pid, status)
        }
    }
}
