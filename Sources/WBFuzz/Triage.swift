import Foundation
import Glibc
import WBCore

/// Crashes grouped by where they happen: the signal and the top frames of the crashing
/// thread that lie in the program rather than in the C library's abort machinery, so a
/// stack-protector abort lands in the bucket of the function that overflowed, not in one
/// bucket with every other abort.
public struct CrashBucket: Hashable, Sendable {
    public var signal: Int32
    public var frames: [String]

    /// How many frames make a bucket.
    public static let depth = 3

    public init(signal: Int32, frames: [Frame], exe: String) {
        self.signal = signal
        let own = frames.filter { !CrashBucket.isSystem($0, exe: exe) }
        let chosen = own.isEmpty ? frames : own
        self.frames = chosen.prefix(CrashBucket.depth).map(CrashBucket.label)
    }

    /// The frame's function, or module+offset where there is no symbol.
    static func label(_ f: Frame) -> String {
        if let fn = f.function { return fn }
        // A jump to nowhere: its address is whatever overwrote the return address.
        if f.module == nil { return "wild-pc" }
        let module = f.module.map { $0.split(separator: "/").last.map(String.init) ?? $0 } ?? "unknown"
        return "\(module)+0x\(String(f.offset, radix: 16))"
    }

    /// Frames in the C library, the dynamic loader or the vdso: the machinery between the
    /// program's mistake and the signal.
    static func isSystem(_ f: Frame, exe: String) -> Bool {
        guard let m = f.module, m != exe else { return false }
        let name = m.split(separator: "/").last.map(String.init) ?? m
        return ["libc.so", "libc-", "ld-linux", "libpthread", "linux-vdso", "[vdso]"].contains { name.hasPrefix($0) }
    }

    /// A directory name: SIGSEGV-crash_with_key-parse_record-parse.
    public var name: String {
        let raw = ([SignalNames.name(signal)] + frames).joined(separator: "-")
        let clean = String(raw.map { $0.isLetter || $0.isNumber || "_.+-".contains($0) ? $0 : "_" })
        return String(clean.prefix(120))
    }

    /// The function the crash is blamed on: the top frame in the program.
    public var function: String? { frames.first }
}

/// What a crash report holds (report.json), and its text form (report.txt).
public struct CrashReport: Codable, Sendable {
    public var bucket: String
    public var signal: Int32
    public var signalName: String
    /// The address that faulted (SIGSEGV, SIGBUS, SIGILL, SIGFPE).
    public var faultAddress: String?
    public var function: String?
    public var thread: Int32
    public var frames: [Frame]
    public var registers: [String: String]
    public var inputBytes: Int
    public var minimizedBytes: Int?
    public var foundAfterRuns: Int
    public var foundAfterSeconds: Double
    public var worker: Int
    public var image: String
    public var input: String

    public init(bucket: CrashBucket, crash: CrashState, input: [UInt8], runs: Int, seconds: Double, worker: Int, image: String, channel: InputChannel) {
        self.bucket = bucket.name
        signal = crash.signal
        signalName = SignalNames.name(crash.signal)
        faultAddress = [SIGSEGV, SIGBUS, SIGILL, SIGFPE].contains(crash.signal) ? hex(crash.address) : nil
        function = bucket.function
        thread = crash.tid
        frames = crash.frames
        var regs: [String: String] = [:]
        for (name, value) in crash.registers.all { regs[name] = hex(value) }
        registers = regs
        inputBytes = input.count
        foundAfterRuns = runs
        foundAfterSeconds = seconds
        self.worker = worker
        self.image = image
        self.input = channel.description
    }

    public var text: String {
        var out: [String] = []
        let kind = signal == 0 ? "hang (timeout)" : "\(signalName)" + (faultAddress.map { " at address \($0)" } ?? "")
        out.append("wb fuzz: \(kind) in \(function ?? "an unknown function")")
        out.append("")
        out.append("bucket       \(bucket)")
        out.append("input        input (\(inputBytes) bytes)" + (minimizedBytes.map { ", minimized: input.min (\($0) bytes)" } ?? ""))
        out.append("found after  \(foundAfterRuns) runs, \(String(format: "%.1f", foundAfterSeconds)) s (worker \(worker))")
        out.append("image        \(image)")
        out.append("fed to       \(input)")
        out.append("")
        out.append("thread \(thread) backtrace:")
        if frames.isEmpty { out.append("  (no frames: the stack could not be unwound)") }
        for (i, f) in frames.enumerated() { out.append("  #\(i) \(f.description)") }
        out.append("")
        out.append("registers:")
        let order = ["rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "eflags", "fs_base"]
        for row in stride(from: 0, to: order.count, by: 4) {
            out.append("  " + order[row..<min(row + 4, order.count)].map { "\($0.padding(toLength: 7, withPad: " ", startingAt: 0))\(registers[$0] ?? "?")" }.joined(separator: "  "))
        }
        out.append("")
        out.append("replay: wb replay <this directory> [--debug]")
        return out.joined(separator: "\n") + "\n"
    }
}

/// What `wb replay` needs to run a crash again (replay.json).
public struct ReplayRecipe: Codable, Sendable {
    public var image: String
    public var input: String
    public var timeoutMilliseconds: Int
    public var signal: Int32
    public var bucket: String
    /// A server's message separator (`--input-split`), escaped as on the command line.
    public var inputSplit: String?

    public init(image: String, input: String, timeoutMilliseconds: Int, signal: Int32, bucket: String) {
        self.image = image; self.input = input; self.timeoutMilliseconds = timeoutMilliseconds; self.signal = signal; self.bucket = bucket
    }
}

/// Shrinks a crashing input while it still crashes in the same bucket: blocks deleted,
/// halving the block size down to one byte (as afl-tmin does), within a budget of runs.
extension ReplayRecipe {
    /// Bytes as `--input-split` takes them: printable ASCII as is, the rest as \\xNN.
    public static func escape(_ bytes: [UInt8]) -> String {
        bytes.map { b in b >= 0x20 && b < 0x7F && b != UInt8(ascii: "\\") ? String(UnicodeScalar(b)) : String(format: "\\x%02x", b) }.joined()
    }
}

public enum Minimizer {
    public static func minimize(_ input: [UInt8], budget: Int = 2000, stillCrashes: ([UInt8]) throws -> Bool) rethrows -> [UInt8] {
        var best = input
        var runs = 0
        var chunk = max(1, best.count / 2)
        while chunk >= 1 && runs < budget {
            var i = 0
            while i < best.count && runs < budget {
                let candidate = Array(best[..<i]) + Array(best[min(best.count, i + chunk)...])
                runs += 1
                if !candidate.isEmpty, try stillCrashes(candidate) { best = candidate } else { i += chunk }
            }
            if chunk == 1 { break }
            chunk /= 2
        }
        return best
    }
}
