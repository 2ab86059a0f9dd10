import Foundation
import Glibc
import WBCore

/// The gdb remote serial protocol's framing over a connected socket: `$payload#cs` packets,
/// `+`/`-` acknowledgements until no-ack mode, `}`-escaping of binary data, and the 0x03
/// byte gdb sends to interrupt a running target.
///
/// Whatever arrives, memory stays bounded: bytes are parsed as they come (one read's worth is
/// held), and a packet longer than `maxPayload` is dropped on the way and reported as
/// `.oversized` once its end has gone by, so that the server can answer it with an error.
public final class RemoteConnection {
    public enum Incoming: Equatable { case packet([UInt8]), interrupt, closed, oversized }

    /// The longest payload taken. qSupported advertises less (PacketSize), so gdb never comes
    /// near it; only a client that ignores PacketSize does.
    public static let maxPayload = 1 << 20

    public let fd: Int32
    public var noAck = false

    /// Bytes read and not parsed yet: input[inputAt...].
    private var input: [UInt8] = []
    private var inputAt = 0
    private enum State { case between, payload, checksum, discarding, discardedChecksum }
    private var state = State.between
    private var payload: [UInt8] = []
    private var checksumText: [UInt8] = []

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
            input = [UInt8](repeating: 0, count: 65536)
            inputAt = 0
            let n = input.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { input = []; continue }
            if n <= 0 { input = []; return .closed }
            input.removeSubrange(n...)
        }
    }

    /// The next complete item in `input`, consuming what it parses; nil when `input` is used up.
    private func parse() -> Incoming? {
        let hash = UInt8(ascii: "#")
        while inputAt < input.count {
            switch state {
            case .between:
                let b = input[inputAt]
                inputAt += 1
                if b == 0x03 { return .interrupt }
                if b == UInt8(ascii: "$") { state = .payload; payload = [] }
                // Anything else is an acknowledgement or noise between packets.
            case .payload, .discarding:
                // Up to the '#' at once: payloads are long, noise is not.
                let end = index(of: hash, from: inputAt)
                if state == .payload {
                    if payload.count + (end - inputAt) > RemoteConnection.maxPayload {
                        state = .discarding
                        payload = []
                    } else {
                        payload += input[inputAt..<end]
                    }
                }
                inputAt = end
                if end < input.count {
                    inputAt += 1
                    checksumText = []
                    state = state == .payload ? .checksum : .discardedChecksum
                }
            case .checksum, .discardedChecksum:
                checksumText.append(input[inputAt])
                inputAt += 1
                guard checksumText.count == 2 else { continue }
                let oversized = state == .discardedChecksum
                state = .between
                if oversized {
                    // Taken (a '-' would have gdb send it again) and answered with an error.
                    if !noAck { sendRaw([UInt8(ascii: "+")]) }
                    return .oversized
                }
                let good = RemoteConnection.hexByte(checksumText) == RemoteConnection.checksum(payload)
                if !noAck { sendRaw(good ? [UInt8(ascii: "+")] : [UInt8(ascii: "-")]) }
                if good || noAck { return .packet(payload) }
            }
        }
        return nil
    }

    /// Where `byte` next is in `input` from `from` on (memchr: a 16 MiB packet is scanned at
    /// memory speed, also in debug builds); input.count when it is not there.
    private func index(of byte: UInt8, from: Int) -> Int {
        input.withUnsafeBufferPointer { b in
            guard from < b.count, let base = b.baseAddress, let p = memchr(base + from, Int32(byte), b.count - from) else { return b.count }
            return base.distance(to: p.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// Two hex digits as a byte; nil for anything else (no sign, no space).
    private static func hexByte(_ digits: [UInt8]) -> UInt8? {
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        guard digits.count == 2, let high = nibble(digits[0]), let low = nibble(digits[1]) else { return nil }
        return high << 4 | low
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
    /// A number as the protocol writes it: hex digits only (no sign, no 0x), at most 64 bits;
    /// nil for anything else, so that a malformed field is an error reply, not a guess.
    public static func number(_ text: Substring) -> UInt64? {
        guard !text.isEmpty, text.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x66) }) else { return nil }
        return UInt64(text, radix: 16)
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
