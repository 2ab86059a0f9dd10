import Foundation
import Glibc
import WBCore
import WBSet
import WBSystem

/// One job's coordinator (`wb coordinator`): knows the job's members through their hosts'
/// agents and drives set checkpoints — every agent holds its members' connections (the
/// barrier), then each captures its members, then all let go (or end them once every image
/// is safe). A failure anywhere ends the checkpoint with every member let go unharmed.
public final class Coordinator: @unchecked Sendable {
    public let token: String
    /// The address it listens on, as bound (HOST:PORT).
    public let address: String
    public var log: (String) -> Void = { _ in }
    /// Seconds each phase of a checkpoint may take before the agent is given up on.
    public var lockTimeout = 30.0, captureTimeout = 600.0

    private let listener: FileDescriptor
    private let state = NSLock()
    private let checkpoints = NSLock()
    private var agents: [AgentLink] = []
    private var nextID = 1

    final class AgentLink {
        let connection: Connection
        let host: String
        let addresses: [String]
        let members: [Message.Member]
        init(connection: Connection, host: String, addresses: [String], members: [Message.Member]) {
            self.connection = connection; self.host = host; self.addresses = addresses; self.members = members
        }
    }

    /// Binds `listen` (HOST:PORT; port 0 picks one).
    public init(listen: String, token: String) throws {
        self.token = token
        let (host, port) = try Endpoint.parse(listen, defaultPort: CoordinatorProtocol.defaultPort)
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, "\(port)", &hints, &list) == 0, let a = list else {
            throw WBError.invalidArgument("--listen \(listen): cannot resolve \(host)")
        }
        defer { freeaddrinfo(list) }
        let s = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if s < 0 { throw WBError.system(call: "socket", errno: errno, what: "listening on \(listen)") }
        let fd = FileDescriptor(owning: s)
        var one: Int32 = 1
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, 4)
        if bind(s, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 {
            throw WBError.system(call: "bind", errno: errno, what: "listening on \(listen) (another coordinator there? pick another port)")
        }
        if Glibc.listen(s, 128) != 0 { throw WBError.system(call: "listen", errno: errno, what: "listening on \(listen)") }
        var raw = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &raw) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &length) } }
        let boundPort = withUnsafeBytes(of: raw) { UInt16($0[2]) << 8 | UInt16($0[3]) }
        listener = fd
        address = host.contains(":" as Character) ? "[\(host)]:\(boundPort)" : "\(host):\(boundPort)"
    }

    /// A new job token.
    public static func newToken() -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        if fd >= 0 { _ = read(fd, &bytes, 16); close(fd) }
        return bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// Serves connections until the process ends; with `every`, takes a set checkpoint into
    /// `setDirectory`/set-N every `every` seconds while members have joined.
    public func serve(every: Double? = nil, setDirectory: String? = nil) throws -> Never {
        if let every, let setDirectory {
            let t = Thread { [self] in
                var n = 0
                while true {
                    Thread.sleep(forTimeInterval: every)
                    if members().isEmpty { continue }
                    let dir = "\(setDirectory)/set-\(String(format: "%06d", n))"
                    n += 1
                    do {
                        let r = try checkpoint(into: dir, kill: false)
                        log("checkpoint \(dir): \(r.members?.count ?? 0) members, longest pause \(String(format: "%.3f", r.pauseSeconds ?? 0)) s")
                    } catch {
                        log("checkpoint \(dir) failed: \(error)")
                    }
                }
            }
            t.start()
        }
        while true {
            let c = Glibc.accept(listener.rawValue, nil, nil)
            if c < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                throw WBError.system(call: "accept", errno: errno, what: "taking a connection")
            }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            let connection = Connection(fd: FileDescriptor(owning: c), peer: "a connection")
            Thread { [self] in self.welcome(connection) }.start()
        }
    }

    private func welcome(_ c: Connection) {
        func refuse(_ why: String) {
            var m = Message(op: "refused")
            m.error = why
            try? c.send(m)
        }
        guard let hello = try? c.receive(timeout: 30), hello.op == "hello" else { return refuse("expected hello first") }
        guard hello.wb == CoordinatorProtocol.version else {
            return refuse("protocol version \(hello.wb.map(String.init) ?? "none"); this coordinator speaks \(CoordinatorProtocol.version)")
        }
        guard hello.token == token else { return refuse("wrong job token: this coordinator belongs to another job (give its --token or WB_TOKEN)") }
        switch hello.role {
        case "agent":
            guard let host = hello.host, !host.isEmpty, let members = hello.members, !members.isEmpty else { return refuse("an agent names its host and members") }
            let link = AgentLink(connection: c, host: host, addresses: hello.addresses ?? [], members: members)
            c.peer = "the agent of host \(host)"
            state.lock()
            agents.append(link)
            state.unlock()
            var w = Message(op: "welcome")
            w.host = host
            try? c.send(w)
            log("host \(host) joined with \(members.map { "\($0.pid) (\($0.command))" }.joined(separator: ", "))")
        case "client":
            try? c.send(Message(op: "welcome"))
            while let request = try? c.receive() {
                var reply: Message
                switch request.op {
                case "checkpoint":
                    do {
                        reply = try checkpoint(into: request.dir ?? "", kill: request.kill ?? false)
                    } catch {
                        reply = Message(op: "failed")
                        reply.error = "\(error)"
                    }
                case "status":
                    reply = Message(op: "status")
                    reply.hosts = hosts()
                default:
                    reply = Message(op: "failed")
                    reply.error = "unknown request \(request.op)"
                }
                try? c.send(reply)
            }
        default:
            refuse("unknown role \(hello.role ?? "none")")
        }
    }

    private func members() -> [Message.Member] {
        state.lock()
        defer { state.unlock() }
        return agents.flatMap(\.members)
    }

    private func hosts() -> [Message.HostStatus] {
        state.lock()
        defer { state.unlock() }
        var out: [String: Message.HostStatus] = [:]
        for a in agents {
            out[a.host, default: Message.HostStatus(host: a.host, addresses: a.addresses, members: [])].members += a.members
        }
        return out.values.sorted { $0.host < $1.host }
    }

    /// A set checkpoint of every member into `dir`.
    public func checkpoint(into dir: String, kill: Bool) throws -> Message {
        checkpoints.lock()
        defer { checkpoints.unlock() }
        guard dir.hasPrefix("/") else { throw WBError.invalidArgument("the set directory must be an absolute path (\(dir))") }
        state.lock()
        let links = agents
        state.unlock()
        if links.isEmpty { throw WBError.failed("no member has joined this coordinator yet (wb agent --join or wb run --join)") }
        if Paths.exists(dir) && !((try? Paths.list(dir)) ?? []).isEmpty {
            throw WBError.invalidArgument("\(dir) exists and is not empty: give a new directory for the set")
        }
        try Paths.makeDirectories(dir)
        let started = Clock.monotonic
        var images: [(AgentLink, Message.CapturedImage)] = []
        do {
            _ = try phase("lock", links, timeout: lockTimeout) { _ in }
            let captured = try phase("capture", links, timeout: captureTimeout) { $0.dir = dir }
            for (link, answer) in captured { images += (answer.images ?? []).map { (link, $0) } }
            try writeManifest(dir, images)
        } catch {
            // Everyone is let go (their barriers lifted); the partial set goes.
            _ = try? phase("abort", links.filter { !$0.connection.closed }, timeout: lockTimeout) { _ in }
            drop(links.filter(\.connection.closed))
            for f in (try? Paths.list(dir)) ?? [] { Paths.remove("\(dir)/\(f)") }
            _ = rmdir(dir)
            throw error
        }
        // Every image is on disk (each was fsynced, and the manifest): the members may end.
        let released = try? phase("release", links, timeout: lockTimeout) { $0.kill = kill }
        if kill || released == nil { drop(links) }
        // Then the set keeps each file its images embed, and each page they hold, once (the
        // members run meanwhile).
        do {
            let saved = try SetFiles.share(in: dir, images: images.map(\.1.image))
            log(String(format: "the set's images share their files: %.1f MiB stored once instead of again", Double(saved) / 1048576))
            let pages = try SetPages.share(in: dir, images: images.map(\.1.image))
            log(String(format: "the set's images share their pages: %.1f MiB stored once instead of again", Double(pages) / 1048576))
        } catch {
            log("the set's images keep their own copies of their files or pages: \(error)")
        }
        var result = Message(op: "result")
        result.set = dir
        result.members = images.map { link, image in link.members.first { $0.pid == image.pid } }.compactMap { $0 }
        result.pauseSeconds = images.map(\.1.pauseSeconds).max()
        log(String(format: "set checkpoint of %d member%@ into %@ in %.3f s%@", images.count, images.count == 1 ? "" : "s", dir,
                   Clock.monotonic - started, kill ? "; the members are ended" : ""))
        return result
    }

    private func drop(_ gone: [AgentLink]) {
        state.lock()
        agents.removeAll { a in gone.contains { $0 === a } }
        state.unlock()
    }

    /// Sends request `op` to every agent and collects the answers; the first failure (an
    /// answer saying so, an agent gone or silent) is thrown, naming the host and member.
    private func phase(_ op: String, _ links: [AgentLink], timeout: Double, _ fill: (inout Message) -> Void) throws -> [(AgentLink, Message)] {
        let id = nextID
        nextID += 1
        var request = Message(op: op)
        request.id = id
        fill(&request)
        var failures: [String] = []
        var sent: [AgentLink] = []
        for l in links {
            do { try l.connection.send(request); sent.append(l) } catch { failures.append("host \(l.host): its agent is gone") }
        }
        var answers: [(AgentLink, Message)] = []
        let deadline = Clock.monotonic + timeout
        for l in sent {
            guard let a = try? l.connection.receive(timeout: max(0.1, deadline - Clock.monotonic)) else {
                failures.append(l.connection.closed ? "host \(l.host): its agent went away during the checkpoint"
                                                    : "host \(l.host): its agent did not answer \(op) within \(Int(timeout)) s")
                l.connection.close()
                continue
            }
            if a.op == "failed" {
                failures.append(a.error ?? "host \(l.host): \(op) failed")
            } else {
                answers.append((l, a))
            }
        }
        if let first = failures.first { throw WBError.failed("set checkpoint: \(first)") }
        return answers
    }

    private func writeManifest(_ dir: String, _ images: [(AgentLink, Message.CapturedImage)]) throws {
        var hosts: [String: SetManifest.Host] = [:]
        var members: [SetManifest.Member] = []
        var opened: [(member: SetManifest.Member, image: Image)] = []
        for (link, captured) in images {
            hosts[link.host, default: SetManifest.Host(name: link.host, addresses: [])].addresses += link.addresses
            let info = link.members.first { $0.pid == captured.pid }
            let image = try Image(path: "\(dir)/\(captured.image)")
            let m = SetManifest.Member(host: link.host, pid: captured.pid, parent: info?.parent, command: info?.command ?? "?",
                                       image: captured.image, tree: info?.tree ?? false, pauseSeconds: captured.pauseSeconds,
                                       rank: SetManifest.rank(of: image))
            members.append(m)
            opened.append((m, image))
        }
        let hostList = hosts.values.map { SetManifest.Host(name: $0.name, addresses: Array(Set($0.addresses)).sorted()) }.sorted { $0.name < $1.name }
        let manifest = SetManifest(hosts: hostList, members: members, channels: SetManifest.channels(opened))
        try manifest.write(to: dir)
    }
}
