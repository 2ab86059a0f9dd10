import CWBNative
import Foundation
import Glibc
import WBCore
import WBSystem

/// What to do with a TCP connection to a peer outside the image.
public enum TCPPolicy: String, Sendable, CaseIterable {
    /// Rebuilt in repair mode: a peer that is still there sees a pause, then the conversation
    /// goes on.
    case restore
    /// The process gets the connection reset (ECONNRESET), as after a peer's crash.
    case close
}

/// Makes a new socket what the image says one was, through a copy of it wb holds: the
/// restored process creates the socket (so it belongs to the process's network namespace)
/// and wb sets options, binds, listens, connects, rebuilds TCP connections in repair mode and
/// puts waiting datagrams back.
///
/// A rebuilt TCP connection stays in repair mode (`Pending`) until `finish`, once the whole
/// restore has succeeded: a restore that fails later kills the process, and a socket closed
/// in repair mode sends nothing, so the peer still sees only a pause.
public struct SocketBuilder {
    public let namespace: NetNamespace

    public init(namespace: NetNamespace) { self.namespace = namespace }

    /// A connection in repair mode, waiting for `finish`.
    public struct Pending {
        let socket: FileDescriptor
        /// Bytes sent and not acknowledged, to go into the queue as sent at `finish`.
        let sent: Data
        /// Bytes not sent yet, sent once repair mode is off.
        let unsent: Data
        let name: String
        let reset: (from: [UInt8], to: [UInt8], seq: UInt32)?
        let reuse: Int32
        /// Where a reset is injected.
        let namespace: NetNamespace
    }

    /// How a Unix socket is bound to a path and a path unlinked: these make and remove files,
    /// which the restore does as the process, with its rights (FDBuilder), not as wb.
    /// Listening and connecting set a Unix socket's peer credentials (SO_PEERCRED) from the
    /// process that calls them: they are made by the process too, as itself. Each returns
    /// 0 or an errno.
    public struct PathCalls {
        public var bind: (SocketAddress) throws -> Int32
        public var unlink: (String) throws -> Void
        /// A path that was unlinked after the bind: removed once every socket is built (others
        /// of the image may connect or send to it first).
        public var unlinkLater: (String) -> Void
        public var listen: (Int32) throws -> Int32
        public var connect: (SocketAddress) throws -> Int32
        public init(bind: @escaping (SocketAddress) throws -> Int32, unlink: @escaping (String) throws -> Void,
                    unlinkLater: @escaping (String) -> Void, listen: @escaping (Int32) throws -> Int32,
                    connect: @escaping (SocketAddress) throws -> Int32) {
            self.bind = bind; self.unlink = unlink; self.unlinkLater = unlinkLater; self.listen = listen; self.connect = connect
        }
    }

