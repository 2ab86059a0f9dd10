import Foundation
import Glibc
import WBCore
import WBSystem

/// The coordinator's protocol (docs/distributed.md): one JSON object per line over TCP.
/// Every connection starts with `hello` (protocol version, the job's token, the role), which
/// the coordinator answers with `welcome` or `refused` (and closes).
///
/// agent → coordinator: hello {role: agent, host, addresses, members}
/// coordinator → agent: lock {id} · capture {id, dir} · release {id, kill} · abort {id}
/// agent → coordinator: done {id, flows?, images?} · failed {id, error, member?}
/// client → coordinator: hello {role: client}, then checkpoint {dir, kill} or status
/// coordinator → client: result {set, members, pauseSeconds} · status {hosts} · failed {error}
public enum CoordinatorProtocol {
    public static let version = 1
    /// The default port of `wb coordinator --listen HOST`.
    public static let defaultPort: UInt16 = 7717
}

/// One message; which fields are set depends on `op`.
public struct Message: Codable, Sendable {
    public var op: String
    public var id: Int?
    public var wb: Int?
    public var token: String?
    public var role: String?
    public var host: String?
    /// The host's addresses with their prefix lengths ("10.1.0.2/24").
    public var addresses: [String]?
    public var members: [Member]?
    public var dir: String?
    public var kill: Bool?
    public var error: String?
    public var member: Int32?
    public var flows: Int?
    public var images: [CapturedImage]?
    public var set: String?
    public var pauseSeconds: Double?
    public var hosts: [HostStatus]?

    public init(op: String) { self.op = op }

    public struct Member: Codable, Sendable {
        public var pid: Int32
        public var parent: Int32?
        public var command: String
        /// The member's descendants go into its image (wb run --join).
        public var tree: Bool
        public init(pid: Int32, parent: Int32?, command: String, tree: Bool) {
            self.pid = pid; self.parent = parent; self.command = command; self.tree = tree
        }
    }

    public struct CapturedImage: Codable, Sendable {
        public var pid: Int32
        /// The image's file name in the set directory.
        public var image: String
        public var pauseSeconds: Double
        public init(pid: Int32, image: String, pauseSeconds: Double) { self.pid = pid; self.image = image; self.pauseSeconds = pauseSeconds }
    }

    public struct HostStatus: Codable, Sendable {
        public var host: String
        public var addresses: [String]
        public var members: [Member]
    }
}

/// A line-oriented connection carrying `Message`s.
public final class Connection: @unchecked Sendable {
    public let fd: FileDescriptor
    private var buffer: [UInt8] = []
    /// Who is at the other end, for messages.
    public var peer: String
    /// The other end closed the connection (or it was closed here).
    public private(set) var closed = false

    public func close() {
        if !closed { fd.close() }
        closed = true
    }

    public init(fd: FileDescriptor, peer: String) { self.fd = fd; self.peer = peer }

    /// Connects to `address` (HOST:PORT, [V6]:PORT).
    public static func connect(to address: String, timeout: Double = 10) throws -> Connection {
        let (host, port) = try Endpoint.parse(address)
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let r = getaddrinfo(host, "\(port)", &hints, &list)
        guard r == 0, let first = list else {
            throw WBError.invalidArgument("\(address): cannot resolve \(host)")
        }
        defer { freeaddrinfo(list) }
        var last: Int32 = ECONNREFUSED
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let e = entry {
            let s = socket(e.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if s >= 0 {
                var t = timeval(tv_sec: Int(timeout), tv_usec: 0)
                setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &t, UInt32(MemoryLayout<timeval>.size))
                if Glibc.connect(s, e.pointee.ai_addr, e.pointee.ai_addrlen) == 0 {
                    var one: Int32 = 1
                    setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4)
                    return Connection(fd: FileDescriptor(owning: s), peer: address)
                }
                last = errno
                Glibc.close(s)
            }
            entry = e.pointee.ai_next
        }
        throw WBError.system(call: "connect", errno: last, what: "reaching the coordinator at \(address) (is wb coordinator running there?)")
    }

    public func send(_ m: Message) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        try fd.writeAll(Array(try encoder.encode(m)) + [10])
    }

    /// The next message; nil at end of file (then `closed`) or after `timeout` seconds.
    public func receive(timeout: Double? = nil) throws -> Message? {
        if closed { return nil }
        let deadline = timeout.map { Clock.monotonic + $0 }
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                if line.isEmpty { continue }
                do {
                    return try JSONDecoder().decode(Message.self, from: Data(line))
                } catch {
                    throw WBError.failed("\(peer) sent something that is not a wb coordinator message (\(error))")
                }
            }
            if buffer.count > 16 << 20 { throw WBError.failed("\(peer) sent a line longer than 16 MiB") }
            var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
            let wait = deadline.map { Int32(max(0, min(1e6, ($0 - Clock.monotonic) * 1000))) } ?? -1
            let r = poll(&p, 1, wait)
            if r < 0 && errno == EINTR { continue }
            if r == 0 { return nil }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd.rawValue, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { closed = true; return nil }
            buffer += chunk.prefix(n)
        }
    }
}

/// HOST:PORT as the coordinator's address.
public enum Endpoint {
    public static func parse(_ text: String, defaultPort: UInt16? = nil) throws -> (host: String, port: UInt16) {
        var host = text, port: UInt16? = defaultPort
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") { port = UInt16(rest.dropFirst()) }
        } else if let colon = text.lastIndex(of: ":"), text.filter({ $0 == ":" }).count == 1 {
            host = String(text[..<colon])
            port = UInt16(text[text.index(after: colon)...])
        }
        guard let port, !host.isEmpty else {
            throw WBError.invalidArgument("\(text): expected HOST:PORT (e.g. 127.0.0.1:\(CoordinatorProtocol.defaultPort))")
        }
        return (host, port)
    }
}

/// A command's connection to the coordinator (`wb checkpoint --coordinator`).
public enum CoordinatorClient {
    /// Connects and says hello as a client.
    public static func open(_ address: String, token: String) throws -> Connection {
        let c = try Connection.connect(to: address)
        var hello = Message(op: "hello")
        hello.wb = CoordinatorProtocol.version
        hello.token = token
        hello.role = "client"
        try c.send(hello)
        guard let answer = try c.receive(timeout: 30) else { throw WBError.failed("the coordinator at \(address) did not answer") }
        if answer.op != "welcome" { throw WBError.refused("the coordinator at \(address) refused: \(answer.error ?? answer.op)") }
        return c
    }

    /// A set checkpoint of the whole job into `dir`.
    public static func checkpoint(_ address: String, token: String, dir: String, kill: Bool) throws -> Message {
        let c = try open(address, token: token)
        defer { c.close() }
        var m = Message(op: "checkpoint")
        m.dir = dir
        m.kill = kill
        try c.send(m)
        guard let answer = try c.receive() else { throw WBError.failed("the coordinator at \(address) went away during the checkpoint") }
        if answer.op == "failed" { throw WBError.failed(answer.error ?? "the set checkpoint failed") }
        return answer
    }

    public static func status(_ address: String, token: String) throws -> [Message.HostStatus] {
        let c = try open(address, token: token)
        defer { c.close() }
        try c.send(Message(op: "status"))
        guard let answer = try c.receive(timeout: 30) else { throw WBError.failed("the coordinator at \(address) did not answer") }
        return answer.hosts ?? []
    }
}
