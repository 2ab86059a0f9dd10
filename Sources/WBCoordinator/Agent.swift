import Foundation
import Glibc
import WBCheckpoint
import WBCore
import WBNet
import WBSystem
import WBTrace

/// A job's processes on one host (`wb agent --join`, and `wb run --join`): joins the
/// coordinator, and for each set checkpoint holds the traffic of its members' TCP
/// connections (the barrier), captures each member into the set directory, and lets go of
/// them or ends them. If the coordinator goes away, the lock is lifted and the members run on.
public final class Agent {
    public let coordinator: String
    public let token: String
    public let host: String
    public let members: [Message.Member]
    /// Lines for the user.
    public var progress: (String) -> Void = { _ in }
    /// Asked twice a second between requests: false once the members are gone (the agent
    /// then leaves the job).
    public var stillThere: () -> Bool = { true }
    private var lock: NetworkLock?

    public init(coordinator: String, token: String, host: String, members: [Message.Member]) {
        self.coordinator = coordinator; self.token = token; self.host = host; self.members = members
    }

    /// The members of `pids` as the coordinator is told of them.
    public static func describe(_ pids: [Int32], tree: Bool) throws -> [Message.Member] {
        try pids.map { pid in
            guard let status = try? ProcFS.status(pid) else {
                throw WBError.invalidArgument("--pid \(pid): no such process")
            }
            let command = (try? Paths.readText("/proc/\(pid)/comm"))?.trimming("\n") ?? "?"
            return Message.Member(pid: pid, parent: status["PPid"].flatMap { Int32($0) }, command: command, tree: tree)
        }
    }

    /// This host's addresses with their prefixes (not loopback).
    public static func addresses() -> [String] {
        var out: [String] = []
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var p = list
        while let e = p {
            defer { p = e.pointee.ifa_next }
            guard let a = e.pointee.ifa_addr, let m = e.pointee.ifa_netmask else { continue }
            let family = Int32(a.pointee.sa_family)
            guard family == AF_INET || family == AF_INET6 else { continue }
            var text = [CChar](repeating: 0, count: 64)
            var bits = 0
            if family == AF_INET {
                a.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { var x = $0.pointee.sin_addr; _ = inet_ntop(AF_INET, &x, &text, 64) }
                m.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { bits = $0.pointee.sin_addr.s_addr.nonzeroBitCount }
            } else {
                a.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { var x = $0.pointee.sin6_addr; _ = inet_ntop(AF_INET6, &x, &text, 64) }
                m.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { s in
                    withUnsafeBytes(of: s.pointee.sin6_addr) { bits = $0.reduce(0) { $0 + $1.nonzeroBitCount } }
                }
            }
            let address = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if address.hasPrefix("127.") || address == "::1" || address.hasPrefix("fe80:") { continue }
            out.append("\(address)/\(bits)")
        }
        return Array(Set(out)).sorted()
    }

    /// Joins and serves the coordinator until it goes away or the members are gone.
    public func run() throws {
        let c = try Connection.connect(to: coordinator)
        var hello = Message(op: "hello")
        hello.wb = CoordinatorProtocol.version
        hello.token = token
        hello.role = "agent"
        hello.host = host
        hello.addresses = Agent.addresses()
        hello.members = members
        try c.send(hello)
        guard let answer = try c.receive(timeout: 30) else {
            throw WBError.failed("the coordinator at \(coordinator) did not answer")
        }
        if answer.op != "welcome" { throw WBError.refused("the coordinator at \(coordinator) refused this agent: \(answer.error ?? answer.op)") }
        progress("joined \(coordinator) as host \(answer.host ?? host) with \(members.count) member\(members.count == 1 ? "" : "s")")
        defer { lift() }
        while true {
            guard let m = try c.receive(timeout: 0.5) else {
                if c.closed { break }
                if !stillThere() { progress("the members are gone; leaving the job"); return }
                continue
            }
            var reply = Message(op: "done")
            reply.id = m.id
            do {
                switch m.op {
                case "lock": reply.flows = try hold()
                case "capture": reply.images = try capture(into: m.dir ?? ".")
                case "release":
                    if m.kill == true { end() }
                    lift()
                case "abort": lift()
                default: throw WBError.failed("unknown request \(m.op)")
                }
            } catch {
                reply.op = "failed"
                reply.error = "\(error)"
                if let f = error as? MemberFailure { reply.member = f.pid }
            }
            try c.send(reply)
            if m.op == "release" && m.kill == true { return }
        }
        progress("the coordinator went away; the members run on")
    }

