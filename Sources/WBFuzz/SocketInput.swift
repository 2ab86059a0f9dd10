import CWBNative
import Foundation
import Glibc
import WBCore
import WBNet
import WBSystem
import WBTrace

/// A server's input (`--input tcp:PORT` or `unix:PATH`): each run is one connection to the
/// listening socket the process holds, made by wb in the process's network namespace; or,
/// for a snapshot blocked reading a client's connection (no listener there), a connection of
/// wb's own put in that connection's place (the same fd number and file flags). The
/// run's input is split into messages (`--input-split`); the first is sent with the
/// connection, each next one when the server would otherwise wait (for a read, an accept,
/// a poll or an epoll_wait), and after the last the connection is half-closed so the server
/// sees its end. Responses are read and thrown away; at the end of the run the connection is
/// reset and any connection the server did not accept is taken off its queue.
final class SocketInput {
    /// The listening socket wb connects to: the process's (a copy), or for a connection put in
    /// place, one of wb's own in the process's namespace.
    private let listener: FileDescriptor
    /// Where wb connects: the listener's address (loopback for a wildcard address).
    private let address: [UInt8]
    /// For a snapshot blocked on a client's connection: its fd, close-on-exec flag and file
    /// status flags, which the server's end of each run's connection gets.
    let replaced: (fd: Int32, closeOnExec: Bool, flags: Int32)?
    private let family: Int32
    private let namespace: NetNamespace
    private let split: [UInt8]?
    /// The listener's address as users know it, for messages.
    let name: String

    private var client: FileDescriptor?
    /// The client's own address: what the server's end of the connection has as its peer.
    private var clientName: [UInt8] = []
    private var pending: [[UInt8]] = []
    private var finished = true
    /// The process's fds known to be (or not be) the server's end of this run's connection.
    private var ends: [Int32: Bool] = [:]
    private var endLinks: [Int32: String] = [:]

