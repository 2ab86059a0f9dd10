import Foundation
import WBCore
import WBVerbs
import WBSystem

/// What `wb inspect SET` shows: hosts, members, channels and the bytes in flight on them.
public struct SetReport: Codable, Sendable {
    public var set: String
    public var format: Int
    public var created: String
    public var hosts: [SetManifest.Host]
    public var members: [Member]
    public var channels: [SetManifest.Channel]
    public var bytesInFlight: Int

    public struct Member: Codable, Sendable {
        public var host: String
        public var pid: Int32
        public var parent: Int32?
        public var command: String
        public var image: String
        public var imageBytes: UInt64
        public var processes: Int
        public var tree: Bool
        public var pauseSeconds: Double?
        /// The member's verbs state in one line, when it ran on wb's verbs layer.
        public var verbs: String?
        /// Its MPI rank, when the manifest knows it.
        public var rank: Int?
    }

    /// Reads the set at `dir`, opening (and with `verify`, checking) every member's image.
    public init(dir: String, verify: Bool) throws {
        let m = try SetManifest.read(dir)
        set = Paths.absolute(dir)
        format = m.format
        created = m.created
        hosts = m.hosts
        channels = m.channels
        bytesInFlight = m.channels.reduce(0) { $0 + $1.bytesInFlight }
        members = try m.members.map { member in
            let path = "\(dir)/\(member.image)"
            let image = try Image(path: path)
            if verify { try image.verifyData() }
            let verbs = try VerbsState.read(image).map(\.summary)
            return Member(host: member.host, pid: member.pid, parent: member.parent, command: member.command, image: member.image,
                          imageBytes: (try? Paths.stat(path).size) ?? 0, processes: image.metadata.processes.count, tree: member.tree,
                          pauseSeconds: member.pauseSeconds, verbs: verbs.isEmpty ? nil : verbs.joined(separator: "; "), rank: member.rank)
        }
    }

    public var text: String {
        var lines = ["SET \(set) (format \(format), taken \(created))",
                     "HOSTS (\(hosts.count))"]
        for h in hosts {
            let here = members.filter { $0.host == h.name }
            lines.append("  \(h.name)  \(h.addresses.joined(separator: ", "))  \(here.count) member\(here.count == 1 ? "" : "s")")
        }
        lines.append("MEMBERS (\(members.count))")
        for m in members {
            let pause = m.pauseSeconds.map { String(format: ", paused %.3f s", $0) } ?? ""
            let rank = m.rank.map { "  rank \($0)" } ?? ""
            lines.append("  \(m.host):\(m.pid)\(rank)  \(m.command)  \(m.image) (\(m.imageBytes) bytes, \(m.processes) process\(m.processes == 1 ? "" : "es")\(pause))")
            if let v = m.verbs { lines.append("    verbs: \(v)") }
        }
        lines.append("CHANNELS (\(channels.count), \(bytesInFlight) bytes in flight)")
        for c in channels {
            lines.append("  \(c.a.host):\(c.a.pid) fd \(c.a.fd) \(c.a.address) <-> \(c.b.host):\(c.b.pid) fd \(c.b.fd) \(c.b.address)  \(c.bytesInFlight) bytes in flight")
        }
        return lines.joined(separator: "\n")
    }
}
