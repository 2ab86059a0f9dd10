import CWBNative
import Glibc

// The funnel every system call goes through: it names the call and what it was for in the
// error, turns ESRCH into `.processGone` when a pid is involved, and retries EINTR where the
// caller says so.

/// Throws for a C shim's errno result (0 is success).
@inlinable
public func check(_ result: Int32, _ call: @autoclosure () -> String, _ what: @autoclosure () -> String,
                  pid: Int32? = nil) throws {
    if result == 0 { return }
    if result == ESRCH, let pid { throw WBError.processGone(pid: pid, what: what()) }
    throw WBError.system(call: call(), errno: result, what: what())
}

/// Runs a libc call that returns -1 and sets errno on failure; returns its value.
@inlinable
@discardableResult
public func syscallValue<T: BinaryInteger>(_ call: @autoclosure () -> String, _ what: @autoclosure () -> String,
                                           retryOnInterrupt: Bool = true, pid: Int32? = nil,
                                           _ body: () -> T) throws -> T {
    while true {
        let value = body()
        if value != -1 { return value }
        let code = errno
        if code == EINTR && retryOnInterrupt { continue }
        try check(code, call(), what(), pid: pid)
        return value
    }
}
