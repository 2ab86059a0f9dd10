import CWBNative
import Foundation
import Glibc
import WBCore
import WBSystem

/// Holds TCP connections still while they are checkpointed: an nftables table of wb's own
/// drops their packets both ways (the peers retransmit, as after a short outage; nothing is
/// reset), and the sockets are put in repair mode (TCP_REPAIR), in which the kernel sends
/// nothing for them and closing them sends neither FIN nor RST.
///
/// A checkpoint that lets the process go takes repair mode off and lifts the lock at once;
/// one with `--kill` leaves both: the process dies with its sockets in repair mode, so its
/// peers see a pause, and the lock stays until `wb restore` has made the connections again
/// (the image names the table). If wb dies while it holds connections of a process that
/// still runs, a guard process (native/CWBNative/net.c) turns repair mode off and lifts the
/// lock, so the process goes on talking.
public final class NetworkLock {
    /// The nftables table (family inet) holding the rules.
    public let table: String
    /// A packet marked so passes the lock (a FIN wb puts back into a rebuilt connection).
    public static let passMark: UInt32 = 0x7762_0001
    private let nft: String
    private var guardPid: pid_t = 0
    private var control: Int32 = -1
    /// wb's copies of the held sockets (in repair mode until `letGo`; the caller's, kept), each
    /// with its SO_REUSEADDR (repair mode forces reuse on, and taking it off sets it off).
    private var held: [(socket: FileDescriptor, reuse: Int32)] = []
    private var flows = Set<String>()
    private var listenerPorts = Set<UInt16>()

    /// A connection as the lock matches it: the process's end and its peer's.
    public struct Flow: Sendable {
        public var local: SocketAddress
        public var peer: SocketAddress
        public init(local: SocketAddress, peer: SocketAddress) { self.local = local; self.peer = peer }
    }

    /// Makes the (empty) table and starts the guard, which lifts it if wb dies while
    /// `targets` (the checkpointed processes) still run, or whatever became of them unless
    /// `keepIfGone` (a checkpoint that kills them keeps their connections held).
    public init(name: String, targets: [Int32], keepIfGone: Bool) throws {
        guard let nft = NetworkLock.nftPath() else {
            throw WBError.refused("checkpointing established TCP connections needs nftables, to hold their packets while they are read (apt-get install nftables)")
        }
        self.nft = nft
        table = name
        let m = NetworkLock.passMark
        // One element per connection, the process's end first: packets it sends match it in
        // the output hook, packets to it in the input hook (fields read the other way round).
        func chain(_ hook: String) -> String {
            let (ours, theirs) = hook == "output" ? ("saddr", "daddr") : ("daddr", "saddr")
            let (ourPort, theirPort) = hook == "output" ? ("sport", "dport") : ("dport", "sport")
            return """
            add chain inet \(name) \(hook) { type filter hook \(hook) priority -400; policy accept; }
            add rule inet \(name) \(hook) meta mark \(m) accept
            add rule inet \(name) \(hook) ip \(ours) . tcp \(ourPort) . ip \(theirs) . tcp \(theirPort) @v4 drop
            add rule inet \(name) \(hook) ip6 \(ours) . tcp \(ourPort) . ip6 \(theirs) . tcp \(theirPort) @v6 drop
            """
        }
        let script = """
            add table inet \(name)
            add set inet \(name) v4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; }
            add set inet \(name) v6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; }
            add set inet \(name) listeners { type inet_service; }
            \(chain("input"))
            add rule inet \(name) input tcp dport @listeners tcp flags & (syn | ack) == syn drop
            \(chain("output"))

            """
        try NetworkLock.run(nft, ["-f", "-"], input: script, what: "making the lock that holds TCP connections' packets (nft)")
        var c: Int32 = -1
        let pid = targets.withUnsafeBufferPointer { t in
            nft.withCString { n in name.withCString { wb_net_guard_start(n, $0, t.baseAddress, Int32(t.count), keepIfGone ? 1 : 0, &c) } }
        }
        guard pid > 0 else {
            _ = try? NetworkLock.release(table: name)
            throw WBError.system(call: "fork", errno: -pid, what: "starting the guard of the held connections")
        }
        guardPid = pid
        control = c
    }

