import Foundation
import Glibc

/// Sockets are checked where the image is decoded like everything else: an address must be
/// one of its family's, a TCP connection's numbers and queues must fit, and the lock name a
/// restore hands to nftables must be the kind wb makes (it goes into an nft command).
extension MetadataValidator {
    static let maxSocketQueue = 1 << 30
    static let maxBPF = 4096                            // BPF_MAXINSNS
    static let socketTypes: Set<Int32> = [1, 2, 3, 5]  // stream, datagram, raw, seqpacket
    static let socketFamilies: Set<Int32> = [1, 2, 10, 16, 17]

    func networkLock() throws {
        guard let name = metadata.networkLock else { return }
        let parts = name.split(separator: "_", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "wb", parts[1] == "hold", parts[2].allSatisfy(\.isASCII), parts[3].allSatisfy(\.isASCII),
              UInt32(parts[2]) != nil, UInt32(parts[3]) != nil else {
            throw bad("networkLock '\(name)' is not a lock wb makes (wb_hold_PID_N)")
        }
    }

    func socket(_ s: FDState, name: String) throws {
        if let sock = s.socket {
            guard [1, 2, 5].contains(sock.type) else { throw bad("\(name) is a socket pair of unknown type \(sock.type)") }
            guard sock.queued.count <= Self.maxSocketQueue, (sock.messages ?? []).count <= 1 << 20,
                  (sock.messages ?? []).allSatisfy({ $0.count <= Self.maxSocketQueue }) else {
                throw bad("\(name) holds more queued bytes or messages than a socket can")
            }
        } else if s.kind == .unixSocket {
            throw bad("\(name) is a socket pair end without its state")
        }
        guard let n = s.net else {
            if s.kind == .socket { throw bad("\(name) is a socket without its state") }
            return
        }
        if s.kind == .placeholder {
            // Only its type is used (the placeholder is a Unix socket of that type).
            guard (0..<64).contains(n.family), (1...10).contains(n.type) else { throw bad("\(name) is the placeholder of a socket of family \(n.family), type \(n.type)") }
            return
        }
        guard Self.socketFamilies.contains(n.family), Self.socketTypes.contains(n.type), (0...65535).contains(n.proto) else {
            throw bad("\(name) is a socket of family \(n.family), type \(n.type), protocol \(n.proto), which wb does not make")
        }
        guard n.family == 1 || n.family == 2 || n.family == 10 || (n.local == nil && n.peer == nil) else {
            throw bad("\(name): a socket of family \(n.family) has no IP or Unix addresses")
        }
        for (label, a) in [("local", n.local), ("peer", n.peer)] {
            if let a { try address(a, family: n.family, "\(name) \(label) address") }
        }
        if let b = n.backlog, !(0...65535).contains(b) { throw bad("\(name) has backlog \(b)") }
        if let how = n.shutdown, !(0...3).contains(how) { throw bad("\(name) is shut down in direction \(how)") }
        for o in n.options ?? [] where o.value.count > 256 || !(0...65535).contains(o.level) || !(0...65535).contains(o.name) {
            throw bad("\(name) has option \(o.level)/\(o.name) of \(o.value.count) bytes")
        }
        if let f = n.filter, f.isEmpty || f.count > Self.maxBPF { throw bad("\(name) has a BPF filter of \(f.count) instructions (1-\(Self.maxBPF))") }
        let dgrams = n.datagrams ?? []
        guard dgrams.count <= 1 << 20, dgrams.allSatisfy({ $0.bytes.count <= 1 << 20 }), (n.queued?.count ?? 0) <= Self.maxSocketQueue else {
            throw bad("\(name) holds more waiting data than a socket can")
        }
        for d in dgrams { if let from = d.from { try address(from, family: n.family, "\(name) datagram sender") } }
        if let nl = n.netlink, n.family != 16 || nl.groups.count > 4096 || nl.groups.contains(where: { $0 == 0 || $0 > 1 << 16 }) {
            throw bad("\(name) has a netlink binding it cannot have")
        }
        for m in n.memberships ?? [] {
            var group = [UInt8](repeating: 0, count: 16)
            guard n.family == 2 || n.family == 10, inet_pton(n.family, m.group, &group) == 1, (m.sources ?? []).count <= 64,
                  (m.sources ?? []).allSatisfy({ inet_pton(n.family, $0, &group) == 1 }) else {
                throw bad("\(name) has a multicast membership (\(m.group)) that is not one of its family's")
            }
            try text(m.interface, "\(name) multicast interface", limit: 15)
        }
        if let c = n.peerCredentials, c.count != 3 || c[0] <= 0 || c[0] > Self.maxPid {
            throw bad("\(name) has peer credentials \(c) (a pid, a uid and a gid)")
        }
        if let p = n.packet {
            guard n.family == 17 else { throw bad("\(name) has a packet binding but is of family \(n.family)") }
            try text(p.interface, "\(name) interface", limit: 15)
        }
        if let t = n.tcp {
            guard n.family == 2 || n.family == 10, n.type == 1, n.state == .connected, n.local != nil, n.peer != nil else {
                throw bad("\(name) has a TCP connection but is not a connected TCP socket with both addresses")
            }
            guard t.rebuildable, t.window.count == 5, t.sendQueue.count <= Self.maxSocketQueue, t.receiveQueue.count <= Self.maxSocketQueue,
                  Int(t.unsent) <= t.sendQueue.count, t.sendWindowScale <= 14, t.receiveWindowScale <= 14, t.mss <= 65535 else {
                throw bad("\(name) has a TCP connection in state \(t.state) with queues, window or options out of range")
            }
        }
    }

    /// An address of `family`: IP text inet_pton reads, a Unix name that fits sun_path.
    private func address(_ a: SocketAddress, family: Int32, _ field: String) throws {
        switch family {
        case 2, 10:
            var bytes = [UInt8](repeating: 0, count: 16)
            guard inet_pton(family, a.host, &bytes) == 1 else { throw bad("\(field) '\(a.host)' is not an IP\(family == 2 ? "v4" : "v6") address") }
        case 1:
            guard a.host.utf8.count < 108, !a.host.utf8.contains(0) || a.abstract == true, a.port == 0 else {
                throw bad("\(field) is not a Unix socket name (at most 107 bytes)")
            }
        default:
            break
        }
    }
}
