import CWBNative
import Foundation
import Glibc
import WBCore
import WBSystem

/// Reads a socket's state through a copy of it that wb holds (pidfd_getfd): the copy is the
/// very socket, so nothing is injected into the process.
public enum SocketProbe {
    static let tcpStates = ["", "established", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT", "closed",
                            "CLOSE-WAIT", "LAST-ACK", "listening", "CLOSING"]

    public static func int(_ fd: Int32, _ level: Int32, _ name: Int32) -> Int32 {
        var v: Int32 = 0
        var len = socklen_t(4)
        return getsockopt(fd, level, name, &v, &len) == 0 ? v : -1
    }

    /// Family, type and protocol.
    public static func identity(_ fd: Int32) -> (family: Int32, type: Int32, proto: Int32) {
        (int(fd, SOL_SOCKET, SO_DOMAIN), int(fd, SOL_SOCKET, SO_TYPE), int(fd, SOL_SOCKET, SO_PROTOCOL))
    }

    /// What preflight knows of the image's Unix sockets: which the image's processes hold,
    /// and which clients wait in the accept queue of a listener they hold.
    public struct Scope: Sendable {
        public var held: Set<UInt64>
        public var table: SocketTable
        /// Clients of the checkpoint waiting in the accept queue of a listener it holds.
        public var embryos: [UInt64: UInt64] = [:]
        public init(held: Set<UInt64>, table: SocketTable) { self.held = held; self.table = table }
    }

    /// Why the socket cannot be saved (for the one-line refusal), or nil. Looks only; the
    /// process need not be stopped. `inode` is the socket's; `inFlightFDs` the fds waiting in
    /// its queue (SCM_RIGHTS, from fdinfo's scm_fds).
    public static func unsupported(_ fd: Int32, inode: UInt64, scope: Scope, inFlightFDs: Int) -> String? {
        let (family, type, proto) = identity(fd)
        let table = scope.table
        if inFlightFDs > 0 {
            return "a Unix socket with \(inFlightFDs) fd\(inFlightFDs == 1 ? "" : "s") in flight in its queue (SCM_RIGHTS), which wb does not restore"
        }
        switch family {
        case AF_UNIX:
            guard let diag = table.unix[inode] else { return "a Unix socket sock_diag does not list (in another network namespace than wb's)" }
            if diag.state == 10 && diag.queued > 0 {
                // The queue lists the connecting clients (sock_diag shows the peer of each
                // connection waiting): those of the checkpoint connect again on restore.
                let outside = listenerQueue(inode).filter { !scope.held.contains($0) }
                if !outside.isEmpty {
                    return "a Unix socket listening with \(outside.count) connection\(outside.count == 1 ? "" : "s") from outside the checkpoint waiting to be accepted (checkpoint again once it has accepted them)"
                }
            }
            if diag.state == 1 && diag.peer == 0 && type != dgram, scope.embryos[inode] != nil {
                var sent: Int32 = 0
                if wb_socket_ioctl_int(fd, 0x5411 /* SIOCOUTQ */, &sent) == 0 && sent > 0 {
                    return "a Unix socket whose connection waits to be accepted by a listener of the checkpoint and holds \(sent) bytes it sent (checkpoint again once it is accepted)"
                }
            }
            return nil
        case AF_INET, AF_INET6:
            if type == Int32(SOCK_RAW.rawValue) { return nil }
            guard type == stream || type == dgram else { return "an IP socket of type \(type)" }
            if type == stream && proto != 0 && proto != Int32(IPPROTO_TCP) { return "an IP stream socket of protocol \(proto) (SCTP, MPTCP)" }
            if type == dgram && proto != 0 && proto != Int32(IPPROTO_UDP) { return "an IP datagram socket of protocol \(proto) (ICMP, UDP-Lite)" }
            if type == stream {
                // Connections waiting in a listener's queue are given time to be accepted, and
                // a connect in progress time to finish, before the stop
                // (Checkpointer.settleSockets); the stop checks again.
                var info = tcpState(fd)
                info.waiting = 0
                if info.state == 2 || info.state == 3 { info.state = 1 }
                if let why = tcpProblem(info) { return why }
                if [1, 4, 5, 8, 9, 11].contains(info.state) && table.inetListed && table.inet[inode] == nil {
                    return "a TCP connection sock_diag does not list (in another network namespace than wb's)"
                }
            }
            return nil
        case 16 /* AF_NETLINK */:
            return pending(fd) ? "a netlink socket with messages from the kernel waiting to be read" : nil
        case 17 /* AF_PACKET */:
            if int(fd, 263 /* SOL_PACKET */, 18 /* PACKET_FANOUT */) > 0 { return "a packet socket in a fanout group" }
            if int(fd, 263, 10 /* PACKET_VERSION */) > 0 { return "a packet socket with a memory-mapped ring (TPACKET_V2/V3)" }
            return nil
        default:
            let families: [Int32: String] = [40: "a vsock socket", 38: "an AF_ALG socket", 31: "a Bluetooth socket", 44: "an XDP socket",
                                             30: "a TIPC socket", 21: "an RDS socket", 29: "a CAN socket", 41: "a KCM socket"]
            return families[family] ?? "a socket of family \(family)"
        }
    }