    /// Builds `s` on `fd` (wb's copy of a new socket of its family, type and protocol).
    /// Returns notes for the user, and a connection left in repair mode. `paths` binds and
    /// unlinks Unix socket paths (by default from wb's side).
    public func build(_ fd: FileDescriptor, _ s: NetSocketState, tcp policy: TCPPolicy, paths: PathCalls? = nil) throws -> (notes: [String], pending: Pending?) {
        let paths = paths ?? PathCalls(bind: { a in
            do { try SocketName.bind(fd.rawValue, a, family: AF_UNIX); return 0 } catch WBError.system(_, let e, _) { return e }
        }, unlink: { _ = Glibc.unlink($0) }, unlinkLater: { _ = Glibc.unlink($0) }, listen: { backlog in
            Glibc.listen(fd.rawValue, backlog) == 0 ? 0 : errno
        }, connect: { a in
            do { try SocketName.connect(fd.rawValue, a, family: AF_UNIX); return 0 } catch WBError.system(_, let e, _) { return e }
        })
        var notes: [String] = []
        let name = SocketBuilder.name(s)
        if let tcp = s.tcp {
            return (notes, try connection(fd, s, tcp, name: name, policy: policy, notes: &notes))
        }
        for o in s.options ?? [] { try withContext("restoring \(name)") { try SocketOptions.set(fd.rawValue, o) } }
        try attachFilter(fd, s, name: name)
        if let n = s.netlink {
            try netlink(fd, n, s, name: name)
            return (notes, nil)
        }
        if let p = s.packet {
            try packet(fd, p, name: name)
            if s.droppedPackets != nil { notes.append("\(name): the packets that were waiting to be read are not restored (traffic the kernel had delivered)") }
            return (notes, nil)
        }
        switch s.state {
        case .unbound, .peerClosed:
            break
        case .bound, .listening, .connected:
            if let local = s.local, !(s.family == AF_UNIX && local.host.isEmpty),
               !(s.family != AF_UNIX && local.port == 0 && s.state == .connected && s.type != Int32(SOCK_RAW.rawValue)) {
                try bind(fd, local, s, name: name, paths: paths)
            }
        }
        for m in s.memberships ?? [] {
            let raw = fd.rawValue, family = s.family
            try namespace.perform { try Multicast.join(raw, family: family, m, name: name) }
        }
        if s.state == .listening {
            let e = s.family == AF_UNIX ? try paths.listen(s.backlog ?? 128) : (Glibc.listen(fd.rawValue, s.backlog ?? 128) == 0 ? 0 : errno)
            if e != 0 { throw WBError.system(call: "listen", errno: e, what: "listening on \(name)") }
        }
        if s.state == .connected, let peer = s.peer, !(s.family == AF_UNIX && peer.host.isEmpty) {
            if s.family == AF_UNIX {
                let e = try paths.connect(peer)
                if e == ENOENT || e == ECONNREFUSED {
                    notes.append("\(name) was connected to \(peer), which is not there now: it is not connected")
                } else if e != 0 {
                    throw WBError.system(call: "connect", errno: e, what: "connecting \(name) to \(peer)")
                }
            } else {
                try SocketName.connect(fd.rawValue, peer, family: s.family)
            }
        }
        for d in s.datagrams ?? [] {
            try putBack(d, on: fd, s, name: name, notes: &notes)
        }
        if s.droppedPackets != nil { notes.append("\(name): the packets that were waiting to be read are not restored (traffic the kernel had delivered)") }
        if let how = s.shutdown, how != 0 { try SocketBuilder.shutdown(fd.rawValue, how, name: name) }
        return (notes, nil)
    }

    /// "TCP socket 127.0.0.1:6379 -> 127.0.0.1:40000" and the like, for messages.
    public static func name(_ s: NetSocketState) -> String {
        var text = "\(s.kindName) socket"
        if let n = s.netlink { text += " (protocol \(s.proto), port id \(n.portid))" }
        if let p = s.packet { text += " (\(p.interface.isEmpty ? "all interfaces" : p.interface))" }
        if let l = s.local, s.family == AF_UNIX ? !l.host.isEmpty : true { text += " \(l)" }
        if let p = s.peer, s.state == .connected || s.state == .peerClosed { text += " -> \(p)" }
        return text
    }

    /// shutdown(2) of the directions `how` (1 reading, 2 writing, 3 both).
    static func shutdown(_ fd: Int32, _ how: Int32, name: String) throws {
        let mode = how == 3 ? Int32(SHUT_RDWR) : how == 1 ? Int32(SHUT_RD) : Int32(SHUT_WR)
        if Glibc.shutdown(fd, mode) != 0 && errno != ENOTCONN {
            throw WBError.system(call: "shutdown", errno: errno, what: "shutting down \(name) again")
        }
    }

    /// Applies what a Unix socket pair end held besides its bytes: options, a filter, the
    /// directions shut down. Called once its queued bytes are back.
    public func finishPairEnd(_ fd: FileDescriptor, _ s: NetSocketState) throws {
        let name = SocketBuilder.name(s)
        for o in s.options ?? [] { try withContext("restoring \(name)") { try SocketOptions.set(fd.rawValue, o) } }
        try attachFilter(fd, s, name: name)
        if let how = s.shutdown, how != 0 { try SocketBuilder.shutdown(fd.rawValue, how, name: name) }
    }

