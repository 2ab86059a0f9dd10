import Foundation
import Glibc
import WBCore
import WBSystem

/// A set image: a directory holding one image per member of a distributed job (each a
/// process or a tree) and `manifest.json`, which says which hosts the job ran on (names and
/// addresses), which member ran where, and which TCP connections joined members (channels).
public struct SetManifest: Codable, Sendable {
    public static let currentFormat = 1
    public static let fileName = "manifest.json"

    public var format: Int
    /// When the set was taken (ISO 8601).
    public var created: String
    public var hosts: [Host]
    public var members: [Member]
    public var channels: [Channel]

    public struct Host: Codable, Sendable {
        public var name: String
        /// Addresses with their prefix lengths ("10.1.0.2/24").
        public var addresses: [String]
        public init(name: String, addresses: [String]) { self.name = name; self.addresses = addresses }
    }

    public struct Member: Codable, Sendable {
        public var host: String
        public var pid: Int32
        public var parent: Int32?
        public var command: String
        /// The image's file name in the set directory.
        public var image: String
        /// The member's descendants are in its image.
        public var tree: Bool
        public var pauseSeconds: Double?
        /// The member's MPI rank (or Slurm task), from its environment, when it had one.
        public var rank: Int?
        public init(host: String, pid: Int32, parent: Int32?, command: String, image: String, tree: Bool, pauseSeconds: Double?,
                    rank: Int? = nil) {
            self.host = host; self.pid = pid; self.parent = parent; self.command = command; self.image = image; self.tree = tree
            self.pauseSeconds = pauseSeconds; self.rank = rank
        }
        /// HOST:PID, as users name a member.
        public var name: String { "\(host):\(pid)" }
    }

    /// A TCP connection between two processes of the set (a process of a member's tree).
    public struct Channel: Codable, Sendable {
        public var a: End
        public var b: End
        /// Bytes sent and not yet read, both ways (send queues, unsent bytes, receive queues).
        public var bytesInFlight: Int
        public struct End: Codable, Sendable {
            public var host: String
            public var pid: Int32
            public var fd: Int32
            public var address: String
        }
    }

    public init(hosts: [Host], members: [Member], channels: [Channel]) {
        format = SetManifest.currentFormat
        let f = ISO8601DateFormatter()
        created = f.string(from: Date())
        self.hosts = hosts; self.members = members; self.channels = channels
    }

    /// The channels between the processes of `images` (member → its opened image): every
    /// connection whose two ends are both in the set.
    public static func channels(_ images: [(member: Member, image: Image)]) -> [Channel] {
        struct Socket { var end: Channel.End; var local: String; var peer: String; var bytes: Int }
        var sockets: [Socket] = []
        for (m, image) in images {
            for p in image.metadata.processes {
                for f in p.fds {
                    guard let net = f.net, let tcp = net.tcp, let local = net.local, let peer = net.peer else { continue }
                    let bytes = tcp.sendQueue.count + tcp.receiveQueue.count
                    sockets.append(Socket(end: Channel.End(host: m.host, pid: p.pid, fd: f.fd, address: local.description),
                                          local: local.description, peer: peer.description, bytes: bytes))
                }
            }
        }
        var out: [Channel] = []
        var used = Set<Int>()
        for (i, s) in sockets.enumerated() where !used.contains(i) {
            guard let j = sockets.indices.first(where: { $0 != i && !used.contains($0) && sockets[$0].local == s.peer && sockets[$0].peer == s.local })
            else { continue }
            used.insert(i); used.insert(j)
            out.append(Channel(a: s.end, b: sockets[j].end, bytesInFlight: s.bytes + sockets[j].bytes))
        }
        return out
    }

