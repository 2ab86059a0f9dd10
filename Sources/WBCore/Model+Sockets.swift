import Foundation

/// A socket other than a Unix socket pair both of whose ends are in the image: a TCP or UDP
/// socket of IPv4 or IPv6, or a Unix socket that is named, listening, unconnected or connected
/// to a process outside the image.
public struct NetSocketState: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        /// Never bound nor connected.
        case unbound
        /// Bound to `local`, not connected (a UDP or Unix datagram socket, a TCP socket that
        /// never listened nor connected).
        case bound
        /// Listening on `local` with `backlog`.
        case listening
        /// Connected to `peer` (a TCP connection in `tcp`, a connected datagram socket).
        case connected
        /// A Unix stream or seqpacket socket whose peer is outside the image: restore gives the
        /// process a socket whose peer has closed (end of file after the bytes it had received).
        case peerClosed
    }

    /// AF_UNIX (1), AF_INET (2), AF_INET6 (10).
    public var family: Int32
    /// SOCK_STREAM (1), SOCK_DGRAM (2), SOCK_SEQPACKET (5).
    public var type: Int32
    public var proto: Int32
    public var state: State
    public var local: SocketAddress?
    public var peer: SocketAddress?
    public var backlog: Int32?
    /// Options whose values differ from a new socket's, in the order they are set again.
    public var options: [SocketOption]?
    /// A classic BPF program attached with SO_ATTACH_FILTER: 8-byte instructions.
    public var filter: [UInt64]?
    /// shutdown() directions taken on this end: 1 reading, 2 writing.
    public var shutdown: Int32?
    /// An established TCP connection as repair mode showed it.
    public var tcp: TCPConnection?
    /// Datagrams waiting to be read, oldest first.
    public var datagrams: [Datagram]?
    /// Bytes waiting to be read on a Unix stream or seqpacket socket whose peer is outside.
    public var queued: Data?
    /// The peer is a process of the image (a connection within a tree).
    public var peerInside: Bool?
    /// A netlink socket's port id and multicast groups; a packet socket's protocol and
    /// interface.
    public var netlink: NetlinkBinding?
    public var packet: PacketBinding?
    /// Datagrams or packets that were waiting and are not restored (raw, packet sockets:
    /// traffic the kernel delivered, which cannot be delivered again): their number.
    public var droppedPackets: Int?
    /// Multicast groups the socket joined (UDP, raw IP).
    public var memberships: [MulticastMembership]?
    /// A connected Unix socket's SO_PEERCRED: the pid, uid and gid of the process that made
    /// the connection (or the pair) as it was then.
    public var peerCredentials: [Int32]?

    public init(family: Int32, type: Int32, proto: Int32, state: State) {
        self.family = family; self.type = type; self.proto = proto; self.state = state
    }

    /// "TCP", "UDP", "Unix stream", ... for messages.
    public var kindName: String {
        switch family {
        case 2, 10:
            let v = family == 2 ? "" : "v6"
            return (type == 1 ? "TCP" : type == 2 ? "UDP" : "raw IP") + v
        case 1: return "Unix " + (type == 1 ? "stream" : type == 2 ? "datagram" : type == 5 ? "seqpacket" : "type-\(type)")
        case 16: return "netlink"
        case 17: return "packet"
        default: return "family-\(family)"
        }
    }
}

/// A multicast group a socket joined, with its source filter.
public struct MulticastMembership: Codable, Sendable, Equatable {
    /// The group's address (IP text) and the interface's name.
    public var group: String
    public var interface: String
    /// Filter mode: every source but `sources` (exclude, a plain join when empty), or only
    /// `sources` (include).
    public var exclude: Bool
    public var sources: [String]?
    public init(group: String, interface: String, exclude: Bool, sources: [String]?) {
        self.group = group; self.interface = interface; self.exclude = exclude; self.sources = sources
    }
}