    private func attachFilter(_ fd: FileDescriptor, _ s: NetSocketState, name: String) throws {
        guard let code = s.filter else { return }
        try code.withUnsafeBufferPointer { b in
            try check(wb_socket_attach_filter(fd.rawValue, b.baseAddress, Int32(b.count)), "setsockopt(SO_ATTACH_FILTER)", "attaching the BPF filter of \(name)")
        }
    }

    /// An established (or half-closed) TCP connection, rebuilt in repair mode with its
    /// sequence numbers, queues, options and window; FINs sent or received are put back as
    /// CRIU's soccr does (shutdown for ours, an injected segment for the peer's).
    private func connection(_ fd: FileDescriptor, _ s: NetSocketState, _ t: TCPConnection, name: String, policy: TCPPolicy,
                            notes: inout [String]) throws -> Pending {
        guard let local = s.local, let peer = s.peer else { throw WBError.failed("\(name): the image has a TCP connection without its addresses") }
        guard t.rebuildable else { throw WBError.failed("\(name): the image has a TCP connection in state \(t.state), which cannot be rebuilt") }
        // Options first: SO_REUSEADDR would undo the forced reuse repair mode sets up.
        for o in s.options ?? [] { try withContext("restoring \(name)") { try SocketOptions.set(fd.rawValue, o) } }
        try attachFilter(fd, s, name: name)
        try check(wb_tcp_repair(fd.rawValue, 1), "setsockopt(TCP_REPAIR)", "putting a new TCP socket in repair mode")
        var c = wb_tcp_conn()
        c.state = t.state; c.snd_seq = t.sendSeq; c.rcv_seq = t.receiveSeq
        // The bytes sent and not acknowledged go into the queue as sent when the connection
        // is finished, not now: the retransmission timer that sends them again is armed as
        // they go in, and while the restore holds the traffic (a set's hold until every member
        // is back, the lock of a `--kill` checkpoint) each retransmission would be dropped and
        // the next put off twice as long (after a restore of 20 s, the first to get through
        // could be 30 s away). Not so with our FIN queued after them (FIN-WAIT-1, CLOSING,
        // LAST-ACK): it goes in in repair mode, after the bytes, now. (Sent again as new data
        // instead, they would not do: a peer that had received more than a congestion window
        // of them acknowledges bytes the kernel counts as unsent, and drops the segments.)
        let sent = t.sendQueue.prefix(t.sendQueue.count - Int(t.unsent))
        let loadNow = [4, 11, 9].contains(t.state)
        c.outq = UInt32(t.sendQueue.count); c.unsent = t.unsent; c.inq = UInt32(t.receiveQueue.count)
        c.mss = t.mss; c.options = t.options; c.snd_wscale = t.sendWindowScale; c.rcv_wscale = t.receiveWindowScale
        c.timestamp = t.timestamp
        var w = t.window + [UInt32](repeating: 0, count: max(0, 5 - t.window.count))
        if t.finReceived { w[4] &-= 1; w[3] &+= 1 }
        c.snd_wl1 = w[0]; c.snd_wnd = w[1]; c.max_window = w[2]; c.rcv_wnd = w[3]; c.rcv_wup = w[4]
        try check(wb_tcp_prepare(fd.rawValue, &c), "setsockopt(TCP_QUEUE_SEQ)", "restoring the sequence numbers of \(name)")
        // Repair mode binds over anything (SK_FORCE_REUSE): a listener on the same port, or a
        // connection of a process still running here with the same addresses. The latter
        // would take this one's packets: it is looked for first.
        try bind(fd, local, s, name: name, paths: nil)
        try SocketName.connect(fd.rawValue, peer, family: s.family)
        // The queues go back into buffers the kernel had grown for them (autotuning); a new
        // socket's are smaller: they get room (as root, past wmem_max and rmem_max).
        SocketBuilder.makeRoom(fd.rawValue, SO_SNDBUF, 32 /* SO_SNDBUFFORCE */, bytes: t.sendQueue.count + Int(t.unsent))
        SocketBuilder.makeRoom(fd.rawValue, SO_RCVBUF, 33 /* SO_RCVBUFFORCE */, bytes: t.receiveQueue.count)
        try t.receiveQueue.withUnsafeBytes { rq in
            try check(wb_tcp_finish(fd.rawValue, &c, rq.baseAddress), "setsockopt(TCP_REPAIR_*)", "restoring the connection of \(name)")
        }
        if loadNow { try SocketBuilder.loadSent(fd.rawValue, sent, name: name) }
        let (from, to) = try injectionAddresses(peer: peer, local: local, family: s.family)
        let una = t.sendSeq &- UInt32(t.sendQueue.count)
        let window = UInt16(clamping: t.window.count > 3 ? t.window[3] >> min(t.receiveWindowScale, 14) : 65535)
        if [4, 5, 11].contains(t.state) { try sendFin(fd, acknowledged: t.state == 5, name: name) }
        if t.finReceived { try inject(from, to, seq: t.receiveSeq, ack: una, window: window, flags: 0x11, name: name) }
        if t.state == 9 { try sendFin(fd, acknowledged: false, name: name) }
        if t.state == 5 { try inject(from, to, seq: t.receiveSeq, ack: t.sendSeq &+ 1, window: window, flags: 0x10, name: name) }
        let unsent = t.unsent > 0 ? t.sendQueue.suffix(Int(t.unsent)) : Data()
        var reset: (from: [UInt8], to: [UInt8], seq: UInt32)?
        if policy == .close && s.peerInside != true {
            reset = (from, to, t.receiveSeq &+ (t.finReceived ? 1 : 0))
            notes.append("\(name): reset (--tcp=close); the process sees its peer gone")
        }
        let reuse = (s.options ?? []).first { $0.level == SOL_SOCKET && $0.name == SO_REUSEADDR }
            .map { $0.value.count >= 4 ? $0.value.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) } : 0 } ?? 0
        return Pending(socket: fd, sent: loadNow ? Data() : Data(sent), unsent: Data(unsent), name: name, reset: reset, reuse: reuse, namespace: namespace)
    }

    /// Our FIN, queued (FIN-WAIT-1, LAST-ACK, CLOSING) or counted as sent (FIN-WAIT-2),
    /// with shutdown(SHUT_WR) in repair mode.
    private func sendFin(_ fd: FileDescriptor, acknowledged: Bool, name: String) throws {
        let sendQueue: Int32 = 2, noQueue: Int32 = 0
        func queue(_ q: Int32) throws {
            var v = q
            if setsockopt(fd.rawValue, Int32(IPPROTO_TCP), 20 /* TCP_REPAIR_QUEUE */, &v, 4) != 0 {
                throw WBError.system(call: "setsockopt(TCP_REPAIR_QUEUE)", errno: errno, what: "putting back the FIN of \(name)")
            }
        }
        if acknowledged { try queue(sendQueue) }
        if Glibc.shutdown(fd.rawValue, Int32(SHUT_WR)) != 0 {
            throw WBError.system(call: "shutdown", errno: errno, what: "putting back the FIN of \(name)")
        }
        if acknowledged { try queue(noQueue) }
    }

    /// The peer's and our addresses as struct sockaddr of one family (an IPv6 socket talking
    /// IPv4 to a ::ffff: address sends IPv4 packets).
    private func injectionAddresses(peer: SocketAddress, local: SocketAddress, family: Int32) throws -> ([UInt8], [UInt8]) {
        func plain(_ a: SocketAddress) -> SocketAddress {
            var a = a
            if a.host.hasPrefix("::ffff:") && a.host.contains("." as Character) { a.host = String(a.host.dropFirst(7)); a.scope = nil }
            return a
        }
        if family == AF_INET6 && peer.host.hasPrefix("::ffff:") && peer.host.contains("." as Character) {
            return (try plain(peer).encode(family: AF_INET), try plain(local).encode(family: AF_INET))
        }
        return (try peer.encode(family: family), try local.encode(family: family))
    }

    private func inject(_ from: [UInt8], _ to: [UInt8], seq: UInt32, ack: UInt32, window: UInt16, flags: UInt8, name: String) throws {
        let e = try namespace.perform { wb_tcp_inject(from, to, seq, ack, window, flags, NetworkLock.passMark) }
        if e != 0 { throw WBError.system(call: "sendto(raw)", errno: e, what: "putting back a segment of \(name)'s peer") }
    }

    /// In repair mode: the bytes a connection had sent and not had acknowledged into its send
    /// queue, as sent.
    private static func loadSent(_ fd: Int32, _ bytes: Data, name: String) throws {
        guard !bytes.isEmpty else { return }
        try bytes.withUnsafeBytes { b in
            try check(wb_tcp_load_sent(fd, b.baseAddress, b.count), "setsockopt(TCP_REPAIR_QUEUE)",
                      "putting back the \(bytes.count) bytes \(name) had sent and not had acknowledged")
        }
    }

    /// Takes rebuilt connections out of repair mode: they talk again (their peers'
    /// retransmissions arrive once the lock is lifted), what each had sent and its peer had
    /// not acknowledged goes into its queue and is sent again when the retransmission timer
    /// fires, and the bytes not sent yet go out; with --tcp=close a connection is reset
    /// instead. All leave repair mode before any sends: a segment must not reach a peer
    /// still in repair mode (both ends of a connection inside the image or the set), which
    /// takes it in without an acknowledgement the sender can use.
    public static func finish(_ connections: [Pending]) throws {
        defer { for p in connections { p.socket.close() } }
        for p in connections { try loadSent(p.socket.rawValue, p.sent, name: p.name) }
        for p in connections {
            try check(wb_tcp_repair(p.socket.rawValue, -1), "setsockopt(TCP_REPAIR)", "ending repair mode of \(p.name)")
            // Taking repair mode off turns SO_REUSEADDR off: the image's value goes back.
            if p.reuse > 0 {
                var v = p.reuse
                _ = setsockopt(p.socket.rawValue, SOL_SOCKET, SO_REUSEADDR, &v, 4)
            }
        }
        for p in connections {
            if let r = p.reset {
                try SocketBuilder(namespace: p.namespace).inject(r.from, r.to, seq: r.seq, ack: 0, window: 0, flags: 0x04, name: p.name)
                continue
            }
            if !p.unsent.isEmpty {
                var outq: Int32 = 0
                _ = wb_socket_ioctl_int(p.socket.rawValue, 0x5411 /* SIOCOUTQ */, &outq)
                SocketBuilder.makeRoom(p.socket.rawValue, SO_SNDBUF, 32 /* SO_SNDBUFFORCE */, bytes: Int(outq) + p.unsent.count)
                try SocketBuilder.sendAll(p.socket.rawValue, p.unsent, what: "sending the \(p.unsent.count) bytes \(p.name) had not sent yet")
            }
        }
    }

    private func netlink(_ fd: FileDescriptor, _ n: NetlinkBinding, _ s: NetSocketState, name: String) throws {
        guard n.portid != 0 || !n.groups.isEmpty else { return }
        // struct sockaddr_nl: family, pad, pid, groups (the first 32).
        var raw = [UInt8](repeating: 0, count: 12)
        raw[0] = 16
        withUnsafeBytes(of: n.portid) { for (i, b) in $0.enumerated() { raw[4 + i] = b } }
        let r = raw.withUnsafeBytes { b in b.baseAddress!.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd.rawValue, $0, 12) } }
        if r != 0 {
            if errno == EADDRINUSE { throw WBError.refused("\(name): its port id \(n.portid) is taken here (by the original process?); stop it, or restore with --new-netns") }
            throw WBError.system(call: "bind", errno: errno, what: "binding \(name)")
        }
        for g in n.groups {
            var v = g
            if setsockopt(fd.rawValue, 270 /* SOL_NETLINK */, 1 /* NETLINK_ADD_MEMBERSHIP */, &v, 4) != 0 {
                throw WBError.system(call: "setsockopt(NETLINK_ADD_MEMBERSHIP)", errno: errno, what: "joining group \(g) with \(name)")
            }
        }
    }

    private func packet(_ fd: FileDescriptor, _ p: PacketBinding, name: String) throws {
        guard !p.interface.isEmpty else { return }
        let index = if_nametoindex(p.interface)
        guard index > 0 else {
            throw WBError.refused("\(name): there is no interface \(p.interface) here; restore with --new-netns, or where it exists")
        }
        // struct sockaddr_ll: family, protocol, ifindex, hatype, pkttype, halen, addr[8].
        var raw = [UInt8](repeating: 0, count: 20)
        raw[0] = 17
        withUnsafeBytes(of: p.proto) { raw[2] = $0[0]; raw[3] = $0[1] }
        withUnsafeBytes(of: Int32(index)) { for (i, b) in $0.enumerated() { raw[4 + i] = b } }
        let r = raw.withUnsafeBytes { b in b.baseAddress!.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd.rawValue, $0, 20) } }
        if r != 0 { throw WBError.system(call: "bind", errno: errno, what: "binding \(name) to \(p.interface)") }
    }

    /// bind(), with the errors a user can act on: a port taken here, a Unix path in use.
    func bind(_ fd: FileDescriptor, _ local: SocketAddress, _ s: NetSocketState, name: String, paths: PathCalls?) throws {
        if s.family == AF_UNIX && local.abstract != true && !local.host.isEmpty, let paths {
            // A socket file left by the checkpointed process (nobody listens there) is removed;
            // one a live process listens on is not taken from it.
            if let st = try? Paths.stat(local.host) {
                guard st.mode & S_IFMT == S_IFSOCK else {
                    throw WBError.refused("\(name): \(local.host) exists and is not a socket; move it away to restore")
                }
                if try inUse(local.host) {
                    throw WBError.refused("\(name): a running process listens on \(local.host) (the original?); stop it to restore this one")
                }
                try paths.unlink(local.host)
            }
            let e = try paths.bind(local)
            if e == EADDRINUSE { throw WBError.refused("\(local) is taken here, so \(name) cannot be bound again; stop what holds it") }
            if e != 0 { throw WBError.system(call: "bind", errno: e, what: "binding \(name)") }
            if local.unlinked == true { paths.unlinkLater(local.host) }
            return
        }
        do {
            try SocketName.bind(fd.rawValue, local, family: s.family)
        } catch WBError.system(_, let e, _) where e == EADDRINUSE {
            let what = s.family == AF_UNIX ? "\(local)" : "port \(local.port) (\(s.kindName))"
            throw WBError.refused("\(what) is taken here, so \(name) cannot be bound again; stop what holds it, or restore with --new-netns")
        } catch WBError.system(_, let e, _) where e == EADDRNOTAVAIL {
            throw WBError.refused("\(name): address \(local.host) does not exist here; restore with --new-netns, which gives the process its addresses")
        }
    }

    /// A process accepts connections (or datagrams) on the Unix socket at `path`.
    func inUse(_ path: String) throws -> Bool {
        let probe = try namespace.socket(AF_UNIX, stream, 0)
        do {
            try SocketName.connect(probe.rawValue, SocketAddress(host: path), family: AF_UNIX)
            return true
        } catch WBError.system(_, let e, _) where e == EPROTOTYPE {
            return true
        } catch {
            // A datagram socket bound there answers connect for its type only.
            let d = try namespace.socket(AF_UNIX, dgram, 0)
            return (try? SocketName.connect(d.rawValue, SocketAddress(host: path), family: AF_UNIX)) != nil
        }
    }

    /// Puts bytes (a stream's) or messages (a datagram or seqpacket socket's, each its own)
    /// into `sender`'s peer, from wb's copy of the sender. The peer once held them all; the
    /// sender's buffer may be smaller than that, so it is raised as needed (SO_SNDBUFFORCE)
    /// and set back after.
    public static func refill(_ sender: FileDescriptor, bytes: Data, messages: [Data]) throws {
        guard !bytes.isEmpty || !messages.isEmpty else { return }
        let total = bytes.count + messages.reduce(0) { $0 + $1.count + 64 }
        let before = SocketProbe.int(sender.rawValue, SOL_SOCKET, SO_SNDBUF)
        var raised = false
        func raise() throws {
            guard !raised else { throw WBError.failed("the bytes queued on a socket do not fit in it again") }
            raised = true
            var size = Int32(clamping: total * 2 + 65536)
            if setsockopt(sender.rawValue, SOL_SOCKET, 32 /* SO_SNDBUFFORCE */, &size, 4) != 0 {
                throw WBError.system(call: "setsockopt(SO_SNDBUFFORCE)", errno: errno, what: "making room for the \(total) bytes queued on a socket")
            }
        }
        func put(_ chunk: Data) throws {
            var at = 0
            while at < chunk.count || (chunk.isEmpty && at == 0) {
                let n = chunk.withUnsafeBytes { send(sender.rawValue, $0.baseAddress.map { $0 + at }, $0.count - at, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    if errno == EAGAIN || errno == ENOBUFS { try raise(); continue }
                    throw WBError.system(call: "send", errno: errno, what: "putting back the \(total) bytes queued on a socket")
                }
                at += n
                if chunk.isEmpty { break }
            }
        }
        if !bytes.isEmpty { try put(bytes) }
        for m in messages { try put(m) }
        if raised && before > 0 {
            var size = before / 2
            _ = setsockopt(sender.rawValue, SOL_SOCKET, 32 /* SO_SNDBUFFORCE */, &size, 4)
        }
    }

    /// Grows a socket's send or receive buffer to hold `bytes` queued (the kernel counts
    /// about twice the payload), when it is smaller.
    static func makeRoom(_ fd: Int32, _ option: Int32, _ force: Int32, bytes: Int) {
        guard bytes > 0 else { return }
        var size: Int32 = 0
        var length = socklen_t(4)
        getsockopt(fd, SOL_SOCKET, option, &size, &length)
        let need = 2 * (bytes + 65536)
        guard Int(size) < need else { return }
        var want = Int32(min(need, Int(Int32.max / 2)))
        if setsockopt(fd, SOL_SOCKET, force, &want, 4) != 0 { _ = setsockopt(fd, SOL_SOCKET, option, &want, 4) }
    }

    static func sendAll(_ fd: Int32, _ bytes: Data, what: String) throws {
        var at = 0
        while at < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + at, $0.count - at, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw WBError.system(call: "send", errno: errno, what: what)
            }
            at += n
        }
    }

    /// A datagram that was waiting on the socket, sent to it again as if from its sender.
    func putBack(_ d: Datagram, on fd: FileDescriptor, _ s: NetSocketState, name: String, notes: inout [String]) throws {
        guard var to = SocketName.local(fd.rawValue) else { return }
        if s.family == AF_UNIX {
            // From an unnamed socket of the same namespace (abstract names are per namespace):
            // a named sender's name is not given again.
            let sender = try namespace.socket(AF_UNIX, s.type == seqpacket ? dgram : s.type, 0)
            let raw = try to.encode(family: AF_UNIX)
            let n = d.bytes.withUnsafeBytes { b in
                raw.withUnsafeBytes { a in
                    a.baseAddress!.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(sender.rawValue, b.baseAddress, b.count, Int32(MSG_DONTWAIT), $0, socklen_t(raw.count)) }
                }
            }
            if n < 0 { throw WBError.system(call: "sendto", errno: errno, what: "putting a datagram back on \(name)") }
            if let from = d.from, !from.host.isEmpty {
                let note = "\(name): datagrams waiting from \(from) come back from an unnamed sender"
                if !notes.contains(note) { notes.append(note) }
            }
            return
        }
        guard let from = d.from else { return }
        if to.host == "0.0.0.0" { to.host = "127.0.0.1" }
        if to.host == "::" { to.host = "::1" }
        let a = try from.encode(family: s.family), b = try to.encode(family: s.family)
        let e = try namespace.perform { d.bytes.withUnsafeBytes { wb_udp_inject(a, UInt32(a.count), b, UInt32(b.count), $0.baseAddress, $0.count, NetworkLock.passMark) } }
        if e != 0 { throw WBError.system(call: "sendto(raw)", errno: e, what: "putting a datagram from \(from) back on \(name)") }
    }
}
