import Glibc

extension ProcFS {
    /// The refusal for a process another tracer holds. Most often that tracer is another wb
    /// (a second checkpoint of the same pid, or a restore or debugging session that holds it):
    /// then it says so and what to do, since "a debugger?" would send the user looking for one.
    /// `ofTree` words it for a member of `checkpoint --tree`.
    public static func tracedRefusal(_ pid: Int32, tracer: String, ofTree: Bool = false) -> WBError {
        let subject = ofTree ? "pid \(pid) of the tree" : "pid \(pid)"
        if let tracerPid = Int32(tracer), let wb = wbProcess(tracerPid) {
            return .refused("\(subject) is being checkpointed (or restored/debugged) by another wb (pid \(wb)): wait for it to finish")
        }
        return .refused("\(subject) is \(ofTree ? "" : "already ")being traced by pid \(tracer) (a debugger?): detach it first")
    }

    /// The wb the user started, when thread `tid` (TracerPid names the tracing thread) is in a
    /// wb: `wb checkpoint` traces from an agent it forks into a session of its own, so the pid
    /// worth naming is that of the wb above it (ending it ends the agent too).
    static func wbProcess(_ tid: Int32) -> Int32? {
        var process = (try? status(tid))?["Tgid"].flatMap { Int32($0) } ?? tid
        guard isWB(process) else { return nil }
        for _ in 0..<8 {
            guard let parent = (try? status(process))?["PPid"].flatMap({ Int32($0) }), parent > 1, isWB(parent) else { break }
            process = parent
        }
        return process
    }

    /// Whether `pid` runs wb: its executable is the same file as ours, or (another build of wb)
    /// its name is "wb".
    static func isWB(_ pid: Int32) -> Bool {
        if let ours = try? Paths.stat("/proc/self/exe"), let theirs = try? Paths.stat("/proc/\(pid)/exe"),
           ours.device == theirs.device && ours.inode == theirs.inode {
            return true
        }
        return (try? Paths.readText("/proc/\(pid)/comm"))?.trimming("\n") == "wb"
    }
}
