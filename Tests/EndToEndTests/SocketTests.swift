import Foundation
import Glibc
import Testing
import WBCore

/// Sockets of every family the workbench saves, checkpointed and restored on real processes
/// that check themselves (harness-unixzoo, harness-netzoo, harness-transfer).
@Suite struct SocketTests {
    /// Every kind of Unix socket: pairs of each type with their queued bytes and messages
    /// (boundaries kept), a listener with a connection of its own waiting, a datagram socket
    /// whose path was unlinked with its datagrams, abstract names, unbound sockets, options.
    @Test func unixSocketsOfEveryKindComeBack() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("unixzoo"), [dir])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/zoo.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(!Paths.exists("\(dir)/dgram"), "the unlinked path stays unlinked")
        #expect(Paths.exists("\(dir)/listen"))
        #expect(restored.verify() == ["VERIFY OK"])
        let inspect = try wb("inspect", image)
        #expect(inspect.stdout.contains("SOCKETS"), "\(inspect.stdout)")
        #expect(inspect.stdout.contains("\(dir)/listen") && inspect.stdout.contains("listening"), "\(inspect.stdout)")
    }

    /// TCP and UDP of IPv4 and IPv6: listeners with their options, established connections
    /// with bytes queued both ways, a half-closed connection (FIN-WAIT-2 and CLOSE-WAIT),
    /// datagrams with their senders; after --kill and restore, every one works as before.
    @Test func tcpAndUDPSocketsComeBackWithTheirStateQueuesAndOptions() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("netzoo"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/net.wbimg"
        try checkpointKilled(program, to: image)
        let lock = try #require(try Image(path: image).metadata.networkLock)
        #expect(nftTableExists(lock), "the connections stay held after --kill")
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(!nftTableExists(lock), "the restore lifts the hold")
        #expect(restored.verify() == ["VERIFY OK"])
        let inspect = try wb("inspect", image, "--json")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any])
        let sockets = try #require(json["sockets"] as? [[String: Any]])
        let port = try #require(field(ready, "port"))
        #expect(sockets.contains { ($0["local"] as? String) == "127.0.0.1:\(port)" && ($0["state"] as? String) == "listening" }, "\(sockets)")
        #expect(sockets.contains { ($0["tcpState"] as? String) == "CLOSE-WAIT" && ($0["peerInside"] as? Bool) == true }, "\(sockets)")
    }

    /// Below the transport layer: netlink sockets keep their port ids and groups and still
    /// talk to the kernel, a raw ICMP socket gets its echo replies, a packet socket sees
    /// loopback traffic, and a UDP socket's multicast membership is joined again.
    @Test func netlinkRawPacketSocketsAndMulticastMembershipsComeBack() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("rawzoo"), [])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/raw.wbimg"
        try checkpointKilled(program, to: image)
        let restored = try Restored.detach(image)
        defer { restored.kill() }
        #expect(restored.verify() == ["VERIFY OK"])
        let inspect = try wb("inspect", image)
        #expect(inspect.stdout.contains("member of 239.7.7.7 on lo"), "\(inspect.stdout)")
        #expect(inspect.stdout.contains("netlink bound port id"), "\(inspect.stdout)")
    }

    /// A connect in progress is given time to finish; one that does not is refused by name,
    /// and the process is let go as it was (its connect still going on).
    @Test func aConnectInProgressIsWaitedForThenRefusedUntouched() throws {
        let dir = scratchDirectory()
        // A listener whose accept queue is full: a new connect's SYNs go unanswered.
        let port = freePort()
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let bound = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        try #require(bound == 0 && listen(listener, 0) == 0)
        let fillers = (0..<1).compactMap { _ in TCPClient(port: port) }
        _ = fillers
        let program = try Child(Products.harness("holder"), ["connect", "\(port)"])
        let ready = try #require(program.line(startingWith: "READY"))
        let fd = try #require(field(ready, "fd"))
        let started = Date()
        let run = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/x.wbimg")
        #expect(run.code == 1)
        #expect(run.stderr.contains("fd \(fd)") && run.stderr.contains("in the middle of a connect"), "\(run.stderr)")
        #expect(Date().timeIntervalSince(started) > 1.5, "it was given time to connect")
        #expect(tracerOf(program.pid) == "0")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "ALIVE") == "ALIVE 1")
    }

    /// A checkpoint that leaves the process running never harms it: its connections are let
    /// go and its packets flow at once. Its copy cannot take the ports beside it (one line
    /// naming the port and the flag), and with --new-netns it runs beside it, whole.
    @Test func aCopyRunsBesideTheRunningOriginalInANetworkNamespaceOfItsOwn() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("netzoo"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/net.wbimg"
        let run = try wb("checkpoint", "\(program.pid)", "-o", image)
        try #require(run.code == 0, "\(run.stderr)")
        #expect(try Image(path: image).metadata.networkLock == nil)
        #expect(try wbTables().filter { $0.contains("wb_hold_\(program.pid)_") }.isEmpty)

        let port = try #require(field(ready, "port"))
        let taken = try wb("restore", image, "--detach")
        #expect(taken.code == 1)
        #expect(taken.stderr.contains("port \(port) (TCP) is taken here") && taken.stderr.contains("--new-netns"), "\(taken.stderr)")
        #expect(taken.stderr.split(separator: "\n").filter { $0.hasPrefix("wb: error") }.count == 1, "\(taken.stderr)")

        let copy = try Child(Products.wb, ["restore", image, "--detach", "--new-netns", "--new-pidns"])
        let pid = try #require(copy.line().flatMap { Int32($0) }, "\(copy.stderrText)")
        #expect(copy.exitCode == 0)
        let owned = OwnedProcess(pid)
        defer { owned.kill() }
        #expect(copy.stderrText.contains("network namespace of its own"))
        let theirs = try Paths.stat("/proc/\(pid)/ns/net"), ours = try Paths.stat("/proc/self/ns/net")
        #expect(theirs.inode != ours.inode)
        // The copy answers on its own stdout (wb's, the pipe read here).
        owned.signal(SIGUSR1)
        #expect(copy.line(startingWith: "VERIFY") == "VERIFY OK")
        // gdb on another copy, in its own namespace too, while the original keeps its ports.
        let debug = try wb("restore", image, "--new-netns", "--new-pidns", "--debug", "--", "-batch", "-ex", "info threads", "-ex", "bt")
        #expect(debug.code == 0, "\(debug.stderr)")
        #expect(debug.stdout.contains("harness-netzoo") || debug.stdout.contains("main"), "\(debug.stdout)")
        // The original, checked after its copies, is as it was.
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK")
    }

    /// A parent and a child in the middle of a 64 MiB transfer each way over one TCP
    /// connection: checkpointed as a tree with --kill and restored, both finish with every
    /// byte received exactly once.
    @Test func aTCPTransferInsideATreeFinishesAfterRestoreWithNothingLostOrDuplicated() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("transfer"), ["64"])
        _ = try #require(program.line(startingWith: "READY"))
        _ = try #require(program.line(startingWith: "PROGRESS"))
        let image = "\(dir)/transfer.wbimg"
        let run = try wb("checkpoint", "--tree", "\(program.pid)", "-o", image, "--kill")
        try #require(run.code == 0, "\(run.stderr)")
        program.wait()
        let restored = try Child(Products.wb, ["restore", image, "-q"])
        var done: [String] = []
        while let line = restored.line(timeout: 60) {
            if line.hasPrefix("DONE") || line.hasPrefix("ERROR") { done.append(line) }
        }
        #expect(restored.exitCode == 0, "\(restored.stderrText)")
        #expect(done.sorted() == ["DONE side=child ok=1 received=67108864", "DONE side=parent ok=1 received=67108864"], "\(done)")
    }

    /// A connection waiting in a listener's accept queue cannot be put back in one: new
    /// connections are held and the waiting ones given time to be accepted; one a process
    /// does not accept is refused by name, and the process is let go unharmed.
    @Test func aListenerWithConnectionsWaitingIsRefusedUntouched() throws {
        let dir = scratchDirectory()
        let program = try Child(Products.harness("netzoo"), [])
        let ready = try #require(program.line(startingWith: "READY"))
        let port = try #require(field(ready, "port").flatMap { UInt16($0) })
        let client = try #require(TCPClient(port: port))
        _ = client
        let run = try wb("checkpoint", "\(program.pid)", "-o", "\(dir)/x.wbimg")
        #expect(run.code == 1)
        #expect(run.stderr.contains("fd 3 is a TCP listener with 1 connection waiting to be accepted"), "\(run.stderr)")
        #expect(run.stderr.contains("Nothing was changed"), "\(run.stderr)")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "VERIFY") == "VERIFY OK", "new connections are not held any more")
        #expect(tracerOf(program.pid) == "0")
        #expect(try wbTables().filter { $0.contains("wb_hold_\(program.pid)_") }.isEmpty)
    }
}