    /// Why a TCP socket in this state cannot be saved now, or nil.
    static func tcpProblem(_ info: (state: UInt32, waiting: UInt32, backlog: UInt32)) -> String? {
        switch info.state {
        case 1, 4, 5, 7, 8, 9, 11: return nil
        case 10 where info.waiting > 0:
            return "a TCP listener with \(info.waiting) connection\(info.waiting == 1 ? "" : "s") waiting to be accepted (checkpoint again once it has accepted them)"
        case 10: return nil
        case 2, 3: return "a TCP socket in the middle of a connect (\(tcpStates[Int(info.state)])): checkpoint again once it is connected"
        default: return "a TCP connection in state \(tcpStates[min(Int(info.state), tcpStates.count - 1)])"
        }
    }

    /// The clients (inodes) waiting in the accept queue of the Unix listeners among `held`,
    /// each mapped to its listener.
    public static func embryos(of held: Set<UInt64>, table: SocketTable) -> [UInt64: UInt64] {
        var out: [UInt64: UInt64] = [:]
        for inode in held {
            guard let u = table.unix[inode], u.state == 10, u.queued > 0 else { continue }
            for e in listenerQueue(inode) { out[e] = inode }
        }
        return out
    }

    /// The clients (inodes) whose connections wait in Unix listener `inode`'s accept queue.
    static func listenerQueue(_ inode: UInt64) -> [UInt64] {
        var cap = 256
        while true {
            var out = [UInt64](repeating: 0, count: cap)
            var count: Int32 = 0
            guard wb_unix_listener_queue(inode, &out, Int32(cap), &count) == 0 else { return [] }
            if Int(count) > cap { cap = Int(count) + 16; continue }
            return Array(out.prefix(Int(count)))
        }
    }

    /// The two ends of the TCP connection (established or half-closed) `fd` is, or nil when it
    /// is none.
    public static func connection(_ fd: Int32) -> NetworkLock.Flow? {
        guard int(fd, SOL_SOCKET, SO_TYPE) == stream else { return nil }
        let state = tcpState(fd).state
        guard [1, 4, 5, 8, 9, 11].contains(state), let local = SocketName.local(fd), let peer = SocketName.peer(fd),
              local.port != 0 || peer.port != 0 else { return nil }
        return NetworkLock.Flow(local: local, peer: peer)
    }

    /// TCP state, and for a listener its waiting connections and backlog (TCP_INFO).
    public static func tcpState(_ fd: Int32) -> (state: UInt32, waiting: UInt32, backlog: UInt32) {
        var state: UInt32 = 7, waiting: UInt32 = 0, backlog: UInt32 = 0
        _ = wb_tcp_state(fd, &state, &waiting, &backlog)
        return (state, waiting, backlog)
    }

    /// Bytes of a TCP connection the peer acknowledged, and bytes that arrived from it
    /// (TCP_INFO's tcpi_bytes_acked and tcpi_bytes_received: sequence space since the
    /// socket was made, a FIN counted), with what is queued unacknowledged (SIOCOUTQ); nil
    /// when the socket cannot tell.
    public static func tcpCounts(_ fd: Int32) -> (acked: UInt64, received: UInt64, queued: UInt64)? {
        var info = [UInt8](repeating: 0, count: 232)
        var length = socklen_t(info.count)
        guard getsockopt(fd, Int32(IPPROTO_TCP), 11 /* TCP_INFO */, &info, &length) == 0, length >= 136 else { return nil }
        var outq: Int32 = 0
        guard wb_socket_ioctl_int(fd, 0x5411 /* SIOCOUTQ */, &outq) == 0 else { return nil }
        return info.withUnsafeBytes { ($0.loadUnaligned(fromByteOffset: 120, as: UInt64.self), $0.loadUnaligned(fromByteOffset: 128, as: UInt64.self), UInt64(max(0, outq))) }
    }

