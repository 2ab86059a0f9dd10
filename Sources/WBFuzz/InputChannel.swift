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

    /// Parses stdin, fd:N, file:PATH, mem:SYMBOL[:LENGTH_SYMBOL].
    public init(parsing text: String) throws {
        if text == "stdin" { self = .fd(0); return }
        if text.hasPrefix("fd:"), let n = Int32(text.dropFirst(3)), n >= 0 { self = .fd(n); return }
        if text.hasPrefix("file:"), text.count > 5 { self = .file(String(text.dropFirst(5))); return }
        if text.hasPrefix("mem:") {
            let parts = text.dropFirst(4).split(separator: ":").map(String.init)
            if parts.count == 1 || parts.count == 2 { self = .memory(symbol: parts[0], lengthSymbol: parts.count == 2 ? parts[1] : nil); return }
        }
        throw WBError.invalidArgument("--input \(text): expected stdin, fd:N, file:PATH or mem:SYMBOL[:LENGTH_SYMBOL]")
    }

    /// Whether the process reads the input through fds (not from memory).
    public var isRead: Bool {
        if case .memory = self { return false }
        return true
    }

    public var description: String {
        switch self {
        case .fd(0): return "stdin"
        case let .fd(n): return "fd:\(n)"
        case let .file(p): return "file:\(p)"
        case let .memory(s, l): return "mem:\(s)" + (l.map { ":\($0)" } ?? "")
        }
    }
}
