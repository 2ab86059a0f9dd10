import Foundation
import Glibc
import WBCore

/// Where a fuzz input goes (`--input`).
public enum InputChannel: Equatable, Sendable, CustomStringConvertible {
    /// fd 0, or another fd: replaced by a file holding the input, read to its end.
    case fd(Int32)
    /// A file the process opens: rewritten before each run.
    case file(String)
    /// Bytes written into a buffer found by symbol; the length, when given, into a second
    /// symbol (a 4- or 8-byte integer).
    case memory(symbol: String, lengthSymbol: String?)
    /// A server's TCP port (and address, when it listens on several): each run is one
    /// connection to it.
    case tcp(host: String?, port: UInt16)
    /// A server's Unix stream socket, by path: each run is one connection to it.
    case unix(String)

    /// Parses stdin, fd:N, file:PATH, mem:SYMBOL[:LENGTH_SYMBOL], tcp:[HOST:]PORT, unix:PATH.
    public init(parsing text: String) throws {
        if text.hasPrefix("tcp:") {
            let rest = String(text.dropFirst(4))
            // The port follows the last colon; an IPv6 host may be bracketed.
            if let colon = rest.lastIndex(of: ":") {
                var host = String(rest[..<colon])
                if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
                if let port = UInt16(rest[rest.index(after: colon)...]), port > 0, !host.isEmpty { self = .tcp(host: host, port: port); return }
            } else if let port = UInt16(rest), port > 0 {
                self = .tcp(host: nil, port: port); return
            }
            throw WBError.invalidArgument("--input \(text): expected tcp:PORT or tcp:HOST:PORT (the port the server listens on)")
        }
        if text.hasPrefix("unix:"), text.count > 5 { self = .unix(String(text.dropFirst(5))); return }
        if text == "stdin" { self = .fd(0); return }
        if text.hasPrefix("fd:"), let n = Int32(text.dropFirst(3)), n >= 0 { self = .fd(n); return }
        if text.hasPrefix("file:"), text.count > 5 { self = .file(String(text.dropFirst(5))); return }
        if text.hasPrefix("mem:") {
            let parts = text.dropFirst(4).split(separator: ":").map(String.init)
            if parts.count == 1 || parts.count == 2 { self = .memory(symbol: parts[0], lengthSymbol: parts.count == 2 ? parts[1] : nil); return }
        }
        throw WBError.invalidArgument("--input \(text): expected stdin, fd:N, file:PATH, mem:SYMBOL[:LENGTH_SYMBOL], tcp:[HOST:]PORT or unix:PATH")
    }

    /// Whether the process reads the input through fds (not from memory).
    public var isRead: Bool {
        if case .memory = self { return false }
        return true
    }

    /// Whether the input is a connection to a server.
    public var isSocket: Bool {
        switch self {
        case .tcp, .unix: return true
        default: return false
        }
    }

    public var description: String {
        switch self {
        case .fd(0): return "stdin"
        case let .fd(n): return "fd:\(n)"
        case let .file(p): return "file:\(p)"
        case let .memory(s, l): return "mem:\(s)" + (l.map { ":\($0)" } ?? "")
        case let .tcp(host?, port): return host.contains(":" as Character) ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case let .tcp(nil, port): return "tcp:\(port)"
        case let .unix(path): return "unix:\(path)"
        }
    }
}