    static func pending(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) >= 0
    }

    /// The socket's state, for the image. A TCP connection is read in repair mode, which the
    /// caller turns on first (NetworkLock.hold). `peerInside`: the peer is a socket of the
    /// image (a Unix client waiting in a listener the image holds, a TCP connection between
    /// its processes).
    /// `defaults` holds the option defaults of the socket's kind (`Defaults.prepare`).
    /// `known`: the socket's identity and whether it listens, when the caller has read them.
    public static func capture(_ fd: Int32, inode: UInt64, table: SocketTable, peerInside: Bool,
                               defaults: SocketOptions.Defaults, multicast: [Multicast.Candidate] = [],
                               known: (identity: (family: Int32, type: Int32, proto: Int32), listening: Bool)? = nil) throws -> NetSocketState {
        let (family, type, proto) = known?.identity ?? identity(fd)
        var s = NetSocketState(family: family, type: type, proto: proto, state: .unbound)
        switch family {
        case 16: return try netlink(fd, s, defaults: defaults)
        case 17: return try packet(fd, s, defaults: defaults)
        default: break
        }
        s.local = SocketName.local(fd)
        s.peer = SocketName.peer(fd)
        if family == AF_UNIX, var local = s.local, !local.host.isEmpty, local.abstract != true {
            // A path unlinked since the bind (or replaced by another file) is bound and unlinked again.
            let kind = (try? Paths.stat(local.host)).map { $0.mode & S_IFMT }
            if kind != S_IFSOCK {
                local.unlinked = true
                s.local = local
            }
        }
        let listening = known?.listening ?? (int(fd, SOL_SOCKET, SO_ACCEPTCONN) == 1)
        let inet = family == AF_INET || family == AF_INET6
        let info = inet && type == stream ? tcpState(fd) : (state: 0, waiting: 0, backlog: 0)
        // Checked again now that the process is stopped: a connect may have begun or a
        // connection come in since its preflight.
        if inet && type == stream, let why = tcpProblem(info) { throw WBError.refused("it holds \(why)") }
        let connectedTCP = inet && type == stream && [1, 4, 5, 8, 9, 11].contains(info.state)
        s.options = SocketOptions.differing(fd, family: family, type: type, proto: proto, connectedTCP: connectedTCP, defaults: defaults).nilIfEmpty
        s.filter = try filter(fd)
        let shutdown = family == AF_UNIX ? Int32(table.unix[inode]?.shutdown ?? 0) : Int32(table.inet[inode]?.shutdown ?? 0)
        if shutdown != 0 && !connectedTCP { s.shutdown = shutdown }
        if listening {
            s.state = .listening
            let backlog = family == AF_UNIX ? table.unix[inode]?.backlog : type == stream ? info.backlog : table.inet[inode]?.backlog
            s.backlog = Int32(clamping: backlog ?? 128)
        } else if connectedTCP || (s.peer != nil && !(inet && type == stream)) || (family == AF_UNIX && table.unix[inode]?.peer ?? 0 != 0) {
            s.state = .connected
        } else if let l = s.local, family == AF_UNIX ? !l.host.isEmpty : l.port != 0 || (type == Int32(SOCK_RAW.rawValue) && !["0.0.0.0", "::"].contains(l.host)) {
            s.state = .bound
        }
        if connectedTCP {
            s.tcp = try tcp(fd)
        }
        if inet && type != stream && !multicast.isEmpty {
            let joined = Multicast.memberships(fd, family: family, candidates: multicast)
            if !joined.isEmpty { s.memberships = joined }
        }
        if type == Int32(SOCK_RAW.rawValue) {
            let n = waitingPackets(fd)
            if n > 0 { s.droppedPackets = n }
        } else if type == dgram || type == seqpacket {
            let d = try datagrams(fd)
            if !d.isEmpty { s.datagrams = d }
        }
        if family == AF_UNIX && s.state == .connected && !peerInside {
            if type == stream {
                let borrowed = FileDescriptor(owning: fd)
                defer { _ = borrowed.release() }
                let bytes = try UnixSocketInfo.peek(borrowed)
                if !bytes.isEmpty { s.queued = Data(bytes) }
            }
            // A datagram socket connected to a name (a daemon's socket, /dev/log) connects to
            // it again; a stream or seqpacket connection to a process outside is over.
            if type != dgram || s.peer?.host.isEmpty != false { s.state = .peerClosed }
        }
        if peerInside { s.peerInside = true }
        if family == AF_UNIX && type != dgram, let cred = peerCredentials(fd) { s.peerCredentials = cred }
        return s
    }

    /// An established TCP connection as an image holds it (addresses, options, filter, and
    /// its numbers and queues, read in repair mode, which is left again without a window
    /// probe): for a connection built again later in the same place, as `wb explore` does
    /// between runs. The connection must be idle (nothing in flight).
    public static func connectedTCP(_ fd: Int32, defaults: SocketOptions.Defaults) throws -> NetSocketState {
        let (family, type, proto) = identity(fd)
        var s = NetSocketState(family: family, type: type, proto: proto, state: .connected)
        s.local = SocketName.local(fd)
        s.peer = SocketName.peer(fd)
        defaults.prepare(family: family, type: type, proto: proto)
        s.options = SocketOptions.differing(fd, family: family, type: type, proto: proto, connectedTCP: true, defaults: defaults).nilIfEmpty
        s.filter = try filter(fd)
        try check(wb_tcp_repair(fd, 1), "setsockopt(TCP_REPAIR)", "reading a TCP connection in repair mode")
        defer { _ = wb_tcp_repair(fd, -1) }
        s.tcp = try tcp(fd)
        s.peerInside = true
        return s
    }

    /// SO_PEERCRED: pid, uid, gid of whoever made the connection; nil when there is none.
    public static func peerCredentials(_ fd: Int32) -> [Int32]? {
        var cred = [Int32](repeating: 0, count: 3)
        var length = socklen_t(12)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0, length == 12, cred[0] > 0 else { return nil }
        return cred
    }

    /// A netlink socket: its protocol, port id and groups.
    static func netlink(_ fd: Int32, _ base: NetSocketState, defaults: SocketOptions.Defaults) throws -> NetSocketState {
        var s = base
        var raw = [UInt8](repeating: 0, count: 16)
        var length = socklen_t(raw.count)
        let r = raw.withUnsafeMutableBytes { b in b.baseAddress!.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        guard r == 0 else { throw WBError.system(call: "getsockname", errno: errno, what: "reading a netlink socket's port id") }
        let portid = raw.withUnsafeBytes { $0.load(fromByteOffset: 4, as: UInt32.self) }
        // NETLINK_LIST_MEMBERSHIPS: a bitmap of every group joined.
        var words = [UInt32](repeating: 0, count: 64)
        var size = socklen_t(words.count * 4)
        var groups: [UInt32] = []
        if getsockopt(fd, 270 /* SOL_NETLINK */, 9 /* NETLINK_LIST_MEMBERSHIPS */, &words, &size) == 0 {
            for (w, bits) in words.prefix(Int(size) / 4).enumerated() where bits != 0 {
                for b in 0..<32 where bits & (1 << UInt32(b)) != 0 { groups.append(UInt32(w * 32 + b + 1)) }
            }
        }
        s.netlink = NetlinkBinding(portid: portid, groups: groups)
        s.state = portid != 0 ? .bound : .unbound
        s.options = SocketOptions.differing(fd, family: s.family, type: s.type, proto: s.proto, connectedTCP: false, defaults: defaults).nilIfEmpty
        return s
    }

    /// A packet socket: its protocol and the interface it is bound to.
    static func packet(_ fd: Int32, _ base: NetSocketState, defaults: SocketOptions.Defaults) throws -> NetSocketState {
        var s = base
        var raw = [UInt8](repeating: 0, count: 32)
        var length = socklen_t(raw.count)
        let r = raw.withUnsafeMutableBytes { b in b.baseAddress!.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        guard r == 0 else { throw WBError.system(call: "getsockname", errno: errno, what: "reading a packet socket's interface") }
        // struct sockaddr_ll: family, protocol (network order), ifindex, ...
        let proto = raw.withUnsafeBytes { $0.load(fromByteOffset: 2, as: UInt16.self) }
        let index = raw.withUnsafeBytes { $0.load(fromByteOffset: 4, as: Int32.self) }
        var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        let interface = index > 0 && if_indextoname(UInt32(index), &name) != nil ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        s.packet = PacketBinding(proto: proto, interface: interface)
        s.state = index > 0 ? .bound : .unbound
        s.options = SocketOptions.differing(fd, family: s.family, type: s.type, proto: s.proto, connectedTCP: false, defaults: defaults).nilIfEmpty
        s.filter = try filter(fd)
        let n = waitingPackets(fd)
        if n > 0 { s.droppedPackets = n }
        return s
    }

    /// The connection's numbers and queues; the socket is in repair mode. A FIN sent or
    /// received takes a sequence number of its own, which is left out here (see
    /// TCPConnection) and put back by the restore.
    static func tcp(_ fd: Int32) throws -> TCPConnection {
        var c = wb_tcp_conn()
        try check(wb_tcp_read(fd, &c), "getsockopt(TCP_REPAIR)", "reading a TCP connection in repair mode")
        var t = TCPConnection(state: c.state, sendSeq: c.snd_seq, receiveSeq: c.rcv_seq, sendQueue: Data(), unsent: c.unsent,
                              receiveQueue: Data(), mss: c.mss, options: c.options, sendWindowScale: c.snd_wscale,
                              receiveWindowScale: c.rcv_wscale, timestamp: c.timestamp,
                              window: [c.snd_wl1, c.snd_wnd, c.max_window, c.rcv_wnd, c.rcv_wup])
        var outq = c.outq
        if t.finSent {
            t.sendSeq &-= 1
            if outq > 0 { outq -= 1 }
            if t.unsent > 0 { t.unsent -= 1 }
        }
        if t.finReceived { t.receiveSeq &-= 1 }
        func peek(_ queue: Int32, _ count: UInt32) throws -> Data {
            guard count > 0 else { return Data() }
            var bytes = [UInt8](repeating: 0, count: Int(count))
            try check(wb_tcp_peek(fd, queue, &bytes, bytes.count), "recv(MSG_PEEK)", "reading the \(queue == 1 ? "receive" : "send") queue of a TCP connection")
            return Data(bytes)
        }
        t.sendQueue = try peek(2, outq)
        t.receiveQueue = try peek(1, c.inq)
        return t
    }

    /// How many packets wait on a raw or packet socket (which are not restored): counted by
    /// peeking at each where the socket lets a peek start past the first (SO_PEEK_OFF), else
    /// 1 when any waits.
    static func waitingPackets(_ fd: Int32) -> Int {
        if let all = try? datagrams(fd) { return all.count }
        return pending(fd) ? 1 : 0
    }

    /// Datagrams (or seqpacket messages) waiting, with their senders, left where they are.
    static func datagrams(_ fd: Int32) throws -> [Datagram] {
        var out: [Datagram] = []
        var offset: Int32 = 0
        var buffer = [UInt8](repeating: 0, count: 65536 + 4096)
        while out.count < 1_000_000 {
            var length = 0
            var from = [UInt8](repeating: 0, count: 128)
            var fromLength = UInt32(from.count)
            let r = wb_peek_datagram(fd, offset, &buffer, buffer.count, &length, &from, &fromLength)
            if r == EAGAIN { break }
            try check(r, "recvmsg(MSG_PEEK)", "reading the datagrams waiting on a socket")
            // A zero-length datagram does not move the peek offset on: the rest cannot be told apart.
            if length == 0 { throw WBError.refused("a socket holds an empty datagram among its waiting ones, which wb cannot read past") }
            out.append(Datagram(from: SocketAddress.decode(from, length: Int(fromLength)).flatMap { $0.host.isEmpty ? nil : $0 },
                                bytes: Data(buffer.prefix(min(length, buffer.count)))))
            offset += Int32(length)
        }
        return out
    }

    static func filter(_ fd: Int32) throws -> [UInt64]? {
        // Most sockets have none, and most filters are short: a small buffer on the stack
        // first (a thousand sockets are read while their process waits).
        var count: Int32 = 0
        let small: [UInt64]?? = try withUnsafeTemporaryAllocation(of: UInt64.self, capacity: 64) { buffer in
            let r = wb_socket_filter(fd, buffer.baseAddress, 64, &count)
            if r == ENOBUFS { return .none }
            try check(r, "getsockopt(SO_GET_FILTER)", "reading a socket's BPF filter")
            return .some(count > 0 ? Array(buffer.prefix(Int(count))) : nil)
        }
        if let small { return small }
        var code = [UInt64](repeating: 0, count: 4096)
        try check(wb_socket_filter(fd, &code, 4096, &count), "getsockopt(SO_GET_FILTER)", "reading a socket's BPF filter")
        return count > 0 ? Array(code.prefix(Int(count))) : nil
    }
}

extension Array {
    var nilIfEmpty: [Element]? { isEmpty ? nil : self }
}
