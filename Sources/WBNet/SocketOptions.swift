import Foundation
import Glibc
import WBCore
import WBSystem

/// The socket options wb saves and sets again, in the order they are set (before bind: the
/// ones bind depends on come first). Only options whose value differs from a new socket's of
/// the same family, type and protocol go into the image.
public enum SocketOptions {
    struct Option {
        var level: Int32
        var name: Int32
        var label: String
        /// Bytes of the value (4 for an int; 16 for a timeval; a string's room).
        var size: Int
        /// Families it applies to (empty: all).
        var families: Set<Int32> = []
        /// Types it applies to (empty: all).
        var types: Set<Int32> = []
        /// Left alone on a connected TCP socket, where the kernel tunes it itself.
        var tunedOnConnections = false
        /// Acts only before a socket is connected or listens (bind, connect): not read from
        /// a TCP connection.
        var boundOnly = false
        /// Not on TCP (the kernel has no such state for it).
        var notTCP = false
    }

    static let sol = SOL_SOCKET, ip = Int32(IPPROTO_IP), ip6 = Int32(IPPROTO_IPV6), tcp = Int32(IPPROTO_TCP)
    static let inet: Set<Int32> = [AF_INET, AF_INET6]

    static let all: [Option] = [
        Option(level: sol, name: SO_REUSEADDR, label: "SO_REUSEADDR", size: 4),
        Option(level: sol, name: SO_REUSEPORT, label: "SO_REUSEPORT", size: 4, boundOnly: true),
        Option(level: ip6, name: 26 /* IPV6_V6ONLY */, label: "IPV6_V6ONLY", size: 4, families: [AF_INET6], boundOnly: true),
        Option(level: ip, name: 15 /* IP_FREEBIND */, label: "IP_FREEBIND", size: 4, families: inet, boundOnly: true),
        Option(level: ip, name: 19 /* IP_TRANSPARENT */, label: "IP_TRANSPARENT", size: 4, families: inet),
        Option(level: sol, name: SO_BINDTODEVICE, label: "SO_BINDTODEVICE", size: 16),
        Option(level: sol, name: SO_KEEPALIVE, label: "SO_KEEPALIVE", size: 4),
        Option(level: sol, name: SO_BROADCAST, label: "SO_BROADCAST", size: 4, types: [dgram, raw]),
        Option(level: sol, name: 32 /* SO_SNDBUFFORCE via SO_SNDBUF */, label: "SO_SNDBUF", size: 4, tunedOnConnections: true),
        Option(level: sol, name: 33 /* SO_RCVBUFFORCE via SO_RCVBUF */, label: "SO_RCVBUF", size: 4, tunedOnConnections: true),
        Option(level: sol, name: SO_OOBINLINE, label: "SO_OOBINLINE", size: 4),
        Option(level: sol, name: SO_LINGER, label: "SO_LINGER", size: 8),
        Option(level: sol, name: SO_PASSCRED, label: "SO_PASSCRED", size: 4, families: [AF_UNIX, 16]),
        Option(level: sol, name: SO_RCVLOWAT, label: "SO_RCVLOWAT", size: 4),
        Option(level: sol, name: SO_RCVTIMEO, label: "SO_RCVTIMEO", size: 16),
        Option(level: sol, name: SO_SNDTIMEO, label: "SO_SNDTIMEO", size: 16),
        Option(level: sol, name: SO_TIMESTAMP, label: "SO_TIMESTAMP", size: 4),
        Option(level: sol, name: 35 /* SO_TIMESTAMPNS */, label: "SO_TIMESTAMPNS", size: 4),
        Option(level: sol, name: 36 /* SO_MARK */, label: "SO_MARK", size: 4),
        Option(level: sol, name: 40 /* SO_RXQ_OVFL */, label: "SO_RXQ_OVFL", size: 4, types: [dgram, raw, seqpacket]),
        Option(level: sol, name: 42 /* SO_PEEK_OFF */, label: "SO_PEEK_OFF", size: 4, families: [AF_UNIX, AF_INET, AF_INET6], types: [stream, dgram, seqpacket], notTCP: true),
        Option(level: sol, name: 34 /* SO_PASSSEC */, label: "SO_PASSSEC", size: 4, families: [AF_UNIX, 16]),
        Option(level: sol, name: 5 /* SO_DONTROUTE */, label: "SO_DONTROUTE", size: 4, families: inet),
        Option(level: ip, name: 1 /* IP_TOS */, label: "IP_TOS", size: 4, families: [AF_INET]),
        Option(level: ip, name: 2 /* IP_TTL */, label: "IP_TTL", size: 4, families: [AF_INET]),
        Option(level: ip, name: 8 /* IP_PKTINFO */, label: "IP_PKTINFO", size: 4, families: [AF_INET], types: [dgram, raw]),
        Option(level: ip, name: 10 /* IP_MTU_DISCOVER */, label: "IP_MTU_DISCOVER", size: 4, families: [AF_INET]),
        Option(level: ip, name: 11 /* IP_RECVERR */, label: "IP_RECVERR", size: 4, families: [AF_INET]),
        Option(level: ip, name: 12 /* IP_RECVTTL */, label: "IP_RECVTTL", size: 4, families: [AF_INET], types: [dgram, raw]),
        Option(level: ip, name: 13 /* IP_RECVTOS */, label: "IP_RECVTOS", size: 4, families: [AF_INET], types: [dgram, raw]),
        Option(level: ip, name: 20 /* IP_RECVORIGDSTADDR */, label: "IP_RECVORIGDSTADDR", size: 4, families: [AF_INET], types: [dgram, raw]),
        Option(level: ip, name: 24 /* IP_BIND_ADDRESS_NO_PORT */, label: "IP_BIND_ADDRESS_NO_PORT", size: 4, families: inet, boundOnly: true),
        Option(level: ip, name: 33 /* IP_MULTICAST_TTL */, label: "IP_MULTICAST_TTL", size: 4, families: [AF_INET], types: [dgram]),
        Option(level: ip, name: 34 /* IP_MULTICAST_LOOP */, label: "IP_MULTICAST_LOOP", size: 4, families: [AF_INET], types: [dgram]),
        Option(level: ip, name: 49 /* IP_MULTICAST_ALL */, label: "IP_MULTICAST_ALL", size: 4, families: [AF_INET], types: [dgram, raw]),
        Option(level: ip, name: 6 /* IP_RECVOPTS */, label: "IP_RECVOPTS", size: 4, families: [AF_INET], types: [dgram, raw]),
        Option(level: ip6, name: 16 /* IPV6_UNICAST_HOPS */, label: "IPV6_UNICAST_HOPS", size: 4, families: [AF_INET6]),
        Option(level: ip6, name: 18 /* IPV6_MULTICAST_HOPS */, label: "IPV6_MULTICAST_HOPS", size: 4, families: [AF_INET6], types: [dgram]),
        Option(level: ip6, name: 19 /* IPV6_MULTICAST_LOOP */, label: "IPV6_MULTICAST_LOOP", size: 4, families: [AF_INET6], types: [dgram]),
        Option(level: ip6, name: 23 /* IPV6_MTU_DISCOVER */, label: "IPV6_MTU_DISCOVER", size: 4, families: [AF_INET6]),
        Option(level: ip6, name: 25 /* IPV6_RECVERR */, label: "IPV6_RECVERR", size: 4, families: [AF_INET6]),
        Option(level: ip6, name: 49 /* IPV6_RECVPKTINFO */, label: "IPV6_RECVPKTINFO", size: 4, families: [AF_INET6], types: [dgram, raw]),
        Option(level: ip6, name: 67 /* IPV6_TCLASS */, label: "IPV6_TCLASS", size: 4, families: [AF_INET6]),
        Option(level: ip6, name: 51 /* IPV6_RECVHOPLIMIT */, label: "IPV6_RECVHOPLIMIT", size: 4, families: [AF_INET6], types: [dgram, raw]),
        Option(level: ip6, name: 66 /* IPV6_RECVTCLASS */, label: "IPV6_RECVTCLASS", size: 4, families: [AF_INET6], types: [dgram, raw]),
        Option(level: tcp, name: 1 /* TCP_NODELAY */, label: "TCP_NODELAY", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 3 /* TCP_CORK */, label: "TCP_CORK", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 4 /* TCP_KEEPIDLE */, label: "TCP_KEEPIDLE", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 5 /* TCP_KEEPINTVL */, label: "TCP_KEEPINTVL", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 6 /* TCP_KEEPCNT */, label: "TCP_KEEPCNT", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 7 /* TCP_SYNCNT */, label: "TCP_SYNCNT", size: 4, families: inet, types: [stream], boundOnly: true),
        Option(level: tcp, name: 8 /* TCP_LINGER2 */, label: "TCP_LINGER2", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 9 /* TCP_DEFER_ACCEPT */, label: "TCP_DEFER_ACCEPT", size: 4, families: inet, types: [stream], boundOnly: true),
        Option(level: tcp, name: 13 /* TCP_CONGESTION */, label: "TCP_CONGESTION", size: 16, families: inet, types: [stream]),
        Option(level: tcp, name: 18 /* TCP_USER_TIMEOUT */, label: "TCP_USER_TIMEOUT", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 23 /* TCP_FASTOPEN */, label: "TCP_FASTOPEN", size: 4, families: inet, types: [stream], boundOnly: true),
        Option(level: tcp, name: 25 /* TCP_NOTSENT_LOWAT */, label: "TCP_NOTSENT_LOWAT", size: 4, families: inet, types: [stream]),
        // The MSS asked for (a connection's own comes back with repair mode).
        Option(level: tcp, name: 2 /* TCP_MAXSEG */, label: "TCP_MAXSEG", size: 4, families: inet, types: [stream], boundOnly: true),
        Option(level: tcp, name: 10 /* TCP_WINDOW_CLAMP */, label: "TCP_WINDOW_CLAMP", size: 4, families: inet, types: [stream], tunedOnConnections: true),
        Option(level: tcp, name: 16 /* TCP_THIN_LINEAR_TIMEOUTS */, label: "TCP_THIN_LINEAR_TIMEOUTS", size: 4, families: inet, types: [stream]),
        // Per-socket timers and the received-bytes count on each recvmsg (Linux 6.15 and 4.18;
        // an older kernel has none to read).
        Option(level: tcp, name: 36 /* TCP_INQ */, label: "TCP_INQ", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 37 /* TCP_TX_DELAY */, label: "TCP_TX_DELAY", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 44 /* TCP_RTO_MAX_MS */, label: "TCP_RTO_MAX_MS", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 45 /* TCP_RTO_MIN_US */, label: "TCP_RTO_MIN_US", size: 4, families: inet, types: [stream]),
        Option(level: tcp, name: 46 /* TCP_DELACK_MAX_US */, label: "TCP_DELACK_MAX_US", size: 4, families: inet, types: [stream]),
        // Last: IP_TOS sets the priority too.
        Option(level: sol, name: SO_PRIORITY, label: "SO_PRIORITY", size: 4),
    ]

