import CWBNative
import Glibc

/// What processes of a tree share, seen from outside: open file descriptions, Unix socket
/// pairs, and the bytes waiting on a socket.
public enum SharedFiles {
    /// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are one open file description
    /// (kcmp KCMP_FILE).
    public static func sameDescription(_ pid1: Int32, _ fd1: Int32, _ pid2: Int32, _ fd2: Int32) -> Bool {
        wb_kcmp_file(pid1, pid2, fd1, fd2) == 0
    }

    /// Whether fd `fd` of `pid` is the open file description epoll fd `epfd` watches as
    /// `tfd` (kcmp KCMP_EPOLL_TFD).
    public static func isEpollTarget(_ pid: Int32, fd: Int32, epoll epfd: Int32, watch tfd: Int32) -> Bool {
        wb_kcmp_epoll_target(pid, fd, epfd, tfd) == 0
    }

    /// Whether two processes share one fd table (cloned with CLONE_FILES).
    public static func shareFDTable(_ a: Int32, _ b: Int32) -> Bool { wb_kcmp_tables(a, b, 1) == 0 }

    /// Whether two processes share one working directory, root and umask (CLONE_FS).
    public static func shareFSInfo(_ a: Int32, _ b: Int32) -> Bool { wb_kcmp_tables(a, b, 0) == 0 }

    /// Whether fd `fd` of `pid` is the file (device and inode) wb's fd `local` is.
    public static func sameFile(_ pid: Int32, _ fd: Int32, as local: Int32) -> Bool {
        var a = stat(), b = stat()
        guard stat("/proc/\(pid)/fd/\(fd)", &a) == 0, fstat(local, &b) == 0 else { return false }
        return a.st_dev == b.st_dev && a.st_ino == b.st_ino
    }

    /// Sends `fd` over the Unix datagram or stream socket `socket` (SCM_RIGHTS): the
    /// receiver gets the same open file description.
    public static func send(_ fd: Int32, over socket: Int32, what: @autoclosure () -> String) throws {
        let e = wb_send_fd(socket, fd)
        if e != 0 { throw WBError.system(call: "sendmsg(SCM_RIGHTS)", errno: e, what: what()) }
    }

    /// A copy, in wb, of fd `fd` of process `pid` (pidfd_getfd).
    public static func take(_ fd: Int32, of pid: Int32) throws -> FileDescriptor {
        var out: Int32 = -1
        try check(wb_take_fd(pid, fd, &out), "pidfd_getfd", "copying fd \(fd) of pid \(pid)", pid: pid)
        return FileDescriptor(owning: out)
    }
}

/// A pidfd of a process (pidfd_open), for taking copies of its fds one call each.
public final class ProcessHandle {
    public let pid: Int32
    private let pidfd: FileDescriptor

    public init(pid: Int32) throws {
        var fd: Int32 = -1
        try check(wb_pidfd_open(pid, &fd), "pidfd_open", "opening pid \(pid)", pid: pid)
        self.pid = pid
        pidfd = FileDescriptor(owning: fd)
    }

    /// A copy, in wb, of the process's fd `fd` (pidfd_getfd): the same open file description.
    public func take(_ fd: Int32) throws -> FileDescriptor {
        var out: Int32 = -1
        try check(wb_pidfd_getfd(pidfd.rawValue, fd, &out), "pidfd_getfd", "copying fd \(fd) of pid \(pid)", pid: pid)
        return FileDescriptor(owning: out)
    }
}

/// One Unix socket as sock_diag reports it.
public struct UnixSocketInfo: Sendable, Equatable {
    public var inode: UInt64
    /// The connected peer's inode (0: none).
    public var peer: UInt64
    /// SOCK_STREAM (1), SOCK_DGRAM (2), SOCK_SEQPACKET (5).
    public var type: Int32
    /// TCP-style state: 1 established, 10 listening, 7 unconnected.
    public var state: Int32
    /// Bytes queued for reading; for a listener, connections waiting to be accepted.
    public var queued: UInt32
    /// A listener's backlog.
    public var backlog: UInt32 = 0
    /// shutdown() directions taken: 1 reading, 2 writing.
    public var shutdown: UInt8 = 0

    /// Every Unix socket of this network namespace, by inode.
    public static func all() throws -> [UInt64: UnixSocketInfo] {
        var cap = 4096
        while true {
            var buffer = [wb_unix_socket](repeating: wb_unix_socket(), count: cap)
            var count: Int32 = 0
            try check(wb_unix_sockets(&buffer, Int32(cap), &count), "sock_diag", "listing Unix sockets")
            if Int(count) > cap { cap = Int(count) + 256; continue }
            var out: [UInt64: UnixSocketInfo] = [:]
            for s in buffer.prefix(Int(count)) {
                out[s.inode] = UnixSocketInfo(inode: s.inode, peer: s.peer, type: Int32(s.type), state: Int32(s.state), queued: s.queued,
                                              backlog: s.backlog, shutdown: s.shutdown)
            }
            return out
        }
    }

    /// The bytes queued for reading on `socket`, left where they are.
    public static func peek(_ socket: FileDescriptor, limit: Int = 16 << 20) throws -> [UInt8] {
        // Room for what is queued (SIOCINQ), not for the most that could be.
        var queued: Int32 = 0
        guard wb_socket_ioctl_int(socket.rawValue, 0x541B /* SIOCINQ */, &queued) == 0 else { return [] }
        if queued <= 0 { return [] }
        var buffer = [UInt8](repeating: 0, count: min(limit, Int(queued) * 2 + 65536))
        var got = 0
        try buffer.withUnsafeMutableBytes { b in
            try check(wb_socket_peek(socket.rawValue, b.baseAddress, b.count, &got), "recv(MSG_PEEK)", "reading the bytes queued on a socket")
        }
        return Array(buffer.prefix(got))
    }
}
