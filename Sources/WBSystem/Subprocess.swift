import CWBNative
import Foundation
import Glibc

/// Starting ordinary programs (debuggers, helpers, test targets) with a clean slate: only
/// the three standard fds, an empty signal mask and default signal handling.
public enum Subprocess {
    /// Starts `path` with `arguments`; `stdio` gives the fds for 0, 1, 2 (nil: /dev/null).
    public static func spawn(_ path: String, _ arguments: [String], environment: [String: String]? = nil,
                             stdin: Int32? = nil, stdout: Int32? = nil, stderr: Int32? = nil) throws -> Int32 {
        let env = environment ?? ProcessInfo.processInfo.environment
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var pid: pid_t = 0
        try check(wb_spawn_process(path, argv, envp, stdin ?? -1, stdout ?? -1, stderr ?? -1, &pid),
                  "execve(\(path))", "starting \(path)")
        return pid
    }

    /// A program started but held before exec (see `release`): wb can seize it first.
    public struct Held {
        public let pid: Int32
        let releaseFD: Int32
        let statusFD: Int32

        /// Lets it exec (after installing the filter given to `spawnHeld`); throws if exec failed.
        public func release(_ path: String) throws {
            try check(wb_spawn_release(releaseFD, statusFD), "execve(\(path))", "starting \(path)")
        }
    }

    /// Starts `path` held before its exec; with `filter` (a seccomp program), the filter is
    /// installed just before the exec.
    public static func spawnHeld(_ path: String, _ arguments: [String], environment: [String: String],
                                 stdin: Int32, stdout: Int32, stderr: Int32, filter: [UInt8]) throws -> Held {
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var pid: pid_t = 0, release: Int32 = -1, status: Int32 = -1
        try filter.withUnsafeBytes { f in
            try check(wb_spawn_held(path, argv, envp, stdin, stdout, stderr, f.baseAddress, Int32(filter.count / 8), &pid, &release, &status),
                      "fork", "starting \(path)")
        }
        return Held(pid: pid, releaseFD: release, statusFD: status)
    }
}

extension Subprocess {
    /// The executable `name` names: a path as it is, else the first match in PATH.
    public static func find(_ name: String) -> String? {
        if name.contains("/" as Character) { return access(name, X_OK) == 0 ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where access("\(dir)/\(name)", X_OK) == 0 {
            return "\(dir)/\(name)"
        }
        return nil
    }
}

/// Facts and settings of this process.
public enum ThisProcess {
    /// The executable wb runs from.
    public static var executable: String { (try? Paths.readLink("/proc/self/exe")) ?? CommandLine.arguments[0] }

    /// Lets wb hold many files at once (a copy of each socket of a server with thousands of
    /// connections): the soft limit on open files goes up to the hard one, and the fd table
    /// is grown now, while wb has one thread (growing a table threads share waits for an RCU
    /// grace period, milliseconds each time). Not for wb's run, whose programs would inherit it.
    public static func allowManyFiles() {
        var limit = rlimit()
        guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else { return }
        let want = min(limit.rlim_max, 1 << 20)
        if limit.rlim_cur < want {
            limit.rlim_cur = want
            _ = setrlimit(RLIMIT_NOFILE_VALUE, &limit)
        }
        guard threadCount == 1 else { return }
        let top = Int32(min(getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 ? limit.rlim_cur : 1024, 1 << 16)) - 1
        if top > 1024 && dup2(2, top) == top { close(top) }
    }

    /// The number of threads of this process.
    public static var threadCount: Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("Threads:") }
        return line.flatMap { Int($0.dropFirst(8).trimmingCharacters(in: .whitespaces)) } ?? 0
    }

    /// Forks this process when it has one thread (a child of a process with more could
    /// inherit a lock another thread held): the pid in the parent, 0 in the child, nil when
    /// the process has other threads and did not fork.
    public static func forkIfSingleThreaded() throws -> Int32? {
        guard threadCount == 1 else { return nil }
        let pid = fork()
        if pid < 0 { throw WBError.system(call: "fork", errno: errno, what: "starting a helper process") }
        return pid
    }

    /// Asks the kernel to send `signal` when the parent process dies.
    public static func setParentDeathSignal(_ signal: Int32) throws {
        try check(wb_set_parent_death_signal(signal), "prctl(PR_SET_PDEATHSIG)", "watching the parent process")
    }
}

/// The monotonic clock.
public enum Clock {
    public static var monotonic: Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

private let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(UInt32(RLIMIT_NOFILE.rawValue))

extension Subprocess {
    /// What a finished program printed, and how it ended.
    public struct Output {
        public var status: Int32
        public var stdout: [UInt8]
        public var stderr: [UInt8]
    }

    /// Runs `path` to its end (a short-lived tool: sbatch, squeue), its stdout and stderr
    /// caught in unlinked temporary files.
    public static func output(_ path: String, _ arguments: [String], environment: [String: String]? = nil) throws -> Output {
        let out = try outputFile(for: path), err = try outputFile(for: path)
        let pid = try spawn(path, arguments, environment: environment, stdout: out.rawValue, stderr: err.rawValue)
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        func contents(_ f: FileDescriptor) -> [UInt8] {
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            var offset: UInt64 = 0
            while let n = try? buffer.withUnsafeMutableBytes({ try f.read(into: $0, at: offset) }), n > 0 {
                bytes += buffer.prefix(n)
                offset += UInt64(n)
            }
            return bytes
        }
        return Output(status: exitCode(waitStatus: st), stdout: contents(out), stderr: contents(err))
    }

    /// An unlinked temporary file to catch what `program` prints.
    public static func outputFile(for program: String) throws -> FileDescriptor {
        let fd = open("/tmp", 0o20200000 /* O_TMPFILE */ | O_RDWR | O_CLOEXEC, 0o600)
        if fd < 0 { throw WBError.system(call: "open(O_TMPFILE)", errno: errno, what: "catching the output of \(program)") }
        return FileDescriptor(owning: fd)
    }

    /// A wait status as a shell reports it: the exit code, or 128 + the signal that ended it.
    public static func exitCode(waitStatus st: Int32) -> Int32 {
        (st & 0x7F) == 0 ? (st >> 8) & 0xFF : 128 + (st & 0x7F)
    }
}