/// A TCP connection from the test to 127.0.0.1:PORT.
final class TCPClient {
    let fd: Int32

    init?(port: UInt16) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if r != 0 { close(fd); return nil }
    }

    deinit { close(fd) }

    func send(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return Glibc.send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count
    }

    /// What arrives within `timeout` seconds until `until` is seen, or until the end of the
    /// connection (nil when it ended with nothing received: the error is in `failure`).
    func receive(until: String, timeout: Double = 30) -> String? {
        var got = [UInt8]()
        let deadline = Date().addingTimeInterval(timeout)
        while deadline.timeIntervalSinceNow > 0 {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 100)
            guard p.revents != 0 else { continue }
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
            if n <= 0 {
                failure = n == 0 ? 0 : errno
                return got.isEmpty ? nil : String(decoding: got, as: UTF8.self)
            }
            got += buf.prefix(n)
            let text = String(decoding: got, as: UTF8.self)
            if text.contains(until) { return text }
        }
        return String(decoding: got, as: UTF8.self)
    }

    /// The errno of a failed receive (0: end of file).
    var failure: Int32 = -1
}

/// wb's nftables tables (connections held) on this machine.
func wbTables() throws -> [String] {
    guard let nft = ["/usr/sbin/nft", "/sbin/nft"].first(where: { Paths.exists($0) }) else { return [] }
    let list = try Child(nft, ["list", "tables"])
    return list.rest().split(separator: "\n").map(String.init).filter { $0.contains("wb_hold_") }
}

func nftTableExists(_ name: String) -> Bool { ((try? wbTables()) ?? []).contains { $0.hasSuffix(" \(name)") } }
