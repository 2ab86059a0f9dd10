import Foundation
import Glibc
import Testing
import WBCore
import WBTrace

/// Production servers from Debian's packages (installed by harness/test), checkpointed with
/// their clients' connections open and restored: the conversation goes on.
@Suite struct RealServerTests {
    static let redis = "/usr/bin/redis-server", memcached = "/usr/bin/memcached", nginx = "/usr/sbin/nginx"

    /// redis-server with keys and a client connection held by the test: after --kill and
    /// restore the same connection answers, every key is there and new clients connect.
    /// Then a copy of the restored server, restored with --new-netns, serves the same keys
    /// beside it on the same port.
    @Test(.enabled(if: Paths.exists(redis), "redis-server is not installed (harness/test installs it)"))
    func redisKeepsItsKeysAndItsClientsConnection() throws {
        let dir = scratchDirectory()
        let port = freePort()
        let server = try Child(Self.redis, ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                            "--dir", dir, "--daemonize", "no"])
        _ = try #require(server.waitFor("Ready to accept connections"))
        let client = try #require(TCPClient(port: port))
        var load = ""
        for i in 0..<100 { load += "SET key:\(i) value-\(i)\r\n" }
        #expect(client.send(load))
        #expect(client.receive(until: String(repeating: "+OK\r\n", count: 100)) == String(repeating: "+OK\r\n", count: 100))
        let image = "\(dir)/redis.wbimg"
        try checkpointKilled(server, to: image)
        let restored = try Restored.detach(image, ["-q"])
        defer { restored.kill() }
        #expect(client.send("GET key:42\r\n"))
        #expect(client.receive(until: "value-42\r\n", timeout: 20) == "$8\r\nvalue-42\r\n")
        let other = try #require(TCPClient(port: port))
        #expect(other.send("DBSIZE\r\n"))
        #expect(other.receive(until: "\r\n") == ":100\r\n")