    /// Finds the listening socket `channel` names among the process's fds.
    /// `threads`: the snapshot's registers of each thread (which call each is in).
    /// `fds`: the image's fds of the process.
    init(channel: InputChannel, split: [UInt8]?, tracee: Tracee, threads: [Registers], fds: [FDState]) throws {
        self.split = split
        namespace = try NetNamespace.of(tracee.pid)
        var found: (Int32, FileDescriptor, [UInt8], Int32)?
        var listening: [String] = []
        // Clients' connections the server accepted, as the image has them (a restored copy
        // has them reset): their own address is the listener's.
        let connections: [(fd: Int32, family: Int32)] = fds.compactMap { f in
            guard let net = f.net, net.type == Int32(SOCK_STREAM.rawValue), net.state != .listening, let d = net.local else { return nil }
            switch channel {
            case let .tcp(host, port) where (net.family == AF_INET || net.family == AF_INET6) && d.port == port && (host == nil || host == d.host):
                return (f.fd, net.family)
            case let .unix(path) where net.family == AF_UNIX && (d.abstract == true ? "@" + d.host : d.host) == path:
                return (f.fd, net.family)
            default:
                return nil
            }
        }
        for fd in try ProcFS.fds(tracee.pid) {
            guard (try? Paths.readLink("/proc/\(tracee.pid)/fd/\(fd)"))?.hasPrefix("socket:") == true,
                  let copy = try? tracee.takeFD(fd) else { continue }
            var raw = [UInt8](repeating: 0, count: 128)
            var length = UInt32(raw.count)
            guard wb_sock_name(copy.rawValue, 0, &raw, &length) == 0, length >= 2 else { continue }
            let fam = Int32(raw[0]) | Int32(raw[1]) << 8
            let decoded = SocketAddress.decode(raw, length: Int(length))
            guard wb_sock_listening(copy.rawValue) != 0 else { continue }
            listening.append(decoded.map { fam == AF_UNIX ? "unix:\($0.abstract == true ? "@" : "")\($0.host)" : "tcp:\($0.port)" } ?? "fd \(fd)")
            switch channel {
            case let .tcp(host, port) where (fam == AF_INET || fam == AF_INET6) && decoded?.port == port:
                guard var a = decoded else { continue }
                if let host, a.host != host && !(a.host == "0.0.0.0" || a.host == "::") { continue }
                if a.host == "0.0.0.0" { a.host = host ?? "127.0.0.1" } else if a.host == "::" { a.host = host ?? "::1" }
                found = (fd, copy, try a.encode(family: fam), fam)
            case let .unix(path) where fam == AF_UNIX && (decoded.map { $0.abstract == true ? "@" + $0.host : $0.host }) == path:
                found = (fd, copy, Array(raw.prefix(Int(length))), fam)
            default:
                continue
            }
            if found != nil { break }
        }
        name = channel.description
        // A thread blocked reading a client's connection: the input takes that client's
        // place (the server would otherwise see it reset, and the session's state go).
        let blocked = SocketInput.blockedOn(connections, threads: threads)
        if let found, blocked == nil {
            (_, listener, address, family) = found
            replaced = nil
            return
        }
        guard let connection = blocked ?? (connections.count == 1 ? connections[0] : nil) else {
            let have = listening.isEmpty ? "it holds no listening socket" : "it listens on \(listening.joined(separator: ", "))"
            throw WBError.invalidArgument("--input \(channel): the process has no socket listening there and no client connection to it (\(have)); take the snapshot of the server while it listens, and name its port or path")
        }
        // A listener of wb's own in the process's namespace, on loopback (an abstract
        // name the kernel picks for a Unix socket), stands in for the server's.
        family = connection.family
        let mine = try namespace.socket(family, Int32(SOCK_STREAM.rawValue), 0)
        var local: [UInt8]
        switch family {
        case AF_INET: local = try SocketAddress(host: "127.0.0.1").encode(family: AF_INET)
        case AF_INET6: local = try SocketAddress(host: "::1").encode(family: AF_INET6)
        default: local = [UInt8(AF_UNIX & 0xFF), 0]
        }
        let bound = local.withUnsafeBytes { p in
            p.baseAddress!.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(mine.rawValue, $0, UInt32(local.count)) }
        }
        if bound != 0 || Glibc.listen(mine.rawValue, 8) != 0 {
            throw WBError.system(call: "bind", errno: errno, what: "making a listener to connect the process's fd \(connection.fd) to")
        }
        var raw = [UInt8](repeating: 0, count: 128)
        var length = UInt32(raw.count)
        _ = wb_sock_name(mine.rawValue, 0, &raw, &length)
        listener = mine
        address = Array(raw.prefix(Int(length)))
        let original = fds.first { $0.fd == connection.fd }
        replaced = (connection.fd, original?.closeOnExec ?? false, original?.flags ?? 0)
    }

    /// Of the client connections to the port or path, the one a thread of the snapshot is
    /// blocked reading (its registers restart a read, recv or kin on that fd).
    private static func blockedOn(_ connections: [(fd: Int32, family: Int32)], threads: [Registers]) -> (fd: Int32, family: Int32)? {
        for r in threads {
            let calls = [r.origRax, r.rax].compactMap { Int(exactly: $0) }
            guard calls.contains(where: { Executor.readCalls.contains($0) }) else { continue }
            if let c = connections.first(where: { $0.fd == Int32(truncatingIfNeeded: r.rdi) }) { return c }
        }
        return nil
    }

    /// The start of a run: the input as messages, the first sent on a new connection. For a
    /// connection put in place, the server's end is returned, to become fd `replaced.fd`.
    func begin(_ data: [UInt8]) throws -> FileDescriptor? {
        end()
        pending = SocketInput.messages(data, split: split)
        finished = false
        ends = [:]
        let fam = family
        let s = try namespace.socket(fam, Int32(SOCK_STREAM.rawValue), 0)
        var big: Int32 = 4 << 20
        setsockopt(s.rawValue, SOL_SOCKET, SO_RCVBUF, &big, 4)
        var limit = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(s.rawValue, SOL_SOCKET, SO_SNDTIMEO, &limit, UInt32(MemoryLayout<timeval>.size))
        let e = wb_connect_raw(s.rawValue, address, UInt32(address.count))
        if e != 0 {
            throw WBError.system(call: "connect", errno: e, what: "connecting to \(name) in the process being fuzzed (its accept queue full?)")
        }
        var raw = [UInt8](repeating: 0, count: 128)
        var length = UInt32(raw.count)
        _ = wb_sock_name(s.rawValue, 0, &raw, &length)
        clientName = Array(raw.prefix(Int(length)))
        _ = fcntl(s.rawValue, F_SETFL, fcntl(s.rawValue, F_GETFL) | O_NONBLOCK)
        client = s
        var serverEnd: FileDescriptor?
        if let replaced {
            let accepted = Glibc.accept(listener.rawValue, nil, nil)
            if accepted < 0 { throw WBError.system(call: "accept", errno: errno, what: "making the connection that replaces fd \(replaced.fd)") }
            _ = fcntl(accepted, F_SETFD, FD_CLOEXEC)
            serverEnd = FileDescriptor(owning: accepted)
            _ = fcntl(accepted, F_SETFL, replaced.flags & (O_NONBLOCK | O_APPEND | O_ASYNC))
        }
        _ = feed()
        return serverEnd
    }

    /// For a run wb does not stop at each wait (a replay handed to a debugger): the next
    /// message goes once the server has read everything sent before (its end of the
    /// connection holds nothing unread).
    func pace(tracee: Tracee) {
        guard hasMore else { return }
        for fd in (try? ProcFS.fds(tracee.pid)) ?? [] where isConnection(fd, tracee: tracee) {
            guard let copy = try? tracee.takeFD(fd) else { continue }
            var unread: Int32 = 0
            if wb_socket_ioctl_int(copy.rawValue, UInt(FIONREAD), &unread) == 0 && unread == 0 { feed() }
            return
        }
    }

    /// Sends the next message, or half-closes the connection after the last; whether there
    /// was anything left to do.
    @discardableResult
    func feed() -> Bool {
        guard let c = client, !finished else { return false }
        drain()
        guard !pending.isEmpty else {
            shutdown(c.rawValue, Int32(SHUT_WR))
            finished = true
            return true
        }
        let message = pending.removeFirst()
        var sent = 0
        while sent < message.count {
            let n = message[sent...].withUnsafeBytes { send(c.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN {
                // The server's receive queue is full: the rest goes when it waits again.
                pending.insert(Array(message[sent...]), at: 0)
                return true
            }
            // The server closed or reset the connection: nothing more can go.
            pending = []
            finished = true
            return sent > 0
        }
        return true
    }

    /// Whether messages or the end of the connection are still to be sent.
    var hasMore: Bool { client != nil && !finished }

    /// Whether the process's `fd` is the server's end of this run's connection.
    func isConnection(_ fd: Int32, tracee: Tracee) -> Bool {
        if let known = ends[fd], known || (try? Paths.readLink("/proc/\(tracee.pid)/fd/\(fd)")) == endLinks[fd] { return known }
        var yes = false
        if client != nil, let copy = try? tracee.takeFD(fd) {
            var raw = [UInt8](repeating: 0, count: 128)
            var length = UInt32(raw.count)
            yes = wb_sock_name(copy.rawValue, 1, &raw, &length) == 0 && Array(raw.prefix(Int(length))) == clientName
        }
        ends[fd] = yes
        endLinks[fd] = try? Paths.readLink("/proc/\(tracee.pid)/fd/\(fd)")
        return yes
    }

    /// A run's end: the connection reset, and connections the server never accepted taken
    /// off its queue.
    func end() {
        if let c = client {
            _ = wb_close_reset(c.release())
            client = nil
        }
        _ = wb_accept_drop(listener.rawValue)
        ends = [:]
    }

    /// Responses are read and dropped, so a server that answers much never waits for wb.
    private func drain() {
        guard let c = client else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while buffer.withUnsafeMutableBytes({ recv(c.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
    }

    /// The input cut at every occurrence of `split` (which is dropped); the whole input as
    /// one message without it.
    static func messages(_ data: [UInt8], split: [UInt8]?) -> [[UInt8]] {
        guard let split, !split.isEmpty else { return [data] }
        var out: [[UInt8]] = []
        var start = 0, i = 0
        while i + split.count <= data.count {
            if data[i] == split[0] && Array(data[i..<(i + split.count)]) == split {
                out.append(Array(data[start..<i]))
                i += split.count
                start = i
            } else {
                i += 1
            }
        }
        out.append(Array(data[start...]))
        return out.filter { !$0.isEmpty }
    }
}
