import CWBNative
import Glibc
import WBCore
import WBSystem

/// What sock_diag tells of the sockets of wb's network namespace, read once per checkpoint.
public struct SocketTable: Sendable {
    public struct Inet: Sendable, Equatable {
        public var state: UInt32
        /// Listener: connections waiting to be accepted, and the backlog.
        public var waiting: UInt32
        public var backlog: UInt32
        public var shutdown: UInt32
        public var local: SocketAddress
        public var peer: SocketAddress
        /// IPPROTO_TCP or IPPROTO_UDP (a connected UDP socket shows state 1 too).
        public var proto: Int32
    }

    public var unix: [UInt64: UnixSocketInfo]
    public var inet: [UInt64: Inet]
    /// Whether TCP and UDP sockets were listed (`inet` may be left empty: the sockets of the
    /// process are then read one by one, which is cheaper than listing a busy host's).
    public var inetListed = false

    public init(unix: [UInt64: UnixSocketInfo] = [:], inet: [UInt64: Inet] = [:]) { self.unix = unix; self.inet = inet }

    /// Every Unix socket of wb's network namespace, and with `inet` every TCP and UDP socket.
    public static func read(inet: Bool = true) throws -> SocketTable {
        var t = SocketTable(unix: try UnixSocketInfo.all())
        t.inetListed = inet
        for family in inet ? [AF_INET, AF_INET6] : [] {
            for proto in [Int32(IPPROTO_TCP), Int32(IPPROTO_UDP)] {
                var cap = 4096
                while true {
                    var buffer = [wb_inet_socket](repeating: wb_inet_socket(), count: cap)
                    var count: Int32 = 0
                    try check(wb_inet_sockets(family, proto, &buffer, Int32(cap), &count), "sock_diag", "listing TCP and UDP sockets")
                    if Int(count) > cap { cap = Int(count) + 256; continue }
                    for s in buffer.prefix(Int(count)) {
                        t.inet[s.inode] = Inet(state: s.state, waiting: s.rqueue, backlog: s.wqueue, shutdown: s.shutdown,
                                               local: address(s.src, s.sport, family: Int32(s.family)),
                                               peer: address(s.dst, s.dport, family: Int32(s.family)), proto: proto)
                    }
                    break
                }
            }
        }
        return t
    }

    private static func address(_ bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8),
                                _ port: UInt16, family: Int32) -> SocketAddress {
        var b = bytes
        var out = [CChar](repeating: 0, count: 64)
        _ = withUnsafeBytes(of: &b) { inet_ntop(family, $0.baseAddress, &out, 64) }
        return SocketAddress(host: String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), port: port)
    }

    /// The established (or half-closed) TCP connections with these two ends, other than the
    /// socket `except`: one of a process still running here (the original of a restored copy)
    /// would take the packets of a connection rebuilt with the same addresses.
    public func connections(local: SocketAddress, peer: SocketAddress, except: UInt64 = 0) -> [UInt64] {
        inet.filter { $0.key != except && $0.value.proto == Int32(IPPROTO_TCP) && [1, 4, 5, 8, 9, 11].contains($0.value.state) && $0.value.local.host == local.host
            && $0.value.local.port == local.port && $0.value.peer.host == peer.host && $0.value.peer.port == peer.port }.map(\.key)
    }

    /// The four addresses of every established (or half-closed) TCP connection, to look many
    /// up at once (`connectionKey`).
    public var connectionKeys: Set<String> {
        Set(inet.values.filter { $0.proto == Int32(IPPROTO_TCP) && [1, 4, 5, 8, 9, 11].contains($0.state) }
            .map { SocketTable.connectionKey(local: $0.local, peer: $0.peer) })
    }

    public static func connectionKey(local: SocketAddress, peer: SocketAddress) -> String {
        "\(local.host)|\(local.port)|\(peer.host)|\(peer.port)"
    }
}