        // A copy beside it, in a network namespace of its own, on the same port.
        let copyImage = "\(dir)/copy.wbimg"
        let leave = try wb("checkpoint", "\(restored.pid)", "-o", copyImage)
        try #require(leave.code == 0, "\(leave.stderr)")
        let copy = try Child(Products.wb, ["restore", copyImage, "--detach", "--new-netns", "--new-pidns", "-q"])
        let copyPid = try #require(copy.line().flatMap { Int32($0) }, "\(copy.stderrText)")
        defer { kill(copyPid, SIGKILL) }
        let inside = try Child("/usr/bin/nsenter", ["--net=/proc/\(copyPid)/ns/net", "/usr/bin/redis-cli", "-p", "\(port)", "DBSIZE"])
        #expect(inside.rest().trimmingCharacters(in: .whitespacesAndNewlines) == "100")
        #expect(client.send("GET key:7\r\n"))
        #expect(client.receive(until: "value-7\r\n") == "$7\r\nvalue-7\r\n", "the original still serves its client")
    }

    /// wb killed (SIGKILL) at 20 random moments of a checkpoint of redis-server while a client
    /// holds a connection: the server and its client go on talking, nothing stays in repair
    /// mode and no hold of wb's stays behind.
    @Test(.enabled(if: Paths.exists(redis), "redis-server is not installed (harness/test installs it)"))
    func killingWbAtRandomMomentsLeavesTheServerAndItsClientTalking() throws {
        let dir = scratchDirectory()
        let port = freePort()
        let server = try Child(Self.redis, ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                            "--dir", dir, "--daemonize", "no"])
        _ = try #require(server.waitFor("Ready to accept connections"))
        let client = try #require(TCPClient(port: port))
        var generator = SplitMix(seed: 20261206)
        for round in 0..<20 {
            #expect(client.send("INCR rounds\r\n"))
            #expect(client.receive(until: "\r\n", timeout: 10) == ":\(round + 1)\r\n", "round \(round) before")
            let image = "\(dir)/round\(round).wbimg"
            let checkpoint = try Child(Products.wb, ["checkpoint", "\(server.pid)", "-o", image, "--quiet"])
            usleep(UInt32(generator.next() % 150_000))
            kill(checkpoint.pid, SIGKILL)
            _ = checkpoint.exitCode
            var settled = false
            for _ in 0..<200 where !settled {
                settled = tracerOf(server.pid) == "0" && ((try? wbTables()) ?? []).allSatisfy { !$0.contains("wb_hold_\(server.pid)_") }
                if !settled { usleep(25_000) }
            }
            #expect(settled, "round \(round): the server is still traced or its connections still held")
            // The conversation goes on (a packet dropped while held is sent again).
            #expect(client.send("GET rounds\r\n"))
            let expected = "$\(String(round + 1).count)\r\n\(round + 1)\r\n"
            #expect(client.receive(until: expected, timeout: 10) == expected, "round \(round) after")
        }
        server.signal(SIGKILL)
    }

    /// Clients that connect while redis-server is checkpointed with --kill are all served:
    /// those accepted before the stop are in the image, and one whose SYN came once new
    /// connections were held waits (its SYN is dropped, not refused) and is served by the
    /// restored server.
    @Test(.enabled(if: Paths.exists(redis), "redis-server is not installed (harness/test installs it)"))
    func clientsConnectingDuringTheCheckpointAreServedByTheRestoredServer() throws {
        let dir = scratchDirectory()
        let port = freePort()
        let server = try Child(Self.redis, ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                            "--dir", dir, "--daemonize", "no"])
        _ = try #require(server.waitFor("Ready to accept connections"))
        let image = "\(dir)/redis.wbimg"
        // A client connects every few milliseconds until the checkpoint is over (a connect
        // made while connections are held waits for the restored server).
        final class Clients: @unchecked Sendable {
            let lock = NSLock()
            var list: [TCPClient] = []
            var failed = 0
            var stop = false
            var done = false
        }
        let clients = Clients()
        let connector = Thread {
            while !clients.lock.withLock({ clients.stop }) {
                if let c = TCPClient(port: port) { clients.lock.withLock { clients.list.append(c) } } else { clients.lock.withLock { clients.failed += 1 } }
                usleep(3_000)
            }
            clients.lock.withLock { clients.done = true }
        }
        connector.start()
        usleep(30_000)
        let checkpoint = try wb("checkpoint", "\(server.pid)", "-o", image, "--kill", "-q")
        clients.lock.withLock { clients.stop = true }
        try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
        server.wait()
        let restored = try Restored.detach(image, ["-q"])
        defer { restored.kill() }
        let deadline = Date().addingTimeInterval(30)
        while !clients.lock.withLock({ clients.done }) && Date() < deadline { usleep(20_000) }
        let list = clients.lock.withLock { clients.list }
        #expect(clients.lock.withLock { clients.failed } == 0, "a connect was refused")
        #expect(list.count >= 3)
        for (i, c) in list.enumerated() {
            #expect(c.send("PING\r\n"))
            #expect(c.receive(until: "\r\n", timeout: 10) == "+PONG\r\n", "client \(i) of \(list.count): errno \(c.failure)")
        }
    }

    /// With --tcp=close the client's connection is reset on restore, and new clients are served.
    @Test(.enabled(if: Paths.exists(redis), "redis-server is not installed (harness/test installs it)"))
    func tcpCloseResetsTheClientsConnection() throws {
        let dir = scratchDirectory()
        let port = freePort()
        let server = try Child(Self.redis, ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                            "--dir", dir, "--daemonize", "no"])
        _ = try #require(server.waitFor("Ready to accept connections"))
        let client = try #require(TCPClient(port: port))
        #expect(client.send("SET a b\r\n"))
        #expect(client.receive(until: "\r\n") == "+OK\r\n")
        let image = "\(dir)/redis.wbimg"
        try checkpointKilled(server, to: image)
        let restored = try Restored.detach(image, ["-q", "--tcp=close"])
        defer { restored.kill() }
        _ = client.send("GET a\r\n")
        #expect(client.receive(until: "\r\n", timeout: 20) == nil)
        #expect(client.failure == ECONNRESET || client.failure == 0, "errno \(client.failure)")
        let other = try #require(TCPClient(port: port))
        #expect(other.send("GET a\r\n"))
        #expect(other.receive(until: "b\r\n") == "$1\r\nb\r\n")
    }

    /// memcached (ten threads, epoll, eventfds) with a connected client: after --kill and
    /// restore, the client's next get on the same connection answers.
    @Test(.enabled(if: Paths.exists(memcached), "memcached is not installed (harness/test installs it)"))
    func memcachedAnswersTheSameConnection() throws {
        let dir = scratchDirectory()
        let port = freePort()
        let server = try Child(Self.memcached, ["-p", "\(port)", "-l", "127.0.0.1", "-U", "0", "-u", "nobody", "-t", "4"])
        var client: TCPClient?
        for _ in 0..<100 where client == nil { client = TCPClient(port: port); if client == nil { usleep(20_000) } }
        let c = try #require(client)
        #expect(c.send("set greeting 0 0 5\r\nhello\r\n"))
        #expect(c.receive(until: "\r\n") == "STORED\r\n")
        let image = "\(dir)/memcached.wbimg"
        try checkpointKilled(server, to: image)
        let restored = try Restored.detach(image, ["-q"])
        defer { restored.kill() }
        #expect(c.send("get greeting\r\n"))
        #expect(c.receive(until: "END\r\n", timeout: 20) == "VALUE greeting 0 5\r\nhello\r\nEND\r\n")
    }

    /// nginx, a master and two workers sharing its listener, checkpointed as a tree: the
    /// restored tree serves the file, and the workers still share one listening socket.
    @Test(.enabled(if: Paths.exists(nginx), "nginx is not installed (harness/test installs it)"))
    func nginxTreeServesAfterRestore() throws {
        let dir = scratchDirectory()
        chmod(dir, 0o755)   // the workers run as nobody
        let port = freePort()
        try FileManager.default.createDirectory(atPath: "\(dir)/html", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(dir)/logs", withIntermediateDirectories: true)
        try "served by a restored nginx\n".write(toFile: "\(dir)/html/index.html", atomically: true, encoding: .utf8)
        let temps = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map { "  \($0)_temp_path \(dir)/\($0);" }.joined(separator: "\n")
        let config = """
            worker_processes 2;
            daemon off;
            pid \(dir)/nginx.pid;
            error_log \(dir)/logs/error.log;
            events { worker_connections 64; }
            http {
              access_log \(dir)/logs/access.log;
            \(temps)
              server { listen 127.0.0.1:\(port); root \(dir)/html; }
            }
            """
        try config.write(toFile: "\(dir)/nginx.conf", atomically: true, encoding: .utf8)
        let master = try Child(Self.nginx, ["-c", "\(dir)/nginx.conf", "-p", dir])
        #expect(try httpGet(port: port, retries: 100)?.hasSuffix("served by a restored nginx\n") == true)
        let image = "\(dir)/nginx.wbimg"
        let run = try wb("checkpoint", "--tree", "\(master.pid)", "-o", image, "--kill")
        try #require(run.code == 0, "\(run.stderr)")
        master.wait()
        let restored = try Restored.detach(image, ["-q"])
        let workers = ProcFS.children(restored.pid)
        defer { for w in workers { kill(w, SIGKILL) }; restored.kill() }
        #expect(workers.count == 2)
        for _ in 0..<4 { #expect(try httpGet(port: port)?.hasSuffix("served by a restored nginx\n") == true) }
        let listeners = Set(workers.compactMap { w in
            ((try? ProcFS.fds(w)) ?? []).compactMap { try? Paths.readLink("/proc/\(w)/fd/\($0)") }.first { $0.hasPrefix("socket:") && listening(w, $0) }
        })
        #expect(listeners.count == 1, "\(listeners)")
    }
}

/// A port nothing listens on now (the kernel's pick for a socket bound and closed).
func freePort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
        bind(fd, p, len) == 0 ? getsockname(fd, p, &len) : -1 } }
    return UInt16(bigEndian: a.sin_port)
}