/// What a netlink socket is bound to.
public struct NetlinkBinding: Codable, Sendable, Equatable {
    /// nl_pid: the port id (0: not bound).
    public var portid: UInt32
    /// Multicast groups joined (numbers from 1).
    public var groups: [UInt32]
    public init(portid: UInt32, groups: [UInt32]) { self.portid = portid; self.groups = groups }
}

/// What a packet socket is bound to.
public struct PacketBinding: Codable, Sendable, Equatable {
    /// The Ethernet protocol (network byte order, as socket() and bind() take it).
    public var proto: UInt16
    /// The interface's name (empty: all), found again by name on restore.
    public var interface: String
    public init(proto: UInt16, interface: String) { self.proto = proto; self.interface = interface }
}

/// An address as a socket holds it.
public struct SocketAddress: Codable, Sendable, Equatable, CustomStringConvertible {
    /// For IP: the address as text ("127.0.0.1", "::1"); for Unix: the path, or the abstract
    /// name without its leading NUL; "" for an unnamed Unix socket.
    public var host: String
    public var port: UInt16
    /// A Unix name in the abstract namespace.
    public var abstract: Bool?
    /// A Unix path that was unlinked after the bind: restore binds it and unlinks it again.
    public var unlinked: Bool?
    /// IPv6 scope id.
    public var scope: UInt32?

    public init(host: String, port: UInt16 = 0) { self.host = host; self.port = port }

