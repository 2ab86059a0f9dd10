import CWBNative
import Glibc

/// prlimit(2) on another process (ptrace access suffices).
public enum ResourceLimits {
    /// The limit as prlimit(2) reads it, or, where prlimit may not (root without
    /// CAP_SYS_RESOURCE reading another user's process), as /proc/PID/limits shows it.
    public static func get(pid: Int32, resource: Int32) throws -> (soft: UInt64, hard: UInt64) {
        var v: [UInt64] = [0, 0]
        let e = v.withUnsafeMutableBufferPointer { wb_prlimit(pid, resource, nil, $0.baseAddress) }
        if e == EPERM, let limits = fromProcFS(pid), Int(resource) < limits.count { return limits[Int(resource)] }
        try check(e, "prlimit", "reading resource limit \(resource) of pid \(pid)", pid: pid)
        return (v[0], v[1])
    }

    /// /proc/PID/limits: one line per resource, in resource order, after a heading line;
    /// "unlimited" is RLIM_INFINITY.
    static func fromProcFS(_ pid: Int32) -> [(soft: UInt64, hard: UInt64)]? {
        guard let text = try? Paths.readText("/proc/\(pid)/limits") else { return nil }
        var out: [(soft: UInt64, hard: UInt64)] = []
        for line in text.split(separator: "\n").dropFirst() {
            // The name takes the first 26 columns; the soft and hard limits follow.
            let fields = line.dropFirst(26).split(separator: " ")
            guard fields.count >= 2 else { return nil }
            func value(_ f: Substring) -> UInt64? { f == "unlimited" ? UInt64.max : UInt64(f) }
            guard let soft = value(fields[0]), let hard = value(fields[1]) else { return nil }
            out.append((soft, hard))
        }
        return out.count == 16 ? out : nil
    }

    public static func set(pid: Int32, resource: Int32, soft: UInt64, hard: UInt64) throws {
        let v: [UInt64] = [soft, hard]
        try check(v.withUnsafeBufferPointer { wb_prlimit(pid, resource, $0.baseAddress, nil) },
                  "prlimit", "setting resource limit \(resource) of pid \(pid)", pid: pid)
    }
}