/// GET / over HTTP/1.0; the whole response, or nil when nobody answers (after `retries`
/// tries 20 ms apart).
func httpGet(port: UInt16, retries: Int = 1) throws -> String? {
    for attempt in 0..<retries {
        if let c = TCPClient(port: port) {
            _ = c.send("GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            let reply = c.receive(until: "\u{0}", timeout: 10)
            if let reply, !reply.isEmpty { return reply }
        }
        if attempt + 1 < retries { usleep(20_000) }
    }
    return nil
}

/// Whether the socket `link` ("socket:[N]") of `pid` is a TCP listener (/proc/net/tcp state 0A).
private func listening(_ pid: Int32, _ link: String) -> Bool {
    let inode = link.dropFirst(8).dropLast()
    let table = (try? Paths.readText("/proc/\(pid)/net/tcp")) ?? ""
    return table.split(separator: "\n").contains { row in
        let f = row.split(separator: " ")
        return f.count > 9 && f[3] == "0A" && f[9] == inode
    }
}

extension Child {
    /// Waits for a line containing `text` on stdout.
    func waitFor(_ text: String, timeout: Double = 30) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while deadline.timeIntervalSinceNow > 0 {
            guard let l = line(timeout: deadline.timeIntervalSinceNow) else { return nil }
            if l.contains(text) { return l }
        }
        return nil
    }
}
