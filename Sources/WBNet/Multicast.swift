import CWBNative
import Foundation
import Glibc
import WBCore
import WBSystem

/// Multicast memberships: the kernel lists the groups joined on each interface
/// (/proc/net/igmp, /proc/net/igmp6) but not which socket joined them; each socket is asked
/// about every listed group (MCAST_MSFILTER answers only for a group it joined).
public enum Multicast {
    /// A group joined on an interface by some socket of this network namespace.
    public struct Candidate: Sendable {
        public var family: Int32
        public var interface: UInt32
        public var interfaceName: String
        public var group: [UInt8]
    }

    /// The groups joined on this namespace's interfaces, less the all-hosts groups the kernel
    /// joins itself (224.0.0.1, ff01::1, ff02::1, and the solicited-node ones).
    public static func candidates() -> [Candidate] {
        var out: [Candidate] = []
        var index: UInt32 = 0, name = ""
        for line in ((try? Paths.readText("/proc/net/igmp")) ?? "").split(separator: "\n").dropFirst() {
            if let first = line.first, first.isNumber {
                let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                index = UInt32(f.first ?? "") ?? 0
                name = f.count > 1 ? String(f[1]) : ""
                continue
            }
            guard let hex = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).first, let v = UInt32(hex, radix: 16) else { continue }
            // Printed as the host's integer of the address in network order.
            let bytes = withUnsafeBytes(of: v.littleEndian) { Array($0) }
            if bytes == [224, 0, 0, 1] { continue }
            out.append(Candidate(family: AF_INET, interface: index, interfaceName: name, group: bytes))
        }
        for line in ((try? Paths.readText("/proc/net/igmp6")) ?? "").split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 3, let i = UInt32(f[0]), f[2].count == 32 else { continue }
            let hex = Array(f[2])
            let bytes = (0..<16).compactMap { UInt8(String(hex[$0 * 2..<$0 * 2 + 2]), radix: 16) }
            guard bytes.count == 16 else { continue }
            if bytes[0] == 0xff && (bytes[1] == 0x01 || bytes[1] == 0x02) && bytes[2..<15].allSatisfy({ $0 == 0 }) && bytes[15] == 1 { continue }
            if bytes[0] == 0xff && bytes[1] == 0x02 && bytes[11] == 1 && bytes[12] == 0xff { continue }
            out.append(Candidate(family: AF_INET6, interface: i, interfaceName: String(f[1]), group: bytes))
        }
        return out
    }

    /// The groups socket `fd` (of `family`) joined, among `candidates`.
    static func memberships(_ fd: Int32, family: Int32, candidates: [Candidate]) -> [MulticastMembership] {
        var out: [MulticastMembership] = []
        for c in candidates where c.family == family {
            var exclude: Int32 = 0, count: Int32 = 0
            let step = family == AF_INET ? 4 : 16
            var sources = [UInt8](repeating: 0, count: 64 * step)
            guard wb_mcast_filter(fd, family, c.interface, c.group, &exclude, &sources, 64, &count) == 0 else { continue }
            let listed = (0..<Int(min(count, 64))).map { text(family, Array(sources[$0 * step..<($0 + 1) * step])) }
            out.append(MulticastMembership(group: text(family, c.group), interface: c.interfaceName, exclude: exclude != 0,
                                           sources: listed.isEmpty ? nil : listed))
        }
        return out
    }

    /// Joins `m` again on socket `fd`; the interface is found by its name here.
    static func join(_ fd: Int32, family: Int32, _ m: MulticastMembership, name: String) throws {
        let index = if_nametoindex(m.interface)
        guard index > 0 else {
            throw WBError.refused("\(name) had joined multicast group \(m.group) on \(m.interface), which is not here; restore where it is, or with --new-netns")
        }
        var group = [UInt8](repeating: 0, count: family == AF_INET ? 4 : 16)
        guard inet_pton(family, m.group, &group) == 1 else { throw WBError.failed("\(name): \(m.group) is not a multicast group") }
        var sources: [UInt8] = []
        for s in m.sources ?? [] {
            var b = [UInt8](repeating: 0, count: group.count)
            guard inet_pton(family, s, &b) == 1 else { throw WBError.failed("\(name): \(s) is not a source address") }
            sources += b
        }
        try check(wb_mcast_join(fd, family, index, group, m.exclude ? 1 : 0, sources, Int32(m.sources?.count ?? 0)),
                  "setsockopt(MCAST_JOIN_GROUP)", "joining multicast group \(m.group) on \(m.interface) with \(name)")
    }

    private static func text(_ family: Int32, _ bytes: [UInt8]) -> String {
        var out = [CChar](repeating: 0, count: 64)
        _ = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &out, 64) }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