    /// The get side of an option (SO_SNDBUFFORCE is read as SO_SNDBUF).
    static func readName(_ o: Option) -> Int32 {
        o.level == sol && o.name == 32 ? SO_SNDBUF : o.level == sol && o.name == 33 ? SO_RCVBUF : o.name
    }

    static func label(level: Int32, name: Int32) -> String {
        all.first { $0.level == level && $0.name == name }?.label ?? "option \(level)/\(name)"
    }

    static func applies(_ o: Option, family: Int32, type: Int32) -> Bool {
        (o.families.isEmpty || o.families.contains(family)) && (o.types.isEmpty || o.types.contains(type))
    }

    static func read(_ fd: Int32, _ o: Option) -> Data? {
        var buffer = [UInt8](repeating: 0, count: o.size)
        var length = socklen_t(o.size)
        guard getsockopt(fd, o.level, readName(o), &buffer, &length) == 0 else { return nil }
        return Data(buffer.prefix(Int(length)))
    }

    /// The options of `fd` that differ from those of a new socket like it (`defaults`).
    static func differing(_ fd: Int32, family: Int32, type: Int32, proto: Int32, connectedTCP: Bool, defaults: Defaults) -> [SocketOption] {
        let baseline = defaults.values(family: family, type: type, proto: proto)
        var out: [SocketOption] = []
        let tcp = (family == AF_INET || family == AF_INET6) && type == stream
        // Read into one buffer; only a value that differs becomes Data (a thousand sockets'
        // thirty options each are read while the process waits).
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { buffer in
            for (i, o) in all.enumerated() where applies(o, family: family, type: type) && !(connectedTCP && (o.tunedOnConnections || o.boundOnly))
                && !(tcp && o.notTCP) {
                var length = socklen_t(o.size)
                guard getsockopt(fd, o.level, readName(o), buffer.baseAddress, &length) == 0 else { continue }
                let value = UnsafeRawBufferPointer(start: buffer.baseAddress, count: Int(length))
                if let base = baseline[i], base.elementsEqual(value) { continue }
                out.append(SocketOption(level: o.level, name: o.name, value: Data(value)))
            }
        }
        return out
    }

