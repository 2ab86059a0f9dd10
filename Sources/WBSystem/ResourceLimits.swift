import CWBNative

/// prlimit(2) on another process (ptrace access suffices).
public enum ResourceLimits {
    public static func get(pid: Int32, resource: Int32) throws -> (soft: UInt64, hard: UInt64) {
        var v: [UInt64] = [0, 0]
        try check(v.withUnsafeMutableBufferPointer { wb_prlimit(pid, resource, nil, $0.baseAddress) },
                  "prlimit", "reading resource limit \(resource) of pid \(pid)", pid: pid)
        return (v[0], v[1])
    }

    public static func set(pid: Int32, resource: Int32, soft: UInt64, hard: UInt64) throws {
        let v: [UInt64] = [soft, hard]
        try check(v.withUnsafeBufferPointer { wb_prlimit(pid, resource, $0.baseAddress, nil) },
                  "prlimit", "setting resource limit \(resource) of pid \(pid)", pid: pid)
    }
}