    public var description: String {
        if abstract == true { return "@\(host)" }
        if port == 0 && !host.contains("." as Character) && !host.contains(":" as Character) { return host.isEmpty ? "(unnamed)" : host + (unlinked == true ? " (unlinked)" : "") }
        return host.contains(":" as Character) ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// One socket option: level, name and value as getsockopt gave it.
public struct SocketOption: Codable, Sendable, Equatable {
    public var level: Int32
    public var name: Int32
    public var value: Data
    public init(level: Int32, name: Int32, value: Data) { self.level = level; self.name = name; self.value = value }
}

/// A datagram waiting on a socket and who sent it.
public struct Datagram: Codable, Sendable, Equatable {
    public var from: SocketAddress?
    public var bytes: Data
    public init(from: SocketAddress?, bytes: Data) { self.from = from; self.bytes = bytes }
}

/// An established TCP connection, read in repair mode.
public struct TCPConnection: Codable, Sendable, Equatable {
    /// TCP state: 1 established, 4 FIN-WAIT-1, 5 FIN-WAIT-2, 8 CLOSE-WAIT, 9 LAST-ACK,
    /// 11 CLOSING (a FIN sent, received, or both: see `finSent`, `finReceived`).
    public var state: UInt32
    /// Sequence numbers after the last data byte of the send queue and of the receive queue
    /// (a FIN's own sequence number is not counted).
    public var sendSeq: UInt32
    public var receiveSeq: UInt32
    /// Bytes sent and not acknowledged, then bytes not sent yet.
    public var sendQueue: Data
    public var unsent: UInt32
    /// Bytes received and not read by the process.
    public var receiveQueue: Data
    public var mss: UInt32
    /// TCPI_OPT_* the connection negotiated (timestamps 1, SACK 2, window scaling 4).
    public var options: UInt32
    public var sendWindowScale: UInt32
    public var receiveWindowScale: UInt32
    public var timestamp: UInt32
    /// snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup (TCP_REPAIR_WINDOW).
    public var window: [UInt32]

    /// This end had shut down writing: its FIN is queued or sent (and acknowledged in
    /// FIN-WAIT-2).
    public var finSent: Bool { [4, 5, 9, 11].contains(state) }
    /// The peer's FIN had arrived: the process reads the queued bytes, then end of file.
    public var finReceived: Bool { [8, 9, 11].contains(state) }
    /// Whether the state is one repair mode can rebuild.
    public var rebuildable: Bool { [1, 4, 5, 8, 9, 11].contains(state) }

    public init(state: UInt32, sendSeq: UInt32, receiveSeq: UInt32, sendQueue: Data, unsent: UInt32, receiveQueue: Data,
                mss: UInt32, options: UInt32, sendWindowScale: UInt32, receiveWindowScale: UInt32, timestamp: UInt32, window: [UInt32]) {
        self.state = state; self.sendSeq = sendSeq; self.receiveSeq = receiveSeq; self.sendQueue = sendQueue; self.unsent = unsent
        self.receiveQueue = receiveQueue; self.mss = mss; self.options = options; self.sendWindowScale = sendWindowScale
        self.receiveWindowScale = receiveWindowScale; self.timestamp = timestamp; self.window = window
    }
}

// MARK: Compact coding
//
// A server's image holds thousands of sockets; decoding each one's options and TCP numbers as
// JSON objects cost a restore about 40 us per connection. They are stored as one base64
// string each instead (layouts in docs/image-format.md), read and bounds-checked here.

/// Little-endian reading of a binary record, failing (never trapping) on a short one.
public struct RecordReader {
    let bytes: [UInt8]
    var at = 0
    init(_ data: Data) { bytes = [UInt8](data) }
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public mutating func u8() throws -> UInt8 {
        guard at + 1 <= bytes.count else { throw RecordReader.short }
        defer { at += 1 }
        return bytes[at]
    }

    public mutating func u16() throws -> UInt16 {
        guard at + 2 <= bytes.count else { throw RecordReader.short }
        defer { at += 2 }
        return UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8
    }

    public mutating func u32() throws -> UInt32 {
        guard at + 4 <= bytes.count else { throw RecordReader.short }
        defer { at += 4 }
        return UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    public mutating func u64() throws -> UInt64 {
        let low = try u32()
        return UInt64(low) | UInt64(try u32()) << 32
    }

    /// `count` bytes as text up to the first NUL (a fixed-size C string field).
    public mutating func text(_ count: Int) throws -> String {
        guard count >= 0, at + count <= bytes.count else { throw RecordReader.short }
        defer { at += count }
        return String(decoding: bytes[at..<at + count].prefix { $0 != 0 }, as: UTF8.self)
    }

    public mutating func skip(_ count: Int) throws {
        guard count >= 0, at + count <= bytes.count else { throw RecordReader.short }
        at += count
    }

    mutating func data(_ count: Int) throws -> Data {
        guard count >= 0, at + count <= bytes.count else { throw RecordReader.short }
        defer { at += count }
        return Data(bytes[at..<at + count])
    }

    var atEnd: Bool { at == bytes.count }

    static let short = DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "a socket record ends too soon"))
}

extension Array where Element == UInt8 {
    mutating func append16(_ v: UInt16) { append(UInt8(v & 0xff)); append(UInt8(v >> 8)) }
    mutating func append32(_ v: UInt32) { for i in 0..<4 { append(UInt8((v >> (8 * UInt32(i))) & 0xff)) } }
}

extension TCPConnection {
    /// Version 1: state, sendSeq, receiveSeq, unsent, mss, options, sendWindowScale,
    /// receiveWindowScale, timestamp, the 5 window words (u32 each, little-endian), then the
    /// send queue and the receive queue, each a u32 length and its bytes.
    public init(from decoder: Decoder) throws {
        var r = RecordReader(try decoder.singleValueContainer().decode(Data.self))
        guard try r.u32() == 1 else { throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown TCP record version")) }
        let n = try (0..<14).map { _ in try r.u32() }
        let send = try r.data(Int(try r.u32())), receive = try r.data(Int(try r.u32()))
        guard r.atEnd else { throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "a TCP record has bytes after its end")) }
        self.init(state: n[0], sendSeq: n[1], receiveSeq: n[2], sendQueue: send, unsent: n[3], receiveQueue: receive, mss: n[4],
                  options: n[5], sendWindowScale: n[6], receiveWindowScale: n[7], timestamp: n[8], window: Array(n[9..<14]))
    }

