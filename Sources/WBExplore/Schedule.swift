import Foundation
import WBSystem

/// One message between members: the `seq`th write (counting from 0 at the snapshot) a
/// member made on one direction of a channel of the set. Channels are FIFO, so a message can
/// be delivered only after the ones before it on its direction.
public struct MessageID: Hashable, Codable, Sendable, CustomStringConvertible {
    /// The channel's index in the set's manifest.
    public var channel: Int
    /// From the channel's end a to its end b (else b to a).
    public var forward: Bool
    public var seq: Int

    public init(channel: Int, forward: Bool, seq: Int) {
        self.channel = channel; self.forward = forward; self.seq = seq
    }

    public var direction: Direction { Direction(channel: channel, forward: forward) }
    public var description: String {
        if let m = crashedMember { return "crash-m\(m)" }
        if let m = restartedMember { return "restart-m\(m)" }
        if isFault { return "drop-c\(channel)" }
        return "c\(channel)\(forward ? "a>b" : "b>a")#\(seq)"
    }

    /// A fault instead of a message (seq -1): dropping channel `channel`'s connection, or,
    /// with a negative channel, crashing member -channel-1 (forward) or restarting it from
    /// its snapshot after a crash (not forward).
    public var isFault: Bool { seq == -1 }
    public var crashedMember: Int? { isFault && channel < 0 && forward ? -channel - 1 : nil }
    public var restartedMember: Int? { isFault && channel < 0 && !forward ? -channel - 1 : nil }
    public static func restart(_ member: Int) -> MessageID { MessageID(channel: -member - 1, forward: false, seq: -1) }
    public static func drop(_ channel: Int) -> MessageID { MessageID(channel: channel, forward: true, seq: -1) }
    public static func crash(_ member: Int) -> MessageID { MessageID(channel: -member - 1, forward: true, seq: -1) }
}

/// One direction of a channel.
public struct Direction: Hashable, Codable, Sendable {
    public var channel: Int
    public var forward: Bool
}

/// A delivery the explorer made: which message went, between which members.
public struct Delivery: Codable, Sendable, Equatable {
    public var message: MessageID
    public var from: String
    public var to: String
    public var bytes: Int
    /// The message's first bytes, printable.
    public var preview: String
}

/// What a run found wrong.
public struct Violation: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// A member took a fatal signal (a fault, an assertion's abort).
        case crash
        /// A member exited with a non-zero status or was killed.
        case exit
        /// The --invariant command failed.
        case invariant
        /// A --gdb-check expression was false.
        case gdbCheck = "gdb-check"
        /// Every member waits, nothing is in flight, and some member has not exited.
        case deadlock
        /// Messages were still in flight after --depth deliveries, or a member ran without
        /// waiting for one (a loop) past the step limit.
        case liveness
    }
    public var kind: Kind
    /// The member it happened in (host:pid), if one.
    public var member: String?
    /// One line.
    public var what: String
    /// The member's backtrace, the invariant's output, ...
    public var detail: String

    public init(kind: Kind, member: String?, what: String, detail: String = "") {
        self.kind = kind; self.member = member; self.what = what; self.detail = detail
    }

    /// Findings with the same key are one bug: kind, member and, for a crash, where.
    public var key: String {
        let place = kind == .crash ? detail.split(separator: "\n").first.map(String.init) ?? "" : ""
        return "\(kind.rawValue)|\(member ?? "")|\(kind == .invariant || kind == .gdbCheck ? what : place)"
    }
}

/// A run's deliveries in order, and what it violated: `schedule.json` of a finding, which
/// `wb replay SET --schedule` follows.
public struct Schedule: Codable, Sendable {
    public var format = 1
    /// The set image, as given to wb explore.
    public var set: String
    public var strategy: String
    public var seed: UInt64
    /// The run of the exploration that found it (from 1).
    public var run: Int
    public var deliveries: [Delivery]
    public var violation: Violation?
    /// The checks the exploration made, made again on replay.
    public var checks = Checks()

    public struct Checks: Codable, Sendable {
        public var invariant: String?
        /// "MEMBER: EXPRESSION" (MEMBER a member's HOST:PID, or a host: each of its members).
        public var gdbChecks: [String]?
        public var depth = 100
        public var idleIsEnd = false
        public init(invariant: String? = nil, gdbChecks: [String] = [], depth: Int = 100, idleIsEnd: Bool = false) {
            self.invariant = invariant; self.gdbChecks = gdbChecks.isEmpty ? nil : gdbChecks
            self.depth = depth; self.idleIsEnd = idleIsEnd
        }
    }

    /// A --gdb-check's member (or host) and expression; nil when it is not "MEMBER: EXPR".
    public static func parseGDBCheck(_ text: String) -> (member: String, expression: String)? {
        let parts = text.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count >= 2, !parts[0].isEmpty, !parts[0].contains(" " as Character) else { return nil }
        if parts.count == 3, !parts[1].isEmpty, parts[1].allSatisfy(\.isNumber), !parts[2].isEmpty {
            return ("\(parts[0]):\(parts[1])", parts[2])
        }
        let expression = parts.dropFirst().joined(separator: ":").trimmingCharacters(in: .whitespaces)
        return expression.isEmpty ? nil : (parts[0], expression)
    }

    public init(set: String, strategy: String, seed: UInt64, run: Int, deliveries: [Delivery], violation: Violation?) {
        self.set = set; self.strategy = strategy; self.seed = seed; self.run = run
        self.deliveries = deliveries; self.violation = violation
    }

    public static func read(_ path: String) throws -> Schedule {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw WBError.invalidArgument("\(path): cannot be read (\(error.localizedDescription))")
        }
        let s: Schedule
        do { s = try JSONDecoder().decode(Schedule.self, from: data) } catch {
            throw WBError.invalidArgument("\(path): not a schedule of wb explore (\(error))")
        }
        guard s.format == 1 else { throw WBError.invalidArgument("\(path): format \(s.format); this wb reads format 1") }
        for d in s.deliveries where (d.message.channel < 0 || d.message.seq < 0) && !d.message.isFault {
            throw WBError.invalidArgument("\(path): delivery \(d.message) names no message")
        }
        return s
    }
}
