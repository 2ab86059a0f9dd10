import Foundation
import Glibc
import WBCore
import WBSystem

/// Socket addresses between their kernel form (struct sockaddr_*) and the image's.
extension SocketAddress {
    /// The address in `raw` (`length` bytes of a struct sockaddr), nil for a family wb does
    /// not know.
    public static func decode(_ raw: [UInt8], length: Int) -> SocketAddress? {
        guard length >= 2 else { return length == 0 ? nil : SocketAddress(host: "") }
        let family = Int32(raw[0]) | Int32(raw[1]) << 8
        func port(_ at: Int) -> UInt16 { UInt16(raw[at]) << 8 | UInt16(raw[at + 1]) }
        switch family {
        case AF_INET where length >= 8:
            return SocketAddress(host: text(AF_INET, Array(raw[4..<8])), port: port(2))
        case AF_INET6 where length >= 24:
            var a = SocketAddress(host: text(AF_INET6, Array(raw[8..<24])), port: port(2))
            let scope = UInt32(raw[24]) | UInt32(raw[25]) << 8 | UInt32(raw[26]) << 16 | UInt32(raw[27]) << 24
            if length >= 28 && scope != 0 { a.scope = scope }
            return a
        case AF_UNIX:
            let path = raw[2..<length]
            if path.isEmpty { return SocketAddress(host: "") }
            if path.first == 0 {
                var a = SocketAddress(host: String(decoding: path.dropFirst(), as: UTF8.self))
                a.abstract = true
                return a
            }
            return SocketAddress(host: String(decoding: path.prefix { $0 != 0 }, as: UTF8.self))
        default:
            return nil
        }
    }

    private static func text(_ family: Int32, _ bytes: [UInt8]) -> String {
        var out = [CChar](repeating: 0, count: 64)
        _ = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &out, 64) }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The struct sockaddr for this address in `family`.
    public func encode(family: Int32) throws -> [UInt8] {
        func le16(_ v: Int32) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8 & 0xff)] }
        switch family {
        case AF_INET:
            var addr = [UInt8](repeating: 0, count: 4)
            guard inet_pton(AF_INET, host, &addr) == 1 else { throw WBError.failed("\(host) is not an IPv4 address") }
            return le16(AF_INET) + [UInt8(port >> 8), UInt8(port & 0xff)] + addr + [UInt8](repeating: 0, count: 8)
        case AF_INET6:
            var addr = [UInt8](repeating: 0, count: 16)
            guard inet_pton(AF_INET6, host, &addr) == 1 else { throw WBError.failed("\(host) is not an IPv6 address") }
            let s = scope ?? 0
            return le16(AF_INET6) + [UInt8(port >> 8), UInt8(port & 0xff), 0, 0, 0, 0] + addr
                + [UInt8(s & 0xff), UInt8(s >> 8 & 0xff), UInt8(s >> 16 & 0xff), UInt8(s >> 24)]
        case AF_UNIX:
            let name = Array(host.utf8)
            guard name.count < 108 else { throw WBError.failed("Unix socket name \(host) is too long") }
            if abstract == true { return le16(AF_UNIX) + [0] + name }
            return le16(AF_UNIX) + name + [0]
        default:
            throw WBError.failed("socket family \(family) has no addresses wb knows")
        }
    }
}

/// getsockname / getpeername of an fd wb holds.
public enum SocketName {
    public static func local(_ fd: Int32) -> SocketAddress? { name(fd, peer: false) }
    public static func peer(_ fd: Int32) -> SocketAddress? { name(fd, peer: true) }

    private static func name(_ fd: Int32, peer: Bool) -> SocketAddress? {
        var raw = [UInt8](repeating: 0, count: 128)
        var length = socklen_t(raw.count)
        let r = raw.withUnsafeMutableBytes { b in
            b.baseAddress!.withMemoryRebound(to: sockaddr.self, capacity: 1) { peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length) }
        }
        guard r == 0 else { return nil }
        return SocketAddress.decode(raw, length: Int(length))
    }

    /// bind() or connect() to `address`.
    static func bind(_ fd: Int32, _ address: SocketAddress, family: Int32) throws {
        try call(fd, address, family: family, "bind") { Glibc.bind(fd, $0, $1) }
    }

    static func connect(_ fd: Int32, _ address: SocketAddress, family: Int32) throws {
        try call(fd, address, family: family, "connect") { Glibc.connect(fd, $0, $1) }
    }

    private static func call(_ fd: Int32, _ address: SocketAddress, family: Int32, _ name: String,
                             _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) throws {
        let raw = try address.encode(family: family)
        let r = raw.withUnsafeBytes { b in b.baseAddress!.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(raw.count)) } }
        if r != 0 { throw WBError.system(call: name, errno: errno, what: "\(name == "bind" ? "binding" : "connecting") to \(address)") }
    }
}
