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

    /// Asks a running thread to stop (PTRACE_INTERRUPT); `wait` then sees the stop.
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
            // Not one of ours (an init, another child): it is of no concern here.
        }
        return (waited, try decode(waited, status))
    }

    /// Ends tracing for good: the process is killed and reaped by its parent.
    public func forget() {
        tids.removeAll()
    }
}
