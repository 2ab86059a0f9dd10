import Foundation
import WBRestore
import WBSystem

/// `wb replay SET --schedule FILE`: the set restored with its channels mediated, and the
/// schedule's deliveries made in its order, with the exploration's checks at every state,
/// up to the violation it recorded.
public enum ScheduleReplay {
    public struct Outcome: Encodable, Sendable {
        /// The recorded violation happened again (same kind, same member).
        public var reproduced: Bool
        public var violation: Violation?
        public var expected: Violation?
        /// Deliveries made.
        public var deliveries: Int
        /// The step at which the run did not offer the schedule's next message.
        public var divergedAt: Int?
        public var text: String {
            var lines: [String] = []
            if let v = violation {
                lines.append("wb replay: \(v.kind.rawValue): \(v.what)" + (reproduced ? " (as recorded)" : ""))
            } else if let d = divergedAt {
                lines.append("wb replay: the run diverged at delivery \(d + 1): the schedule's message was not pending")
            } else {
                lines.append("wb replay: \(deliveries) deliveries made, nothing violated")
            }
            if !reproduced, let e = expected { lines.append("recorded: \(e.kind.rawValue): \(e.what)") }
            if let v = violation, !v.detail.isEmpty { lines += v.detail.split(separator: "\n").map { "  \($0)" } }
            return lines.joined(separator: "\n")
        }
    }

    /// Replays `schedule` on the set in `dir`. With `keep`, the restored set is returned
    /// still alive (the member at its violation) for a debugger; the caller ends it.
    public static func run(_ schedule: Schedule, set dir: String, options: RestoreOptions, keep: Bool,
                           progress: @escaping (String) -> Void = { _ in }) throws -> (Outcome, MediatedSet?) {
        let set = try MediatedSet(dir: dir, options: options, progress: progress)
        var done = false
        defer { if !done { set.end() } }
        try set.settle()
        var violation: Violation?
        var diverged: Int?
        for (i, d) in schedule.deliveries.enumerated() {
            if let v = try Explorer.check(set, schedule.checks) { violation = v; break }
            guard set.canPerform(d.message) else { diverged = i; break }
            _ = try set.perform(d.message)
            try set.settle()
        }
        if violation == nil && diverged == nil {
            violation = try Explorer.check(set, schedule.checks) ?? Explorer.depthReached(set, schedule.checks.depth)
        }
        let reproduced = violation != nil && violation?.kind == schedule.violation?.kind && violation?.member == schedule.violation?.member
        let outcome = Outcome(reproduced: reproduced, violation: violation, expected: schedule.violation,
                              deliveries: set.delivered.count, divergedAt: diverged)
        if keep { done = true; return (outcome, set) }
        return (outcome, nil)
    }
}
