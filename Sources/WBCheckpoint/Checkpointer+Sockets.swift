import Foundation
import Glibc
import WBNet
import WBTrace

/// The TCP connections of one checkpoint (one process, or a tree) held still while they are
/// read: one lock for all of them (NetworkLock), made when the first connection is met.
final class HeldConnections {
    let targets: [Int32]
    /// The checkpoint kills the processes: if wb dies once they are gone, the hold stays.
    let killing: Bool
    private(set) var lock: NetworkLock?
    /// Let go or kept: nothing left to do.
    private(set) var settled = false

    init(targets: [Int32], killing: Bool) { self.targets = targets; self.killing = killing }

    /// Makes the (empty) lock and its guard: done before the process is stopped, when its
    /// preflight saw connections, so the stop pays only for adding them.
    func prepare() throws {
        if lock == nil {
            let name = "wb_hold_\(targets.first ?? 0)_\(UInt32.random(in: 0...UInt32.max) & 0xffffff)"
            lock = try NetworkLock(name: name, targets: targets, keepIfGone: killing)
        }
    }

    func hold(_ sockets: [(socket: FileDescriptor, pid: Int32, fd: Int32, flow: NetworkLock.Flow)]) throws {
        guard !sockets.isEmpty else { return }
        try prepare()
        try lock!.hold(sockets)
    }

    /// New connections to these TCP ports are held from now on.
    func holdNewConnections(ports: [UInt16]) throws {
        try prepare()
        try lock!.holdNewConnections(ports: ports)
    }

    /// The connections go on (the process runs again): repair mode off, the lock lifted.
    func letGo() throws {
        guard !settled else { return }
        settled = true
        try lock?.letGo()
    }

    /// The process was killed: the connections stay held for the restore.
    func keep() {
        guard !settled else { return }
        settled = true
        lock?.keep()
    }
}

extension Checkpointer {
    /// The sockets the process holds, looked at before it is touched: a pair whose other
    /// end the image holds too is `.unixSocket`; any other socket wb can save is `.socket`
    /// (its state read at the final stop); the rest is refused by name.
    func classifySocket(_ plan: inout FDPlan, inode: UInt64, scope: SocketProbe.Scope, copy: FileDescriptor?) {
        // A pair: each end's peer is the other (a datagram socket connected to a bound one
        // that takes datagrams from anyone is not one).
        if let s = scope.table.unix[inode], s.peer != 0, scope.held.contains(s.peer), scope.table.unix[s.peer]?.peer == inode {
            plan.kind = .unixSocket
            plan.socket = s
            if let why = inFlight(plan.fd) { plan.unsupported = "\(why) (\(plan.link))" }
            return
        }
        plan.kind = .socket
        guard let copy else {
            plan.unsupported = "a socket wb cannot read (\(plan.link))"
            return
        }
        // Only a Unix socket carries fds (its fdinfo counts them).
        let inFlight = scope.table.unix[inode] != nil ? inFlightCount(plan.fd) : 0
        if let why = SocketProbe.unsupported(copy.rawValue, inode: inode, scope: scope, inFlightFDs: inFlight) {
            plan.unsupported = "\(why) (\(plan.link))"
        }
    }

    /// wb's copy of the process's socket `fd` (pidfd_getfd), taken once per checkpoint. A
    /// copy taken earlier (while the process ran) is still that fd's socket when the fd
    /// links to the same socket inode: the copy keeps the socket, and so its inode, alive.
    /// Copies of many sockets at once (taken on every core): `socketCopy` of each.
    func socketCopies(_ plans: [FDPlan]) throws -> [FileDescriptor] {
        if processHandle == nil { processHandle = try ProcessHandle(pid: pid) }
        let handle = processHandle!
        let missing = plans.filter { p in socketCopies[p.fd].map { $0.link != p.link } ?? true }
        let taken = try Parallel.map(missing.count) { i in try handle.take(missing[i].fd) }
        for (p, c) in zip(missing, taken) { socketCopies[p.fd] = (c, p.link) }
        return try plans.map { try socketCopy($0.fd, link: $0.link) }
    }

