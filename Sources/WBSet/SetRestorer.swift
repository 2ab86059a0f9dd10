import Foundation
import Glibc
import WBCore
import WBNet
import WBRestore
import WBSystem

/// Restores a set image on this box: one network namespace per original host, holding that
/// host's addresses on a veth into one bridge (so the hosts reach each other at their
/// original addresses, and nothing leaves the machine), every member restored in its host's
/// namespace, and the connections between members rebuilt with repair mode on both ends.
/// Traffic in the hosts is held (an nftables table in each) until every member is back, so
/// no end is reset by a peer not restored yet.
public final class SetRestorer {
    public let dir: String
    public let manifest: SetManifest
    public var progress: (String) -> Void = { _ in }
    public var options = RestoreOptions()
    /// Names of what this restore made on the box: the bridge, and a network namespace per host.
    public private(set) var bridge: String
    public private(set) var namespaces: [String: String] = [:]

    public struct Restored {
        public var member: SetManifest.Member
        public var process: RestoredProcess
        /// The network namespace of the member's host (ip netns name).
        public var namespace: String
        public var notes: [String]
        /// The member's files as this machine has them (for a debugger).
        public var files: ResolvedFiles
        public var image: Image
    }

    /// `tag` (up to two letters) tells apart the hosts of restores one after another in one
    /// process, each made while the last one's may still be going away.
    public init(dir: String, tag: String = "") throws {
        self.dir = dir
        manifest = try SetManifest.read(dir)
        bridge = "wbb\(getpid() % 10_000_000)\(tag.prefix(2))"
    }

    /// Restores every member stopped (not yet running); `resume` lets them go.
    public func restore() throws -> [Restored] {
        guard let ip = Subprocess.find("ip") ?? ["/usr/sbin/ip", "/sbin/ip"].first(where: { access($0, X_OK) == 0 }) else {
            throw WBError.refused("restoring a set needs the ip command (apt-get install iproute2)")
        }
        guard let nft = Subprocess.find("nft") ?? ["/usr/sbin/nft", "/sbin/nft"].first(where: { access($0, X_OK) == 0 }) else {
            throw WBError.refused("restoring a set needs nftables, to hold the hosts' traffic until every member is back (apt-get install nftables)")
        }
        var restored: [Restored] = []
        do {
            try startGuard(ip: ip)
            try makeHosts(ip: ip, nft: nft)
            for member in manifest.members {
                progress("restoring \(member.name) (\(member.command))")
                restored.append(try restore(member, channels: true))
            }
        } catch {
            for r in restored.reversed() { r.process.terminate() }
            removeHosts()
            throw error
        }
        return restored
    }

    /// Restores one member (stopped) on its host, whose namespace must be there. With
    /// `channels` false its connections to the other members are not rebuilt as connected
    /// but reset (peers outside the image, in another network namespace than wb's), as for a
    /// member restarted while the others went on (`wb explore`'s restart fault): it finds
    /// its peers gone.
    public func restore(_ member: SetManifest.Member, channels: Bool) throws -> Restored {
        guard let namespace = namespaces[member.host] else { throw WBError.failed("host \(member.host) of the set is not set up") }
        let image = try Image(path: "\(dir)/\(member.image)")
        var o = options
        o.networkNamespace = "/run/netns/\(namespace)"
        o.allowTree = true
        o.setChannels = channels ? channelKeys(of: member) : []
        o.trafficHeld = held
        let restorer = Restorer(image: image, options: o)
        let r = try restorer.restore()
        heldConnections += r.connections
        return Restored(member: member, process: r, namespace: namespace, notes: r.notes, files: restorer.files ?? ResolvedFiles(), image: image)
    }

    /// Lifts the hold on the hosts' traffic, then lets every member run: no datagram a
    /// member sends is dropped by the hold (UDP has no retransmission to make up for it).
    public func resume(_ restored: [Restored], stopped: Set<String> = []) throws {
        try liftHold()
        for r in restored {
            if stopped.contains(r.member.name) { r.process.releaseStopped() } else { r.process.resume() }
        }
    }

    /// Lets the hosts' traffic flow (the members stay as they are): for a controller that
    /// keeps the members under its own hand (`wb explore`).
    public func liftHold() throws {
        for ns in namespaces.values { try run(nftPath, ["delete", "table", "inet", "wb_set_hold"], in: ns) }
        held = false
        let connections = heldConnections
        heldConnections = []
        try SocketBuilder.finish(connections)
    }

    /// Whether the hosts' traffic is held (from their making until `liftHold`).
    private var held = false
    /// The members' rebuilt connections, in repair mode until the hold is lifted: the kernel
    /// sends nothing for them (a retransmission dropped by the hold would put the next one
    /// off, twice as long each time).
    private var heldConnections: [SocketBuilder.Pending] = []

