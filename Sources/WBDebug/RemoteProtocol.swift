import Foundation
import Glibc
import WBCore

/// The gdb remote serial protocol's framing over a connected socket: `$payload#cs` packets,
/// `+`/`-` acknowledgements until no-ack mode, `}`-escaping of binary data, and the 0x03
/// byte gdb sends to interrupt a running target.
public final class RemoteConnection {
    public enum Incoming: Equatable { case packet([UInt8]), interrupt, closed }

    public let fd: Int32
    public var noAck = false
    private var buffer: [UInt8] = []

    public init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    /// The next packet or interrupt, waiting up to `timeout` ms (-1: forever); nil on timeout.
    public func receive(timeout: Int32 = -1) throws -> Incoming? {
        while true {
            if let item = parse() { return item }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, timeout)
            if r == 0 { return nil }
            if r < 0 { if errno == EINTR { continue }; throw WBError.system(call: "poll", errno: errno, what: "waiting for gdb") }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return .closed }
            buffer += chunk[0..<n]
        }
    }

    private func parse() -> Incoming? {
        while let first = buffer.first {
            switch first {
            case 0x03:
                buffer.removeFirst()
                return .interrupt
            case UInt8(ascii: "$"):
                guard let hash = buffer.firstIndex(of: UInt8(ascii: "#")), buffer.count >= hash + 3 else { return nil }
                let payload = Array(buffer[1..<hash])
                let sum = String(decoding: buffer[(hash + 1)...(hash + 2)], as: UTF8.self)
                buffer.removeSubrange(0...(hash + 2))
                let good = UInt8(sum, radix: 16) == RemoteConnection.checksum(payload)
                if !noAck { sendRaw(good ? [UInt8(ascii: "+")] : [UInt8(ascii: "-")]) }
                if good || noAck { return .packet(payload) }
            default:
                // Acknowledgements and noise between packets.
                buffer.removeFirst()
            }
        }
        return nil
    }

    public func send(_ payload: [UInt8]) {
        var out: [UInt8] = [UInt8(ascii: "$")]
        out += payload
        out.append(UInt8(ascii: "#"))
        out += Array(String(format: "%02x", RemoteConnection.checksum(payload)).utf8)
        sendRaw(out)
    }

    public func send(_ text: String) { send(Array(text.utf8)) }

    private func sendRaw(_ bytes: [UInt8]) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n <= 0 { if errno == EINTR { continue }; return }
            done += n
        }
    }

    public static func checksum(_ payload: [UInt8]) -> UInt8 {
        payload.reduce(UInt8(0)) { $0 &+ $1 }
    }

    /// Binary data escaped for a reply (x packets, qXfer).
    public static func escape(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        for b in data {
            if b == 0x23 || b == 0x24 || b == 0x7D || b == 0x2A { out += [0x7D, b ^ 0x20] } else { out.append(b) }
        }
        return out
    }

    /// Binary data as sent in X packets.
    public static func unescape(_ data: ArraySlice<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        var escaped = false
        for b in data {
            if escaped { out.append(b ^ 0x20); escaped = false } else if b == 0x7D { escaped = true } else { out.append(b) }
        }
        return out
    }
}

/// Hex helpers for the protocol.
public enum Hex {
    public static func encode(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
    public static func decode(_ text: Substring) -> [UInt8]? {
        guard text.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        var i = text.startIndex
        while i < text.endIndex {
            let j = text.index(i, offsetBy: 2)
            guard let b = UInt8(text[i..<j], radix: 16) else { return nil }
            out.append(b)
            i = j
        }
        return out
    }
    /// A little-endian value of `bytes` bytes, as hex.
    public static func littleEndian(_ value: UInt64, bytes: Int) -> String {
        encode((0..<bytes).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) })
    }
}

/// Linux signal numbers to gdb's and back (gdb numbers signals its own way).
public enum GDBSignals {
    static let fromLinux: [Int32: Int32] = [
        1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 10, 8: 8, 9: 9, 10: 30, 11: 11, 12: 31, 13: 13, 14: 14, 15: 15,
        17: 20, 18: 19, 19: 17, 20: 18, 21: 21, 22: 22, 23: 16, 24: 24, 25: 25, 26: 26, 27: 27, 28: 28, 29: 23,
        30: 32, 31: 12, 32: 77, 64: 78,
    ]
    public static func gdb(_ linux: Int32) -> Int32 {
        if let g = fromLinux[linux] { return g }
        if linux >= 33 && linux <= 63 { return 45 + (linux - 33) }
        return 0
    }
    public static func linux(_ gdb: Int32) -> Int32 {
        if let l = fromLinux.first(where: { $0.value == gdb })?.key { return l }
        if gdb >= 45 && gdb <= 75 { return 33 + (gdb - 45) }
        return 0
    }
}