    func socketCopy(_ fd: Int32, link: String? = nil) throws -> FileDescriptor {
        if let c = socketCopies[fd] {
            if let link, link != c.link {
                socketCopies[fd] = nil
            } else {
                return c.copy
            }
        }
        if processHandle == nil { processHandle = try ProcessHandle(pid: pid) }
        let c = try processHandle!.take(fd)
        socketCopies[fd] = (c, link ?? ((try? Paths.readLink("/proc/\(pid)/fd/\(fd)")) ?? ""))
        return c
    }

    /// fds waiting in a Unix socket's queue (SCM_RIGHTS), from fdinfo's scm_fds.
    private func inFlightCount(_ fd: Int32) -> Int {
        let text = (try? Paths.readText("/proc/\(pid)/fdinfo/\(fd)")) ?? ""
        return Int(ProcFS.parseFDInfo(text).extra["scm_fds"] ?? "0") ?? 0
    }

    private func inFlight(_ fd: Int32) -> String? {
        let n = inFlightCount(fd)
        return n > 0 ? "a Unix socket with \(n) fd\(n == 1 ? "" : "s") in flight in its queue (SCM_RIGHTS), which wb does not restore" : nil
    }

    /// Puts the process's TCP connections on hold (packets dropped, sockets in repair mode)
    /// before any of them is read. Each is found from its copy (TCP_INFO, its two names).
    func holdConnections(_ plan: Preflight) throws {
        let candidates = plan.fds.filter { $0.kind == .socket && placeholders[$0.fd] == nil }
        let copies = try socketCopies(candidates)
        let flows = try Parallel.map(copies.count) { i -> NetworkLock.Flow? in
            SocketProbe.connection(copies[i].rawValue)
        }
        var sockets: [(socket: FileDescriptor, pid: Int32, fd: Int32, flow: NetworkLock.Flow)] = []
        for (i, flow) in flows.enumerated() {
            if let flow { sockets.append((copies[i], pid, candidates[i].fd, flow)) }
        }
        guard !sockets.isEmpty else { return }
        if connections == nil { connections = HeldConnections(targets: [pid], killing: options.after == .kill) }
        try withContext("holding the TCP connections of pid \(pid)") { try connections!.hold(sockets) }
    }

    /// The state of every `.socket` fd for the image, by fd, read on every core (each from a
    /// copy of its own); their TCP connections are on hold already. `embryos`: clients
    /// waiting in the accept queue of a Unix listener the image holds (a client of the image
    /// connected to one connects to it again on restore).
    func captureSockets(_ plan: Preflight, table: SocketTable, embryos: [UInt64: UInt64]) throws -> [Int32: NetSocketState] {
        let wanted = plan.fds.filter { $0.kind == .socket && placeholders[$0.fd] == nil }
        let copies = try socketCopies(wanted).map(\.rawValue)
        // Each socket's family, type, protocol and whether it listens, on every core.
        let known = try Parallel.map(copies.count) { i in
            (identity: SocketProbe.identity(copies[i]), listening: SocketProbe.int(copies[i], SOL_SOCKET, SO_ACCEPTCONN) == 1)
        }
        // A connection still waiting to be accepted cannot be put back in the queue.
        let waiting = zip(wanted, zip(copies, known)).compactMap { f, ck -> String? in
            guard ck.1.listening, ck.1.identity.type == Int32(SOCK_STREAM.rawValue) else { return nil }
            let n = SocketProbe.tcpState(ck.0).waiting
            return n > 0 ? "fd \(f.fd) is a TCP listener with \(n) connection\(n == 1 ? "" : "s") waiting to be accepted (\(f.link))" : nil
        }
        if !waiting.isEmpty {
            throw WBError.refused("pid \(pid) cannot be checkpointed: \(waiting.joined(separator: "; ")), still after new connections were held for 2 s: it does not accept them (checkpoint again once it has). Nothing was changed")
        }
        // Everything the threads share is made here first, on this thread: the defaults of
        // each kind of socket met.
        var kinds = Set<[Int32]>()
        for k in known where kinds.insert([k.identity.family, k.identity.type, k.identity.proto]).inserted {
            socketDefaults.prepare(family: k.identity.family, type: k.identity.type, proto: k.identity.proto)
        }
        let defaults = socketDefaults
        // The multicast groups joined here, each socket then asked about each.
        let datagramIP = known.contains { k in
            (k.identity.family == AF_INET || k.identity.family == AF_INET6) && k.identity.type != Int32(SOCK_STREAM.rawValue)
        }
        let multicast = datagramIP ? Multicast.candidates() : []
        let states = try Parallel.map(wanted.count) { i in
            let f = wanted[i], inode = Checkpointer.socketInode(f.link) ?? 0
            return try withContext("reading fd \(f.fd) (\(f.link))") {
                try SocketProbe.capture(copies[i], inode: inode, table: table, peerInside: embryos[inode] != nil, defaults: defaults,
                                        multicast: multicast, known: known[i])
            }
        }
        return Dictionary(uniqueKeysWithValues: zip(wanted.map(\.fd), states))
    }

