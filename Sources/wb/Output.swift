import ArgumentParser
import Foundation
import Glibc
import WBCore

/// Writing to the terminal: results on stdout, notes, progress and errors on stderr.
enum Output {
    static func line(_ text: String) {
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    static func note(_ text: String) {
        FileHandle.standardError.write(Data("wb: note: \(text)\n".utf8))
    }

    /// Prints `value` as pretty JSON on stdout.
    static func json<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        line(String(decoding: try encoder.encode(value), as: UTF8.self))
    }

    /// `value`'s JSON object with `extra` added under `key` (when there is one).
    static func json<T: Encodable, E: Encodable>(_ value: T, adding extra: E?, as key: String) throws {
        guard let extra else { return try json(value) }
        let encoder = JSONEncoder()
        guard var object = try JSONSerialization.jsonObject(with: try encoder.encode(value)) as? [String: Any] else { return try json(value) }
        object[key] = try JSONSerialization.jsonObject(with: try encoder.encode(extra))
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        line(String(decoding: data, as: UTF8.self))
    }

    /// A progress reporter: quiet for work that finishes within a second, then one line per
    /// phase on stderr.
    static func progress(quiet: Bool) -> (String) -> Void {
        let start = Date()
        return { phase in
            if quiet || Date().timeIntervalSince(start) < 1 { return }
            FileHandle.standardError.write(Data("wb: \(phase)...\n".utf8))
        }
    }

    static func bytes(_ n: UInt64) -> String {
        if n < 1024 { return "\(n) B" }
        if n < 1 << 20 { return String(format: "%.1f KiB", Double(n) / 1024) }
        if n < 1 << 30 { return String(format: "%.1f MiB", Double(n) / 1048576) }
        return String(format: "%.2f GiB", Double(n) / 1073741824)
    }
}

/// Runs a command body, turning wb's errors into one line on stderr and exit status 1.
func runReportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as WBError {
        FileHandle.standardError.write(Data("wb: error: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

extension Output {
    /// With WB_TIMING set, a moment (CLOCK_MONOTONIC, ns) on stderr, to line up with the
    /// library's own (Checkpointer, Restorer).
    static func timing(_ what: String) {
        guard ProcessInfo.processInfo.environment["WB_TIMING"] != nil else { return }
        FileHandle.standardError.write(Data(String(format: "wb-timing %.0f %@\n", Clock.monotonic * 1e9, what).utf8))
    }
}
