import CWBNative
import Foundation
import Glibc
import WBCore
import WBNet
import WBSystem
import WBTrace

/// Branching from the set's first settled state: instead of restoring the set again for
/// every run, each member goes back in place (`ProcessRewind`: the pages it wrote, its
/// registers, mappings and fds), and so do the connections between them: one whose queues
/// are as they were is left alone; one a run changed for good (a FIN, a drop, bytes left
/// in it) is built again with TCP repair from its kept state at the same fd of each end,
/// the old one closed silently in repair mode first.
extension MediatedSet {
    /// What `keepBase` keeps.
    final class Base {
        var processes: [ProcessRewind] = []
        /// Each channel end: its connection as it was, and wb's own copy of the socket.
        struct EndState {
            var end: End
            var pid: Int32
            var fd: Int32
            var state: NetSocketState
            var socket: FileDescriptor
        }
        var endStates: [EndState] = []
        var ends: [Int32: [Int32: End]] = [:]
        var senders: [Direction: End] = [:]
        var pending: [Direction: [Message]] = [:]
        var nextSeq: [Direction: Int] = [:]
        var namespaces: [Int32: NetNamespace] = [:]
    }

    /// Keeps the state now (every member settled) as the one `rewind` goes back to. Throws
    /// when a member holds what cannot be kept; the set is left running either way.
    public func keepBase() throws {
        if let m = members.first(where: { $0.ended != nil }) {
            throw WBError.refused("\(m.name) had ended when the set first settled: every run restores the set")
        }
        let alive = all.filter { !$0.tids.isEmpty }
        for t in alive { try t.stopAll(alreadyStopped: heldThreads.filter { t.tids.contains($0) }) }
        defer { for t in alive { t.resumeAll() } }
        let b = Base()
        for t in alive { b.processes.append(try ProcessRewind(t)) }
        let defaults = SocketOptions.Defaults()
        for (pid, byFD) in ends {
            for (fd, end) in byFD {
                let state = try SocketProbe.connectedTCP(end.socket.rawValue, defaults: defaults)
                b.endStates.append(Base.EndState(end: end, pid: pid, fd: fd, state: state, socket: try end.socket.duplicate()))
                if b.namespaces[pid] == nil { b.namespaces[pid] = try NetNamespace.of(pid) }
            }
        }
        b.ends = ends
        b.senders = senders
        b.pending = pending
        b.nextSeq = nextSeq
        base = b
        mappingsTouched = []
    }

