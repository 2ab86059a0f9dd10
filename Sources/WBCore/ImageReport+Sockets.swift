import Foundation

/// The sockets of an image as `wb inspect` lists them: family and type, state, addresses,
/// queued data, and whether the peer is in the image.
extension ImageReport {
    public struct SocketRow: Encodable {
        /// The process holding it (for an image of a tree) and its fd.
        var pid: Int32?, fd: Int32
        var kind: String, state: String
        var local: String?, peer: String?
        /// For a TCP connection: its TCP state, bytes in the send queue (sent and not
        /// acknowledged, then not sent yet) and in the receive queue.
        var tcpState: String?, sendQueueBytes: Int?, unsentBytes: Int?, receiveQueueBytes: Int?
        /// Bytes or messages waiting to be read.
        var queuedBytes: Int?, datagrams: Int?
        /// The other end is a socket of the image (comes back connected whatever --tcp says).
        var peerInside: Bool
        var backlog: Int32?, options: [String]?, filterInstructions: Int?, shutdown: String?
        /// Multicast groups joined: "group on interface" (with its source filter).
        var multicast: [String]?
        var note: String?
    }

    static let tcpStateNames = ["", "ESTABLISHED", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT", "CLOSED",
                                "CLOSE-WAIT", "LAST-ACK", "LISTEN", "CLOSING"]

    static func socketRows(_ m: ImageMetadata) -> [SocketRow] {
        let tree = m.descendants?.isEmpty == false
        var rows: [SocketRow] = []
        for p in m.processes {
            for f in p.fds {
                guard f.kind == .socket || f.kind == .unixSocket || (f.kind == .placeholder && f.net != nil) else { continue }
                let n = f.net ?? NetSocketState(family: 1, type: f.socket?.type ?? 1, proto: 0, state: .connected)
                // Unnamed Unix ends and an unbound socket's 0.0.0.0:0 have no address to show.
                func shown(_ a: SocketAddress?) -> String? {
                    guard let a, !a.host.isEmpty, !(a.port == 0 && ["0.0.0.0", "::"].contains(a.host)) else { return nil }
                    return a.description
                }
                var row = SocketRow(pid: tree ? p.pid : nil, fd: f.fd, kind: n.kindName, state: n.state.rawValue,
                                    local: shown(n.local), peer: shown(n.peer),
                                    peerInside: n.peerInside == true || f.kind == .unixSocket,
                                    backlog: n.backlog, filterInstructions: n.filter?.count)
                if f.kind == .unixSocket {
                    row.state = "pair"
                    let s = f.socket
                    if let q = s?.queued, !q.isEmpty { row.queuedBytes = q.count }
                    if let msgs = s?.messages, !msgs.isEmpty { row.datagrams = msgs.count }
                }
                if f.kind == .placeholder { row.state = "placeholder"; row.note = f.note }
                if let t = n.tcp {
                    row.tcpState = tcpStateNames[min(Int(t.state), tcpStateNames.count - 1)]
                    row.sendQueueBytes = t.sendQueue.count
                    row.unsentBytes = Int(t.unsent)
                    row.receiveQueueBytes = t.receiveQueue.count
                }
                if let q = n.queued, !q.isEmpty { row.queuedBytes = q.count }
                if let d = n.datagrams, !d.isEmpty { row.datagrams = d.count }
                if let nl = n.netlink { row.local = "port id \(nl.portid)" + (nl.groups.isEmpty ? "" : ", groups \(nl.groups.map(String.init).joined(separator: ","))") }
                if let pk = n.packet { row.local = (pk.interface.isEmpty ? "all interfaces" : pk.interface) + String(format: ", protocol 0x%04x", UInt16(bigEndian: pk.proto)) }
                if let o = n.options, !o.isEmpty { row.options = o.map { "\($0.level)/\($0.name)" } }
                if let how = n.shutdown, how != 0 { row.shutdown = how == 3 ? "both" : how == 1 ? "reading" : "writing" }
                if let m = n.memberships, !m.isEmpty {
                    row.multicast = m.map { g in "\(g.group) on \(g.interface)" + (g.sources.map { (g.exclude ? " except " : " from ") + $0.joined(separator: ",") } ?? "") }
                }
                if n.type == 3, let l = n.local { row.local = l.host + " (protocol \(n.proto))" }
                rows.append(row)
            }
        }
        return rows
    }

    func socketLines() -> [String] {
        guard !sockets.isEmpty else { return [] }
        var out = ["", "SOCKETS (\(sockets.count))"]
        for s in sockets {
            var line = "  " + (s.pid.map { "pid \($0) " } ?? "") + "fd \(s.fd) \(s.kind) \(s.tcpState ?? s.state)"
            if let l = s.local { line += " \(l)" }
            if let p = s.peer { line += " -> \(p)" }
            line += s.peerInside ? " (peer in the image)" : s.peer != nil && s.state != "listening" ? " (peer outside)" : ""
            if let b = s.backlog { line += ", backlog \(b)" }
            if let q = s.sendQueueBytes, let r = s.receiveQueueBytes { line += ", queued \(q) out (\(s.unsentBytes ?? 0) unsent), \(r) in" }
            if let q = s.queuedBytes { line += ", \(q) bytes waiting" }
            if let d = s.datagrams { line += ", \(d) message\(d == 1 ? "" : "s") waiting" }
            if let sh = s.shutdown { line += ", shut down for \(sh)" }
            if let f = s.filterInstructions { line += ", BPF filter of \(f)" }
            if let o = s.options { line += ", \(o.count) option\(o.count == 1 ? "" : "s") set" }
            if let m = s.multicast { line += ", member of \(m.joined(separator: "; "))" }
            if let n = s.note { line += " (\(n))" }
            out.append(line)
        }
        return out
    }
}
