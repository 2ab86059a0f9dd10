import CWBNative
import Foundation
import Glibc
import WBCore
import WBSystem

/// A network namespace wb makes sockets in: its own, or a restored process's
/// (`wb restore --new-netns`). A socket belongs to the namespace it was made in, whoever uses
/// it later: wb makes one in another namespace on a thread of its own that joins it
/// (setns), and uses it from anywhere.
public final class NetNamespace: @unchecked Sendable {
    /// An fd of /proc/PID/ns/net, nil for wb's own namespace.
    private let handle: FileDescriptor?

    /// wb's own namespace.
    public static let current = NetNamespace(handle: nil)

    init(handle: FileDescriptor?) { self.handle = handle }

    /// The namespace process `pid` is in; wb's own when it is the same.
    public static func of(_ pid: Int32) throws -> NetNamespace {
        let theirs = try Paths.stat("/proc/\(pid)/ns/net"), ours = try Paths.stat("/proc/self/ns/net")
        if theirs.inode == ours.inode && theirs.device == ours.device { return .current }
        return NetNamespace(handle: try FileDescriptor.open("/proc/\(pid)/ns/net", O_RDONLY, what: "opening the network namespace of pid \(pid)"))
    }

    public var isCurrent: Bool { handle == nil }

    /// socket(2) in this namespace.
    public func socket(_ family: Int32, _ type: Int32, _ proto: Int32) throws -> FileDescriptor {
        let fd = try perform { Glibc.socket(family, type | cloexec, proto) }
        if fd < 0 { throw WBError.system(call: "socket", errno: errno, what: "making a socket of family \(family)") }
        return FileDescriptor(owning: fd)
    }

    /// Destroys the TCP socket of this namespace between `local` and `peer`, whatever its
    /// state (one a killed process left closing, or in TIME-WAIT), so that a connection with
    /// the same addresses can be built again; none there is no error.
    public func destroyTCP(local: SocketAddress, peer: SocketAddress, family: Int32) throws {
        let l = try local.encode(family: family), p = try peer.encode(family: family)
        let e = try perform { wb_tcp_destroy(l, p) }
        if e != 0 && e != ENOENT { throw WBError.system(call: "sock_diag(SOCK_DESTROY)", errno: e, what: "closing the old connection \(local) -> \(peer)") }
    }

    /// Runs `body` on a thread that has joined this namespace (here, for wb's own).
    public func perform<T>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        guard let handle else { return try body() }
        let box = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        let fd = handle.rawValue
        let thread = Thread {
            if wb_setns_net(fd) != 0 {
                box.result = .failure(WBError.system(call: "setns", errno: errno, what: "entering a restored process's network namespace"))
            } else {
                box.result = Result { try body() }
                box.savedErrno = errno
            }
            done.signal()
        }
        thread.start()
        done.wait()
        errno = box.savedErrno
        return try box.result!.get()
    }
}

/// What a thread that joined a namespace hands back.
private final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, Error>?
    var savedErrno: Int32 = 0
}
