import CWBNative
import Glibc

/// The restore stub: an empty process wb rebuilds an image in (see native/CWBNative/stub.c).
public enum Stub {
    public struct Spawned: Sendable {
        /// The stub's pid as wb sees it.
        public var pid: Int32
        /// The pid namespace's init, when the stub runs in a new pid namespace.
        public var initPid: Int32?
    }

    /// Starts a stub. With `pid`, the stub gets exactly that pid (clone3 set_tid) in this pid
    /// namespace, or in a new one with `newPidNamespace` (where an init process holds pid 1).
    /// `keepFDs` stay open in the stub at the same numbers; every other fd is closed.
    /// With `clocks` (CLOCK_MONOTONIC and CLOCK_BOOTTIME in nanoseconds), the stub runs in a
    /// new time namespace where those clocks read these values as it starts.
    public static func spawn(pid: Int32, newPidNamespace: Bool, newUserNamespace: Bool, keepFDs: [Int32],
                             clocks: [UInt64]? = nil) throws -> Spawned {
        var fd: Int32 = -1
        try check(wb_stub_fd(&fd), "memfd_create", "creating the restore stub")
        defer { close(fd) }
        var result = wb_spawn_result()
        var stage: UnsafePointer<CChar>? = nil
        let e = keepFDs.withUnsafeBufferPointer { keep -> Int32 in
            var req = wb_spawn_request(stub_fd: fd, set_tid: pid, new_pidns: newPidNamespace ? 1 : 0,
                                       new_userns: newUserNamespace ? 1 : 0, outer_uid: getuid(), outer_gid: getgid(),
                                       keep_fds: keep.baseAddress, keep_count: Int32(keep.count),
                                       time_ns: clocks?.count == 2 ? 1 : 0,
                                       monotonic_ns: Int64(clamping: clocks?.first ?? 0), boottime_ns: Int64(clamping: clocks?.last ?? 0))
            return wb_spawn_stub(&req, &result, &stage)
        }
        if e != 0 {
            let step = stage.map { String(cString: $0) } ?? "spawn"
            if e == EEXIST { throw WBError.failed("pid \(pid) is in use: \(step) could not take it") }
            if e == EPERM && !newPidNamespace {
                throw WBError.system(call: step, errno: e, what: "starting the restore stub with pid \(pid) (needs CAP_CHECKPOINT_RESTORE; try --new-pidns)")
            }
            throw WBError.system(call: step, errno: e, what: "starting the restore stub")
        }
        return Spawned(pid: result.stub, initPid: result.init_pid == 0 ? nil : result.init_pid)
    }

    /// Address of the stub's `syscall` instruction.
    public static var syscallAddress: UInt64 { wb_stub_syscall_address() }
}

extension Tracee {
    /// Remote syscalls in a thread wb owns outright (the restore stub and its threads): unlike
    /// `withSyscalls`, nothing is put back afterwards, since the caller sets every register.
    public func ownedSyscalls(in tid: Int32) throws -> RemoteSyscalls {
        RemoteSyscalls(tracee: self, tid: tid, original: try registers(tid))
    }

    /// Adds a thread that appeared through an injected clone3 (already seized and stopped).
    public var newestThread: Int32? { tids.last }
}