    /// Drops the packets of `sockets`' connections from now on and puts the sockets in repair
    /// mode (each a copy wb holds of fd `fd` of process `pid`, `flow` its addresses). The lock
    /// goes on before repair mode, so nothing arrives between the two.
    public func hold(_ sockets: [(socket: FileDescriptor, pid: Int32, fd: Int32, flow: Flow)]) throws {
        try drop(sockets.map(\.flow))
        // The guard knows of them before repair mode goes on: it can always take it off.
        let pairs = sockets.flatMap { [$0.pid, $0.fd] }
        let e = pairs.withUnsafeBufferPointer { wb_net_guard_send(control, 0x61 /* a */, $0.baseAddress, Int32(sockets.count)) }
        guard e == 0 else { throw WBError.system(call: "send", errno: e, what: "telling the held connections' guard of them") }
        for s in sockets {
            held.append((s.socket, SocketProbe.int(s.socket.rawValue, SOL_SOCKET, SO_REUSEADDR)))
            let r = wb_tcp_repair(s.socket.rawValue, 1)
            if r != 0 { throw WBError.system(call: "setsockopt(TCP_REPAIR)", errno: r, what: "putting a TCP connection in repair mode") }
        }
    }

    /// Drops the packets of these connections both ways from now on, without touching their
    /// sockets (a set checkpoint's barrier: no message between members moves while they are
    /// captured one by one; each side retransmits once the lock is lifted).
    public func drop(_ connections: [Flow]) throws {
        var v4: [String] = [], v6: [String] = []
        var keys4: [UInt8] = [], keys6: [UInt8] = []
        for f in connections {
            // An IPv6 socket talking to an IPv4 peer (::ffff:a.b.c.d) sends IPv4 packets.
            func plain(_ h: String) -> String { h.hasPrefix("::ffff:") && h.contains("." as Character) ? String(h.dropFirst(7)) : h }
            let (l, p) = (plain(f.local.host), plain(f.peer.host))
            let element = "\(l) . \(f.local.port) . \(p) . \(f.peer.port)"
            guard flows.insert(element).inserted else { continue }
            let six = l.contains(":" as Character)
            if six { v6.append(element) } else { v4.append(element) }
            // The same element as the key nftables keeps: each field padded to 4 bytes.
            let family = six ? AF_INET6 : AF_INET
            var key: [UInt8] = []
            for (host, port) in [(l, f.local.port), (p, f.peer.port)] {
                var address = [UInt8](repeating: 0, count: six ? 16 : 4)
                _ = inet_pton(family, host, &address)
                key += address + [UInt8(port >> 8), UInt8(port & 0xff), 0, 0]
            }
            if six { keys6 += key } else { keys4 += key }
        }
        // One netlink batch per set; the text form through libnftables (or nft) when that fails.
        let what = "holding the packets of \(connections.count) TCP connection\(connections.count == 1 ? "" : "s") (nft)"
        for (set, elements, keys, size) in [("v4", v4, keys4, 16), ("v6", v6, keys6, 40)] where !elements.isEmpty {
            if wb_nft_add_elements(table, set, keys, size, Int32(elements.count)) == 0 { continue }
            try NetworkLock.run(nft, ["-f", "-"], input: "add element inet \(table) \(set) { \(elements.joined(separator: ", ")) }\n", what: what)
        }
    }

    /// Drops new connections to these TCP ports (their first SYN; the clients send it again a
    /// second later) from now on: a listener's accept queue can then only empty.
    public func holdNewConnections(ports: [UInt16]) throws {
        let fresh = ports.filter { listenerPorts.insert($0).inserted }
        guard !fresh.isEmpty else { return }
        try NetworkLock.run(nft, ["-f", "-"], input: "add element inet \(table) listeners { \(fresh.map(String.init).joined(separator: ", ")) }\n",
                            what: "holding new connections to port\(fresh.count == 1 ? "" : "s") \(fresh.map(String.init).joined(separator: ", ")) (nft)")
    }

