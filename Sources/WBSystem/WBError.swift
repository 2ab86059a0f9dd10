import Glibc

/// The one error type of wb. Every case carries what was being done, so that a failure reaches
/// the user as a single line naming the step, the process and the cause.
public enum WBError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A system call failed. `call` names it ("ptrace(PTRACE_GETREGS)"), `what` says what wb
    /// was doing and to which process.
    case system(call: String, errno: Int32, what: String)
    /// The process or thread went away (ESRCH) while wb was working on it.
    case processGone(pid: Int32, what: String)
    /// An image file is truncated, corrupted or not an image at all.
    case badImage(path: String, problem: String)
    /// wb will not do this, for a reason it names (an fd kind it cannot restore, a child process).
    case refused(String)
    /// The user asked for something that cannot work as asked.
    case invalidArgument(String)
    /// Anything else, already phrased for the user.
    case failed(String)
    /// A thread asked to stop did not within `seconds`: it has not come back from the kernel
    /// (`why`: its state, where it waits).
    case notStopped(pid: Int32, tid: Int32, seconds: Double, why: String)

    public var description: String {
        switch self {
        case let .system(call, errno, what):
            return "\(what): \(call) failed: \(WBError.errnoText(errno))"
        case let .processGone(pid, what):
            return "\(what): process \(pid) no longer exists"
        case let .badImage(path, problem):
            return "\(path): \(problem)"
        case let .refused(text), let .invalidArgument(text), let .failed(text):
            return text
        case let .notStopped(pid, tid, seconds, why):
            return "thread \(tid) of pid \(pid) did not stop within \(seconds == seconds.rounded() ? "\(Int(seconds))" : "\(seconds)") s (\(why))"
        }
    }

    /// The errno name and text, e.g. "EPERM (Operation not permitted)".
    public static func errnoText(_ code: Int32) -> String {
        let text = String(cString: strerror(code))
        if let name = errnoNames[code] { return "\(name) (\(text))" }
        return text
    }

    /// The same error with `prefix` put in front of what was being done (once: a message
    /// that starts with it already stays as it is).
    public func prefixed(_ prefix: String) -> WBError {
        if description.hasPrefix(prefix + " ") || description.hasPrefix(prefix + ":") { return self }
        switch self {
        case let .system(call, errno, what): return .system(call: call, errno: errno, what: "\(prefix): \(what)")
        case let .processGone(pid, what): return .processGone(pid: pid, what: "\(prefix): \(what)")
        case .badImage: return self
        case let .refused(text): return .refused("\(prefix): \(text)")
        case let .invalidArgument(text): return .invalidArgument("\(prefix): \(text)")
        case let .failed(text): return .failed("\(prefix): \(text)")
        case .notStopped: return .failed("\(prefix): \(description)")
        }
    }

    private static let errnoNames: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO",
        EBADF: "EBADF", ECHILD: "ECHILD", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES",
        EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR",
        EINVAL: "EINVAL", EMFILE: "EMFILE", ENOSPC: "ENOSPC", ESPIPE: "ESPIPE", EROFS: "EROFS",
        EPIPE: "EPIPE", ENOSYS: "ENOSYS", ENOTEMPTY: "ENOTEMPTY", EOVERFLOW: "EOVERFLOW",
    ]
}

/// Runs `body`, prefixing any WBError it throws with `what`.
@inlinable
public func withContext<T>(_ what: @autoclosure () -> String, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as WBError {
        throw error.prefixed(what())
    }
}