    /// Writes the manifest into `dir` (atomically).
    public func write(to dir: String) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let path = "\(dir)/\(SetManifest.fileName)"
        let temporary = path + ".tmp"
        let fd = try FileDescriptor.open(temporary, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644, what: "writing \(path)")
        try fd.writeAll(Array(try e.encode(self)) + [10])
        _ = fsync(fd.rawValue)
        fd.close()
        try Paths.rename(temporary, to: path)
    }

    /// Whether `path` is a set image (a directory with a manifest).
    public static func isSet(_ path: String) -> Bool {
        (try? Paths.stat(path))?.isDirectory == true && Paths.exists("\(path)/\(fileName)")
    }

    /// Reads and checks the manifest of the set at `dir`: format, names, and that every
    /// member's image is a plain file name inside the set.
    public static func read(_ dir: String) throws -> SetManifest {
        let path = "\(dir)/\(fileName)"
        guard let raw = try? Paths.readBytes(path, limit: 64 << 20) else {
            throw WBError.badImage(path: dir, problem: "no \(fileName) in it: not a set image (wb checkpoint --coordinator writes one)")
        }
        let m: SetManifest
        do { m = try JSONDecoder().decode(SetManifest.self, from: Data(raw)) } catch {
            throw WBError.badImage(path: path, problem: "not a set manifest (\(error))")
        }
        guard m.format == currentFormat else {
            throw WBError.badImage(path: path, problem: "set format \(m.format); this wb reads format \(currentFormat)")
        }
        let hostNames = Set(m.hosts.map(\.name))
        guard hostNames.count == m.hosts.count else { throw WBError.badImage(path: path, problem: "a host is listed twice") }
        for h in m.hosts {
            guard !h.name.isEmpty, h.name.utf8.count <= 64 else { throw WBError.badImage(path: path, problem: "a host without a usable name") }
            for a in h.addresses where Address(a) == nil {
                throw WBError.badImage(path: path, problem: "host \(h.name): \(a) is not an address with a prefix length")
            }
        }
        for member in m.members {
            guard hostNames.contains(member.host) else {
                throw WBError.badImage(path: path, problem: "member \(member.name) is on host \(member.host), which the set does not list")
            }
            guard !member.image.isEmpty, !member.image.contains("/" as Character), member.image != ".", member.image != ".." else {
                throw WBError.badImage(path: path, problem: "member \(member.name): image name \(member.image) is not a file of the set")
            }
        }
        if m.members.isEmpty { throw WBError.badImage(path: path, problem: "the set has no members") }
        return m
    }

    /// An address with its prefix length.
    public struct Address: Sendable {
        public var host: String
        public var prefix: Int
        public var isIPv6: Bool { host.contains(":" as Character) }
        public init?(_ text: String) {
            let parts = text.split(separator: "/")
            guard parts.count == 2, let p = Int(parts[1]) else { return nil }
            let h = String(parts[0])
            var buffer = [UInt8](repeating: 0, count: 16)
            let six = h.contains(":" as Character)
            guard inet_pton(six ? AF_INET6 : AF_INET, h, &buffer) == 1, p >= 0, p <= (six ? 128 : 32) else { return nil }
            host = h; prefix = p
        }
    }
}

extension SetManifest {
    /// Where launchers put a process's rank: Open MPI, PMIx, MPICH and Hydra (PMI),
    /// MVAPICH, Cray PALS, and Slurm's task id last.
    static let rankVariables = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "PALS_RANKID", "SLURM_PROCID"]

    /// The rank of the image's (top) process, from its environment as its memory held it.
    public static func rank(of image: Image) -> Int? {
        let mm = image.process.mm
        guard mm.envEnd > mm.envStart, mm.envEnd - mm.envStart < 1 << 20,
              let memory = try? ImageMemory(image: image, files: ResolvedFiles()),
              let bytes = memory.read(mm.envStart, count: Int(mm.envEnd - mm.envStart)) else { return nil }
        var environment: [String: String] = [:]
        for entry in bytes.split(separator: 0) {
            let text = String(decoding: entry, as: UTF8.self)
            guard let eq = text.firstIndex(of: "=") else { continue }
            environment[String(text[..<eq])] = String(text[text.index(after: eq)...])
        }
        for name in rankVariables { if let v = environment[name].flatMap({ Int($0) }), v >= 0 { return v } }
        return nil
    }
}