    /// Takes repair mode off every held socket and lifts the lock: the connections go on.
    public func letGo() throws {
        for c in held { NetworkLock.endRepair(c.socket.rawValue, reuse: c.reuse); c.socket.close() }
        held = []
        try NetworkLock.release(table: table)
        endGuard(wait: false)
    }

    /// Leaves the connections held after wb exits (a `--kill` checkpoint: the process is gone
    /// and its sockets were closed in repair mode; `wb restore` lifts the lock).
    public func keep() {
        for c in held { c.socket.close() }
        held = []
        endGuard()
    }

    /// Tells the guard it is done; `wait`: until it has exited (otherwise the deinit reaps it,
    /// once the process runs again).
    private func endGuard(wait: Bool = true) {
        guard control >= 0 else { return }
        _ = wb_net_guard_send(control, 0x64 /* d */, nil, 0)
        close(control)
        control = -1
        if wait { reapGuard() }
    }

    private func reapGuard() {
        guard guardPid > 0 else { return }
        var status: Int32 = 0
        while waitpid(guardPid, &status, 0) < 0 && errno == EINTR {}
        guardPid = 0
    }

    deinit {
        // Neither let go nor kept (an error on the way): as if wb had died.
        if control >= 0 {
            for c in held { NetworkLock.endRepair(c.socket.rawValue, reuse: c.reuse); c.socket.close() }
            _ = try? NetworkLock.release(table: table)
            endGuard()
        }
        reapGuard()
    }

    /// Takes a socket out of repair mode without a window probe (the lock would drop it; the
    /// peer's own retransmissions take the conversation up) and gives it back its SO_REUSEADDR.
    static func endRepair(_ fd: Int32, reuse: Int32) {
        _ = wb_tcp_repair(fd, -1)
        if reuse > 0 {
            var v = reuse
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &v, 4)
        }
    }

    static func nftPath() -> String? {
        Subprocess.find("nft") ?? ["/usr/sbin/nft", "/sbin/nft"].first(where: { access($0, X_OK) == 0 })
    }

    /// Removes the lock table `table` (a restore does this once the connections are back);
    /// false when there was none.
    @discardableResult
    public static func release(table: String) throws -> Bool {
        guard let nft = nftPath() else { return false }
        do {
            try run(nft, ["delete", "table", "inet", table], input: nil, what: "letting the connections' traffic flow again (nft)")
            return true
        } catch let WBError.failed(message) where message.contains("No such file") {
            return false
        }
    }

    /// Whether the lock table `table` exists (the connections of a `--kill` checkpoint are
    /// still held).
    public static func exists(table: String) -> Bool {
        guard let nft = nftPath() else { return false }
        return (try? run(nft, ["list", "table", "inet", table], input: nil, what: "looking for the lock")) != nil
    }

    /// Runs nft commands: in process through libnftables when it loads (no program to start,
    /// so a lock costs well under a millisecond), else through the nft program.
    static func run(_ nft: String, _ args: [String], input: String?, what: String) throws {
        if wb_nft_available() != 0 {
            let commands = input ?? args.joined(separator: " ")
            var error = [CChar](repeating: 0, count: 1024)
            if wb_nft_run(commands, &error, error.count) == 0 { return }
            let text = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "nft failed"
            throw WBError.failed("\(what): \(text)")
        }
        var inPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0]
        guard wb_pipe2(&inPipe, O_CLOEXEC) == 0, wb_pipe2(&errPipe, O_CLOEXEC) == 0, wb_pipe2(&outPipe, O_CLOEXEC) == 0 else {
            throw WBError.system(call: "pipe2", errno: errno, what: what)
        }
        let pid = try Subprocess.spawn(nft, args, stdin: inPipe[0], stdout: outPipe[1], stderr: errPipe[1])
        close(inPipe[0]); close(errPipe[1]); close(outPipe[1])
        if let input { _ = input.withCString { write(inPipe[1], $0, strlen($0)) } }
        close(inPipe[1])
        var err = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(errPipe[0], &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            err += buf.prefix(n)
        }
        while read(outPipe[0], &buf, buf.count) > 0 {}
        close(errPipe[0]); close(outPipe[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        if status != 0 {
            let text = String(decoding: err, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "exit status \(status)"
            throw WBError.failed("\(what): \(text)")
        }
    }
}