    /// The set's "LOCAL->PEER" keys of `member`'s ends of channels.
    private func channelKeys(of member: SetManifest.Member) -> Set<String> {
        var keys = Set<String>()
        for c in manifest.channels {
            if c.a.host == member.host { keys.insert("\(c.a.address)->\(c.b.address)") }
            if c.b.host == member.host { keys.insert("\(c.b.address)->\(c.a.address)") }
        }
        return keys
    }

    private var ipPath = "ip", nftPath = "nft"

    private func makeHosts(ip: String, nft: String) throws {
        ipPath = ip
        nftPath = nft
        try run(ip, ["link", "add", bridge, "type", "bridge"])
        try run(ip, ["link", "set", bridge, "up"])
        for (i, host) in manifest.hosts.enumerated() {
            let ns = "\(bridge)-\(i)"
            let outside = "\(bridge)h\(i)"
            try run(ip, ["netns", "add", ns])
            namespaces[host.name] = ns
            try run(ip, ["link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns])
            try run(ip, ["link", "set", outside, "master", bridge, "up"])
            try run(ip, ["-n", ns, "link", "set", "lo", "up"])
            for a in host.addresses.compactMap(SetManifest.Address.init) {
                try run(ip, ["-n", ns] + (a.isIPv6 ? ["-6", "addr", "add", "\(a.host)/\(a.prefix)", "dev", "eth0", "nodad"]
                                                    : ["addr", "add", "\(a.host)/\(a.prefix)", "dev", "eth0"]))
            }
            try run(ip, ["-n", ns, "link", "set", "eth0", "up"])
            // Every other host is on the bridge: reached directly, whatever its subnet.
            try run(ip, ["-n", ns, "route", "add", "default", "dev", "eth0"])
            if host.addresses.contains(where: { $0.contains(":" as Character) }) {
                try run(ip, ["-n", ns, "-6", "route", "add", "default", "dev", "eth0"])
            }
            // Segments wb puts back into rebuilt connections carry NetworkLock.passMark and
            // must get through.
            let mark = NetworkLock.passMark
            held = true
            try run(nft, ["-f", "-"], in: ns, input: """
                add table inet wb_set_hold
                add chain inet wb_set_hold input { type filter hook input priority -400; policy drop; }
                add chain inet wb_set_hold output { type filter hook output priority -400; policy drop; }
                add rule inet wb_set_hold input meta mark \(mark) accept
                add rule inet wb_set_hold output meta mark \(mark) accept

                """)
        }
    }

    /// Removes the hosts' namespaces and the bridge (their veths go with them).
    public func removeHosts() {
        for ns in namespaces.values { try? run(ipPath, ["netns", "delete", ns]) }
        namespaces = [:]
        try? run(ipPath, ["link", "delete", bridge])
        keepHosts()
    }

    /// The hosts stay when wb exits (members left running with --detach): the guard is told
    /// so and goes.
    public func keepHosts() {
        guard let g = guardPipe else { return }
        _ = try? g.writeAll(Array("keep\n".utf8))
        g.close()
        guardPipe = nil
    }

    /// The write end of the guard's pipe: while wb holds it, the guard waits.
    private var guardPipe: FileDescriptor?

    /// A guard process that removes the hosts if wb dies without doing it (killed, even with
    /// SIGKILL): it waits on a pipe only wb holds, and at end-of-file deletes the namespaces
    /// and the bridge this restore makes, unless told to keep them.
    private func startGuard(ip: String) throws {
        // Close-on-exec: only the guard holds the read end (as its stdin), only wb the write end.
        let (read, write) = try Pipes.make()
        let names = manifest.hosts.indices.map { "\(bridge)-\($0)" }
        let deletes = names.map { "\(ip) netns delete \($0)" } + ["\(ip) link delete \(bridge)"]
        let script = "trap '' INT TERM HUP QUIT; read -r line; [ \"$line\" = keep ] && exit 0; " + deletes.joined(separator: "; ")
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        _ = try Subprocess.spawn("/bin/sh", ["-c", script], stdin: read.rawValue, stdout: null.rawValue, stderr: null.rawValue)
        guardPipe = write
    }

    private func run(_ tool: String, _ args: [String], in namespace: String? = nil, input: String? = nil) throws {
        var program = tool, arguments = args
        if let namespace {
            program = ipPath
            arguments = ["netns", "exec", namespace, tool] + args
        }
        let result: Subprocess.Output
        if let input {
            let path = "/tmp/wb-set-\(getpid()).nft"
            try Paths.writeFile(path, Array(input.utf8), mode: 0o600)
            defer { Paths.remove(path) }
            result = try Subprocess.output(program, arguments.map { $0 == "-" ? path : $0 })
        } else {
            result = try Subprocess.output(program, arguments)
        }
        if result.status != 0 {
            let why = String(decoding: result.stderr, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "exit status \(result.status)"
            throw WBError.failed("setting up the set's hosts: \(([tool] + args).joined(separator: " ")) failed: \(why)")
        }
    }
}