    /// Puts every member and connection back to the kept state, in place, ready for the
    /// next run (its members running, waiting as they were). False when the run did what
    /// cannot be undone in place (a member killed, a process or thread of the set gone, a
    /// mapping of the kept state removed): the set must then be restored afresh.
    public func rewind() throws -> Bool {
        guard let b = base else { return false }
        guard b.processes.allSatisfy({ !$0.tracee.tids.isEmpty && Paths.exists("/proc/\($0.tracee.pid)") }) else { return false }
        for p in b.processes {
            var stopped = heldThreads.filter { p.tracee.tids.contains($0) }
            if let c = crashStop, p.tracee.tids.contains(c.tid) { stopped.insert(c.tid) }
            try p.tracee.stopAll(alreadyStopped: stopped)
        }
        // Connections a run changed: every channel one of whose ends is not as it was.
        var changed = Set<Int>()
        for e in b.endStates where !MediatedSet.asKept(e) { changed.insert(e.end.channel) }
        for (d, _) in b.senders where senders[d] == nil { changed.insert(d.channel) }
        let rebuilt = b.endStates.filter { changed.contains($0.end.channel) }
        var replacing: [Int32: [Int32: FileDescriptor]] = [:]
        if !rebuilt.isEmpty {
            // The old connections go silently (repair mode): nothing reaches the peers, and
            // their addresses are free for the new ones, which each member makes itself (in
            // its network namespace) at the same fd.
            for e in rebuilt { _ = wb_tcp_repair(e.socket.rawValue, 1) }
            for p in b.processes {
                let mine = rebuilt.filter { $0.pid == p.tracee.pid }
                guard !mine.isEmpty else { continue }
                let states = Dictionary(mine.map { ($0.fd, $0.state) }, uniquingKeysWith: { a, _ in a })
                replacing[p.tracee.pid] = try p.renew(mine.map(\.fd)) { fd, s in
                    let st = states[fd]!
                    return try s.call(.socket, UInt64(st.family), UInt64(st.type) | UInt64(SOCK_CLOEXEC.rawValue), UInt64(st.proto),
                                      what: "making the socket of fd \(fd) again")
                }
            }
            for e in rebuilt { e.end.socket.close(); e.socket.close() }
            var built: [SocketBuilder.Pending] = []
            for e in rebuilt {
                let builder = SocketBuilder(namespace: b.namespaces[e.pid]!)
                if let p = try builder.build(try replacing[e.pid]![e.fd]!.duplicate(), e.state, tcp: .restore).pending { built.append(p) }
            }
            try SocketBuilder.finish(built)
        }
        for p in b.processes {
            guard try p.rewind(replaced: Set(replacing[p.tracee.pid]?.keys.map { $0 } ?? []),
                               mappingsTouched: mappingsTouched.contains(p.tracee.pid)) else { return false }
        }
        if !rebuilt.isEmpty {
            // wb's copies of the new connections, in the kept ends and senders.
            var renewed: [ObjectIdentifier: End] = [:]
            for i in b.endStates.indices where changed.contains(b.endStates[i].end.channel) {
                let e = b.endStates[i]
                let socket = replacing[e.pid]![e.fd]!
                var end = e.end
                end.socket = try socket.duplicate()
                sockets[end.member] = (sockets[end.member] ?? []).filter { $0 !== e.end.socket } + [end.socket]
                writers[Direction(channel: end.channel, forward: end.forward)] = end.socket
                countOffsets[Direction(channel: end.channel, forward: end.forward)] = nil
                renewed[ObjectIdentifier(e.end.socket)] = end
                b.endStates[i].end = end
                b.endStates[i].socket = try socket.duplicate()
            }
            for (pid, byFD) in b.ends {
                for (fd, end) in byFD { if let n = renewed[ObjectIdentifier(end.socket)] { b.ends[pid]![fd] = n } }
            }
            for (d, end) in b.senders { if let n = renewed[ObjectIdentifier(end.socket)] { b.senders[d] = n } }
        }
        ends = b.ends
        senders = b.senders
        pending = b.pending
        nextSeq = b.nextSeq
        delivered = []
        violation = nil
        crashStop = nil
        dropped = []
        heldThreads = []
        mappingsTouched = []
        for m in members { m.ended = nil; m.crashed = false; m.heldAtExit = false; m.closing = [] }
        for p in b.processes { for tid in p.tracee.tids { try p.tracee.resume(tid, .continue) } }
        return true
    }

    /// The digest of process `t`'s writable memory (`ProcessRewind.memoryDigest`), when it
    /// is kept and its mappings are as they were.
    public func memoryDigest(_ t: Tracee) throws -> UInt64? {
        guard let p = base?.processes.first(where: { $0.tracee === t }) else { return nil }
        return try p.memoryDigest(mappingsTouched: mappingsTouched.contains(t.pid))
    }

    /// Whether a channel end's connection is as it was kept: established, and its queues
    /// holding the same bytes.
    static func asKept(_ e: Base.EndState) -> Bool {
        guard let kept = e.state.tcp, e.socket.rawValue >= 0, SocketProbe.tcpState(e.socket.rawValue).state == 1 else { return false }
        var inq: Int32 = 0, outq: Int32 = 0
        guard wb_socket_ioctl_int(e.socket.rawValue, 0x541B /* SIOCINQ */, &inq) == 0,
              wb_socket_ioctl_int(e.socket.rawValue, 0x5411 /* SIOCOUTQ */, &outq) == 0,
              Int(inq) == kept.receiveQueue.count, Int(outq) == kept.sendQueue.count else { return false }
        guard inq > 0 else { return true }
        var bytes = [UInt8](repeating: 0, count: Int(inq))
        let n = recv(e.socket.rawValue, &bytes, bytes.count, Int32(MSG_PEEK | MSG_DONTWAIT))
        return n == Int(inq) && Data(bytes) == kept.receiveQueue
    }
}