    public func encode(to encoder: Encoder) throws {
        var b: [UInt8] = []
        b.reserveCapacity(64 + sendQueue.count + receiveQueue.count)
        let w = window + [UInt32](repeating: 0, count: max(0, 5 - window.count))
        for v in [1, state, sendSeq, receiveSeq, unsent, mss, options, sendWindowScale, receiveWindowScale, timestamp] + w.prefix(5) { b.append32(v) }
        b.append32(UInt32(sendQueue.count)); b += sendQueue
        b.append32(UInt32(receiveQueue.count)); b += receiveQueue
        var c = encoder.singleValueContainer()
        try c.encode(Data(b))
    }
}

extension NetSocketState {
    enum CodingKeys: String, CodingKey {
        case family, type, proto, state, local, peer, backlog, options, filter, shutdown, tcp, datagrams, queued, peerInside, netlink, packet, droppedPackets, memberships, peerCredentials
    }

    /// `options` is one base64 string: for each option its level, name and value length (u16
    /// each, little-endian), then the value.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(family: try c.decode(Int32.self, forKey: .family), type: try c.decode(Int32.self, forKey: .type),
                  proto: try c.decode(Int32.self, forKey: .proto), state: try c.decode(State.self, forKey: .state))
        local = try c.decodeIfPresent(SocketAddress.self, forKey: .local)
        peer = try c.decodeIfPresent(SocketAddress.self, forKey: .peer)
        backlog = try c.decodeIfPresent(Int32.self, forKey: .backlog)
        if let blob = try c.decodeIfPresent(Data.self, forKey: .options) {
            var r = RecordReader(blob), list: [SocketOption] = []
            while !r.atEnd {
                let level = Int32(try r.u16()), name = Int32(try r.u16())
                list.append(SocketOption(level: level, name: name, value: try r.data(Int(try r.u16()))))
            }
            options = list
        }
        filter = try c.decodeIfPresent([UInt64].self, forKey: .filter)
        shutdown = try c.decodeIfPresent(Int32.self, forKey: .shutdown)
        tcp = try c.decodeIfPresent(TCPConnection.self, forKey: .tcp)
        datagrams = try c.decodeIfPresent([Datagram].self, forKey: .datagrams)
        queued = try c.decodeIfPresent(Data.self, forKey: .queued)
        peerInside = try c.decodeIfPresent(Bool.self, forKey: .peerInside)
        netlink = try c.decodeIfPresent(NetlinkBinding.self, forKey: .netlink)
        packet = try c.decodeIfPresent(PacketBinding.self, forKey: .packet)
        droppedPackets = try c.decodeIfPresent(Int.self, forKey: .droppedPackets)
        memberships = try c.decodeIfPresent([MulticastMembership].self, forKey: .memberships)
        peerCredentials = try c.decodeIfPresent([Int32].self, forKey: .peerCredentials)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(family, forKey: .family); try c.encode(type, forKey: .type); try c.encode(proto, forKey: .proto)
        try c.encode(state, forKey: .state)
        try c.encodeIfPresent(local, forKey: .local); try c.encodeIfPresent(peer, forKey: .peer)
        try c.encodeIfPresent(backlog, forKey: .backlog)
        if let options {
            var b: [UInt8] = []
            for o in options {
                b.append16(UInt16(truncatingIfNeeded: o.level)); b.append16(UInt16(truncatingIfNeeded: o.name))
                b.append16(UInt16(truncatingIfNeeded: o.value.count)); b += o.value
            }
            try c.encode(Data(b), forKey: .options)
        }
        try c.encodeIfPresent(filter, forKey: .filter); try c.encodeIfPresent(shutdown, forKey: .shutdown)
        try c.encodeIfPresent(tcp, forKey: .tcp); try c.encodeIfPresent(datagrams, forKey: .datagrams)
        try c.encodeIfPresent(queued, forKey: .queued); try c.encodeIfPresent(peerInside, forKey: .peerInside)
        try c.encodeIfPresent(netlink, forKey: .netlink); try c.encodeIfPresent(packet, forKey: .packet)
        try c.encodeIfPresent(droppedPackets, forKey: .droppedPackets)
        try c.encodeIfPresent(memberships, forKey: .memberships)
        try c.encodeIfPresent(peerCredentials, forKey: .peerCredentials)
    }
}
