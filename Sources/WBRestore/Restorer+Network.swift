import Foundation
import Glibc
import WBNet
import WBTrace

/// Sockets in a restore: the network namespace they are made in, the policy for connections
/// to peers outside the image, and the end of the restore, where rebuilt TCP connections
/// leave repair mode and the lock a `--kill` checkpoint left on them is lifted.
extension Restorer {
    /// What to do with the connection of `net` (a TCP socket).
    func tcpPolicy(for net: NetSocketState, name: @autoclosure () -> String) throws -> TCPPolicy {
        guard net.tcp != nil else { return .restore }
        if net.peerInside == true { return .restore }
        if let local = net.local, let peer = net.peer, options.setChannels.contains("\(local)->\(peer)") { return .restore }
        if !sockets.namespace.isCurrent {
            note("\(name()): its peer is outside the image and outside the process's network namespace: the connection is reset", about: process)
            return .close
        }
        // The connection may be open here still if the process it was taken from runs on;
        // not so when that process was killed with its connections held (the hold is still
        // there), and then the host's connections need not be listed.
        if sockets.namespace.isCurrent, let local = net.local, let peer = net.peer, !originalConnectionsHeld {
            if openConnections == nil { openConnections = try SocketTable.read().connectionKeys }
            if openConnections!.contains(SocketTable.connectionKey(local: local, peer: peer)) {
                throw WBError.refused("\(name()) is open here already (the process the image was taken from still runs?): its packets would go to one of the two; restore with --new-netns for a copy beside it, or stop the original")
            }
        }
        return options.tcp
    }

    /// Takes every rebuilt connection out of repair mode and lifts the lock that held them
    /// since a `--kill` checkpoint: their peers' retransmissions arrive, and the conversation
    /// goes on (or, with --tcp=close, each is reset). When the caller holds the traffic (a
    /// set), the connections are left to it, in repair mode.
    func finishConnections() throws {
        let pending = pendingConnections
        pendingConnections = []
        if options.trafficHeld { heldConnections = pending } else { try SocketBuilder.finish(pending) }
        if let table = image.metadata.networkLock {
            if try NetworkLock.release(table: table) {
                notes.append("the packets of the connections held since the checkpoint flow again (nftables table \(table) removed)")
            }
        }
    }

    /// Removes the Unix socket paths their processes had unlinked after binding them.
    func unlinkSocketPaths() throws {
        for (path, leader, scratch, access) in unlinkLater {
            scratch.reset()
            let name = try scratch.put(string: path)
            let r = try access.asProcess(path: path) { try leader.raw(.unlinkat, UInt64(bitPattern: -100), name, 0) }
            if r < 0 && r != -Int64(ENOENT) { throw WBError.system(call: "remote unlink", errno: Int32(-r), what: "removing \(path) again") }
        }
        unlinkLater = []
    }

    /// Puts the restored processes in the network namespace at `path` (before any is forked):
    /// a host of a set image, made by the set's restore.
    func joinNetwork(_ root: Tracee, path: String) throws {
        root.syscallGadget = Stub.syscallAddress
        let s = try root.ownedSyscalls(in: root.pid)
        let scratch = try s.mapScratch(bytes: 4096)
        defer { _ = try? s.raw(.munmap, scratch, 4096) }
        try root.write(Array(path.utf8) + [0], to: scratch)
        let fd = try s.call(.openat, UInt64(bitPattern: Int64(AT_FDCWD)), scratch, UInt64(O_RDONLY | O_CLOEXEC), what: "opening the network namespace \(path)")
        let r = try s.raw(.setns, fd, 0x4000_0000 /* CLONE_NEWNET */)
        _ = try s.raw(.close, fd)
        if r < 0 { throw WBError.system(call: "remote setns", errno: Int32(-r), what: "entering the network namespace \(path)") }
        sockets = SocketBuilder(namespace: try NetNamespace.of(root.pid))
    }

    /// A network namespace of the restored processes' own (before any is forked), with
    /// loopback up and every other address their sockets were bound to on it:
    /// a copy of a running server keeps its ports beside the original.
    func isolateNetwork(_ root: Tracee) throws {
        root.syscallGadget = Stub.syscallAddress
        let s = try root.ownedSyscalls(in: root.pid)
        let r = try s.raw(.unshare, 0x4000_0000 /* CLONE_NEWNET */)
        if r < 0 {
            throw WBError.system(call: "remote unshare(CLONE_NEWNET)", errno: Int32(-r),
                                 what: "giving the restored process a network namespace of its own (needs CAP_SYS_ADMIN: run wb restore as root)")
        }
        let namespace = try NetNamespace.of(root.pid)
        var addresses = Set<String>()
        for p in image.metadata.processes {
            for f in p.fds {
                guard let net = f.net, net.family == AF_INET || net.family == AF_INET6, let local = net.local else { continue }
                var host = local.host
                if host.hasPrefix("::ffff:") && host.contains("." as Character) { host = String(host.dropFirst(7)) }
                if ["0.0.0.0", "::", "127.0.0.1", "::1", ""].contains(host) || host.hasPrefix("127.") || host.hasPrefix("fe80:") { continue }
                addresses.insert(host)
            }
        }
        // On loopback: bound to, reachable from inside, and no device driver needed (the
        // dummy module is not loadable everywhere).
        var commands = [["link", "set", "lo", "up"]]
            + addresses.sorted().map { $0.contains(":" as Character) ? ["-6", "addr", "add", "\($0)/128", "dev", "lo", "nodad"] : ["addr", "add", "\($0)/32", "dev", "lo"] }
        // A connection to a peer outside is rebuilt before it is reset, which needs a route to
        // the peer: everything goes to loopback (nothing leaves the namespace).
        let peers = image.metadata.processes.flatMap(\.fds).compactMap { $0.net?.tcp != nil ? $0.net?.peer?.host : nil }
        if peers.contains(where: { !$0.contains(":" as Character) && !$0.hasPrefix("127.") }) { commands.append(["route", "add", "default", "dev", "lo"]) }
        if peers.contains(where: { $0.contains(":" as Character) && $0 != "::1" && !($0.hasPrefix("::ffff:127.")) }) { commands.append(["-6", "route", "add", "default", "dev", "lo"]) }
        guard let ip = Subprocess.find("ip") ?? ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"].first(where: { access($0, X_OK) == 0 }) else {
            throw WBError.refused("restoring into a network namespace of its own needs the ip command (apt-get install iproute2)")
        }
        let null = try FileDescriptor.open("/dev/null", O_WRONLY)
        let quiet = null.rawValue
        for c in commands {
            // A process started from the thread that joined the namespace is in it.
            let status = try namespace.perform { () throws -> Int32 in
                let pid = try Subprocess.spawn(ip, c, stdout: quiet, stderr: quiet)
                var st: Int32 = 0
                while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
                return st
            }
            if status != 0 { throw WBError.failed("setting up the restored process's network namespace: ip \(c.joined(separator: " ")) failed") }
        }
        sockets = SocketBuilder(namespace: namespace)
        let list = (["127.0.0.1", "::1"] + addresses.sorted()).joined(separator: ", ")
        notes.append("the process runs in a network namespace of its own (\(list)); reach it with nsenter --net=/proc/PID/ns/net")
    }
}