    /// The barrier: every established TCP connection of the members (and their
    /// descendants) stops carrying packets, both ways, until the release.
    private func hold() throws -> Int {
        lift()
        var pids: [Int32] = []
        for m in members {
            pids.append(m.pid)
            if m.tree { pids += Agent.descendants(of: m.pid) }
        }
        for m in members where kill(m.pid, 0) != 0 {
            throw MemberFailure(pid: m.pid, message: "member \(host):\(m.pid) (\(m.command)) is gone")
        }
        var inodes = Set<UInt64>()
        for pid in pids {
            for fd in (try? ProcFS.fds(pid)) ?? [] {
                guard let link = try? Paths.readLink("/proc/\(pid)/fd/\(fd)"), link.hasPrefix("socket:[") else { continue }
                if let inode = UInt64(link.dropFirst(8).dropLast()) { inodes.insert(inode) }
            }
        }
        let table = try SocketTable.read()
        let flows = inodes.compactMap { table.inet[$0] }.filter { $0.proto == Int32(IPPROTO_TCP) && $0.state != 10 /* listen */ && $0.peer.port != 0 }
            .map { NetworkLock.Flow(local: $0.local, peer: $0.peer) }
        let l = try NetworkLock(name: "wb_set_\(getpid())", targets: pids, keepIfGone: false)
        try l.drop(flows)
        lock = l
        return flows.count
    }

    private func capture(into dir: String) throws -> [Message.CapturedImage] {
        var out: [Message.CapturedImage] = []
        for m in members {
            let name = "\(Agent.safe(host))-\(m.pid).wbimg"
            var options = CheckpointOptions()
            options.after = .leaveRunning
            do {
                if m.tree {
                    let r = try TreeCheckpointer(root: m.pid, options: options).checkpoint(to: "\(dir)/\(name)")
                    out.append(.init(pid: m.pid, image: name, pauseSeconds: r.pauseSeconds))
                } else {
                    let r = try Checkpointer(pid: m.pid, options: options).checkpoint(to: "\(dir)/\(name)")
                    out.append(.init(pid: m.pid, image: name, pauseSeconds: r.pauseSeconds))
                }
            } catch {
                throw MemberFailure(pid: m.pid, message: "member \(host):\(m.pid) (\(m.command)): \(error)")
            }
            progress("captured \(host):\(m.pid) into \(name)")
        }
        return out
    }

    /// Ends the members (after every image of the set is safe).
    private func end() {
        for m in members {
            var pids = [m.pid]
            if m.tree { pids += Agent.descendants(of: m.pid) }
            for p in pids.reversed() { _ = Glibc.kill(p, SIGKILL) }
        }
        // Their ends must not reach the peers before these die too: the lock stays until
        // they are gone.
        let deadline = Clock.monotonic + 5
        while Clock.monotonic < deadline && members.contains(where: { (try? ProcFS.status($0.pid)["State"])?.hasPrefix("Z") == false }) {
            usleep(10_000)
        }
    }

    private func lift() {
        if let l = lock { try? l.letGo() }
        lock = nil
    }

    static func descendants(of pid: Int32) -> [Int32] {
        var out: [Int32] = []
        var frontier = [pid]
        while let p = frontier.popLast() {
            for tid in ((try? Paths.list("/proc/\(p)/task")) ?? []).compactMap({ Int32($0) }) {
                let text = (try? Paths.readText("/proc/\(p)/task/\(tid)/children")) ?? ""
                let kids = text.split(separator: " ").compactMap { Int32($0.trimming(" \n")) }
                out += kids
                frontier += kids
            }
        }
        return out
    }

    static func safe(_ name: String) -> String {
        String(name.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." ? $0 : "_" })
    }
}

/// A member that could not be captured (or is gone), named for the user.
struct MemberFailure: Error, CustomStringConvertible {
    var pid: Int32
    var message: String
    var description: String { message }
}
