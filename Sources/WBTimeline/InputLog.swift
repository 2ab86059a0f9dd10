import CWBRecord
import Foundation
import WBCore
import WBTrace

/// One call of a recorded program, as `wb run --record` logged it: its number, its first
/// three arguments (to see a replay follow the same path), its result and the memory the
/// kernel wrote for it.
public struct InputRecord: Sendable {
    public var tid: Int32
    public var nr: Int
    public var args: [UInt64]
    public var result: Int64
    public var writes: [(address: UInt64, bytes: [UInt8])]

    /// A marker, not a call: the thread's next record is of a call made before the checkpoint.
    public var skipsNext: Bool { nr == Int(WB_RECORD_SKIP_NEXT) }

    public var description: String {
        let name = InputLog.names[nr] ?? "syscall \(nr)"
        return "\(name)(\(args.map { $0 < 4096 ? "\($0)" : hex($0) }.joined(separator: ", "))) = \(result)"
    }
}

/// The input log of a timeline: record/NNNNNN.log holds what the program got between
/// checkpoint NNNNNN and the next one, in the format of native/CWBRecord/wb_record.h.
public enum InputLog {
    /// The calls wb records: reads and receives (their data), time and random (their
    /// values), readiness waits (which fds were ready), accept (the new connection), and
    /// writes and sends (their result only: a replay does not make them), and where mmap
    /// and mremap put memory (a replay puts it in the same place).
    public static let names: [Int: String] = [
        0: "read", 1: "write", 7: "poll", 9: "mmap", 25: "mremap", 17: "pread64", 18: "pwrite64", 19: "readv", 20: "writev", 23: "select",
        43: "accept", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 96: "gettimeofday", 201: "time",
        228: "clock_gettime", 232: "epoll_wait", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4",
        295: "preadv", 296: "pwritev", 318: "getrandom", 327: "preadv2", 328: "pwritev2", 441: "epoll_pwait2",
    ]
    public static let traced: [Int] = names.keys.filter { wb_record_traced(UInt32($0)) != 0 }.sorted()
    public static let marker = Int(WB_RECORD_MARKER)
    /// What a recording or replaying filter sends to wb: the recorded calls and the marker.
    public static let stopping: [(nr: Int, data: UInt16)] = (traced + [marker]).map { (nr: $0, data: 0) }

    public static func directory(_ timeline: String) -> String { "\(timeline)/record" }
    public static func segment(_ timeline: String, _ number: Int) -> String {
        "\(directory(timeline))/\(String(format: "%06d", number)).log"
    }

    /// The records of a log file.
    public static func read(_ path: String) throws -> [InputRecord] {
        let bytes = try Paths.readBytes(path, limit: 1 << 36)
        return try parse(bytes, path: path)
    }

    public static func parse(_ bytes: [UInt8], path: String) throws -> [InputRecord] {
        var out: [InputRecord] = []
        var at = 0
        func bad(_ why: String) -> WBError { .badImage(path: path, problem: "input log damaged at byte \(at): \(why)") }
        try bytes.withUnsafeBytes { raw in
            func u32(_ o: Int) -> UInt32 { raw.loadUnaligned(fromByteOffset: o, as: UInt32.self) }
            func u64(_ o: Int) -> UInt64 { raw.loadUnaligned(fromByteOffset: o, as: UInt64.self) }
            let headerSize = MemoryLayout<wb_record_header>.size
            while at < bytes.count {
                guard at + headerSize <= bytes.count else { throw bad("a record is cut short") }
                let size = Int(u32(at))
                guard size >= headerSize, at + size <= bytes.count else { throw bad("a record of \(size) bytes does not fit") }
                var r = InputRecord(tid: Int32(bitPattern: u32(at + 4)), nr: Int(u32(at + 8)),
                                    args: [u64(at + 16), u64(at + 24), u64(at + 32)],
                                    result: Int64(bitPattern: u64(at + 40)), writes: [])
                let count = Int(u32(at + 12))
                var w = at + headerSize
                for _ in 0..<count {
                    guard w + 16 <= at + size else { throw bad("a write runs past its record") }
                    let address = u64(w), length = Int(u32(w + 8))
                    let padded = (length + 7) & ~7
                    guard w + 16 + padded <= at + size else { throw bad("a write runs past its record") }
                    r.writes.append((address, Array(bytes[(w + 16)..<(w + 16 + length)])))
                    w += 16 + padded
                }
                out.append(r)
                at += size
            }
        }
        return out
    }
}