    /// Marks the TCP connections both of whose ends the image holds (in one process or two
    /// of a tree): they come back connected to each other whatever the restore's policy for
    /// peers outside.
    static func linkConnections(_ states: inout [ProcessState]) {
        func key(_ a: SocketAddress?, _ b: SocketAddress?) -> String? {
            guard let a, let b else { return nil }
            return "\(a.host)|\(a.port)|\(b.host)|\(b.port)"
        }
        var ends = Set<String>()
        for p in states {
            for f in p.fds where f.net?.tcp != nil { if let k = key(f.net?.local, f.net?.peer) { ends.insert(k) } }
        }
        // A datagram socket connected to one the image holds bound.
        var bound = Set<String>()
        for p in states {
            for f in p.fds where f.kind == .socket && f.net?.tcp == nil {
                if let n = f.net, let l = n.local, !l.host.isEmpty, l.port != 0 || n.family == AF_UNIX {
                    bound.insert("\(n.family)|\(l.host)|\(l.port)|\(l.abstract == true)")
                }
            }
        }
        for i in states.indices {
            for j in states[i].fds.indices {
                guard let n = states[i].fds[j].net, n.state == .connected, n.peerInside != true else { continue }
                if n.tcp != nil {
                    if let back = key(n.peer, n.local), ends.contains(back) { states[i].fds[j].net?.peerInside = true }
                } else if n.type == Int32(SOCK_DGRAM.rawValue), let peer = n.peer,
                          bound.contains("\(n.family)|\(peer.host)|\(peer.port)|\(peer.abstract == true)") {
                    states[i].fds[j].net?.peerInside = true
                }
            }
        }
    }

    /// Before the final stop, with the process running: new connections to its TCP listeners
    /// are held (their SYNs dropped), connections already waiting in an accept queue are
    /// given up to `patience` seconds to be accepted, as a server does, and connects in
    /// progress as long to finish. What is still so at the stop is refused by name (the
    /// kernel cannot put a connection back in a queue, nor rebuild one half made).
    func settleSockets(_ plan: Preflight, patience: Double = 2) throws {
        guard !plan.listeners.isEmpty || !plan.connecting.isEmpty, held == nil, attached == nil, tree == nil else { return }
        if !plan.listeners.isEmpty {
            if connections == nil { connections = HeldConnections(targets: [pid], killing: options.after == .kill) }
            try withContext("checkpoint of pid \(pid)") { try connections!.holdNewConnections(ports: Array(Set(plan.listeners.map(\.port))).sorted()) }
        }
        let watched = plan.listeners.map(\.fd) + plan.connecting
        let deadline = Clock.monotonic + patience
        while Clock.monotonic < deadline {
            try checkStop()
            // Copies are taken for each look and closed at once: the process runs meanwhile.
            if processHandle == nil { processHandle = try ProcessHandle(pid: pid) }
            let unsettled = watched.contains { fd in
                guard let copy = try? processHandle!.take(fd), SocketProbe.int(copy.rawValue, SOL_SOCKET, SO_TYPE) == Int32(SOCK_STREAM.rawValue) else { return false }
                let info = SocketProbe.tcpState(copy.rawValue)
                return (info.state == 10 && info.waiting > 0) || info.state == 2 || info.state == 3
            }
            if !unsettled { return }
            usleep(5_000)
        }
    }
}