    /// A new socket's option values (by index in `all`) for each kind of socket a capture
    /// meets: the kernel's defaults, read once per family, type and protocol. Filled on one
    /// thread (`prepare`) before sockets are read on several (which only look values up).
    public final class Defaults: @unchecked Sendable {
        private var known: [String: [Int: Data]] = [:]

        public init() {}

        /// Reads the defaults for the kind of socket `fd` is, if not read yet.
        public func prepare(for fd: Int32) {
            let (family, type, proto) = SocketProbe.identity(fd)
            prepare(family: family, type: type, proto: proto)
        }

        /// Reads the defaults for sockets of this family, type and protocol, if not read yet.
        public func prepare(family: Int32, type: Int32, proto: Int32) {
            let key = "\(family)/\(type)/\(proto)"
            guard known[key] == nil else { return }
            var values: [Int: Data] = [:]
            let fresh = socket(family, type | cloexec, proto)
            if fresh >= 0 {
                for (i, o) in all.enumerated() where applies(o, family: family, type: type) { values[i] = read(fresh, o) }
                close(fresh)
            }
            known[key] = values
        }

        func values(family: Int32, type: Int32, proto: Int32) -> [Int: Data] { known["\(family)/\(type)/\(proto)"] ?? [:] }
    }

    /// Sets `option` on `fd` again.
    static func set(_ fd: Int32, _ option: SocketOption) throws {
        var value = [UInt8](option.value)
        // The kernel doubles the buffer sizes it is given and reports the doubled value.
        if option.level == sol && (option.name == 32 || option.name == 33) && value.count == 4 {
            let v = value.withUnsafeBytes { $0.load(as: Int32.self) } / 2
            value = withUnsafeBytes(of: v) { Array($0) }
        }
        if option.level == tcp && option.name == 13 { value = Array(value.prefix { $0 != 0 }) }
        if option.level == sol && option.name == SO_BINDTODEVICE { value = Array(value.prefix { $0 != 0 }) }
        let r = value.withUnsafeBytes { setsockopt(fd, option.level, option.name, $0.baseAddress, socklen_t($0.count)) }
        if r != 0 {
            throw WBError.system(call: "setsockopt", errno: errno, what: "setting \(label(level: option.level, name: option.name))")
        }
    }
}
