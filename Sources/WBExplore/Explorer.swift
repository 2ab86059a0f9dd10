import Foundation
import Glibc
import WBCore
import WBDebug
import WBRestore
import WBSystem
import WBTrace

/// What to explore and what to check.
public struct ExploreOptions: Sendable {
    public var strategy = StrategyKind.dpor
    public var seed: UInt64 = 1
    /// Deliveries per run at most: messages still in flight after that many are a liveness
    /// violation.
    public var depth = 100
    public var maxRuns: Int?
    public var duration: Double?
    /// A shell command run at every state; a non-zero status is a violation.
    public var invariant: String?
    /// "MEMBER: EXPR" checks evaluated by gdb in the member at every state.
    public var gdbChecks: [String] = []
    /// Every member waiting with nothing in flight ends a run normally (a service waiting
    /// for clients), instead of being a deadlock.
    public var idleIsEnd = false
    /// PCT's bug depth.
    public var bugDepth = 3
    /// Stop at the first violation.
    public var firstOnly = false
    /// With dpor and all: a run that reaches a state an earlier run reached by another
    /// order after no more deliveries (the same digest of every member's writable memory and
    /// the messages in flight) ends there: what follows from it, within the depth bound, has
    /// been explored from there already.
    public var stateHashing = true
    /// Faults the explorer may inject, as choices besides deliveries: "drop" (a connection),
    /// "crash" (a member), "restart" (a crashed member from its snapshot).
    public var faults: Set<String> = []
    /// Faults per run at most.
    public var maxFaults = 1
    /// Each run starts by putting the members back in place to the state the first run
    /// started from (`MediatedSet.rewind`); false: every run restores the set afresh.
    public var resetInPlace = true
    public var restore = RestoreOptions()
    public init() {}
}

/// The explorer's figures, live and at the end (`--json`).
public struct ExploreStats: Codable, Sendable {
    public var runs = 0
    public var seconds = 0.0
    public var runsPerSecond = 0.0
    public var deliveries = 0
    public var maxDepth = 0
    /// Distinct states seen at choice points (members' memory and the messages in flight).
    public var distinctStates = 0
    /// Branches the partial-order reduction skipped as equivalent to explored ones.
    public var pruned = 0
    /// Runs ended at a state an earlier run had reached by another order (state hashing).
    public var statesPruned = 0
    /// Runs that did not follow the order asked of them (a member that does not behave the
    /// same way from the same snapshot and the same deliveries).
    public var divergences = 0
    public var violations = 0
    /// Every order was explored (dpor, all).
    public var exhausted = false
    public var stoppedBecause = ""
    public var findings: [Finding] = []
    /// Writes wb could not hold (passed to the network as they were made).
    public var unmediated: [String] = []
    /// Runs that began with a restore of the set, and runs that began with its members put
    /// back in place.
    public var restores = 0
    public var resets = 0
    /// Crashed members restored from their snapshots (the restart fault).
    public var restarts = 0
    /// Seconds spent restoring the set (and keeping its first settled state), and putting
    /// it back in place, of `seconds`.
    public var restoreSeconds = 0.0
    public var resetSeconds = 0.0
    /// Why runs could not start in place, when some could not (the first reason seen).
    public var resetNote: String?

    public struct Finding: Codable, Sendable {
        public var directory: String
        public var kind: String
        public var member: String?
        public var what: String
        public var run: Int
        public var deliveries: Int
    }
}

/// `wb explore`: restores a set image again and again with its channels mediated, delivers
/// the pending messages in the orders a strategy picks, and checks every state reached.
public final class Explorer {
    public let setDirectory: String
    public let options: ExploreOptions
    public let out: String
    public private(set) var stats = ExploreStats()
    /// A status line now and then.
    public var status: (ExploreStats) -> Void = { _ in }
    /// One line for each new finding.
    public var found: (ExploreStats.Finding) -> Void = { _ in }
    public var shouldStop: () -> Bool = { false }
    private var seenStates = Set<UInt64>()
    /// The states runs reached, not replaying the way to a branch (state hashing): the run
    /// that reached each first, and the fewest deliveries it was reached after.
    private var explored: [UInt64: (run: Int, depth: Int)] = [:]
    private var checks: Schedule.Checks {
        Schedule.Checks(invariant: options.invariant, gdbChecks: options.gdbChecks, depth: options.depth, idleIsEnd: options.idleIsEnd)
    }
    private var keys = Set<String>()
    /// The set the last run ran on, to be put back for the next one.
    private var live: MediatedSet?

    public init(set: String, out: String, options: ExploreOptions) throws {
        setDirectory = set
        self.out = out
        var options = options
        // The members' own output, run after run, is not the exploration's.
        options.restore.silenceOutput = true
        self.options = options
        try Paths.makeDirectories(out)
    }

    public func run() throws -> ExploreStats {
        let start = Clock.monotonic
        var strategy: any Strategy = switch options.strategy {
        case .dpor: DepthFirst(reduce: true)
        case .all: DepthFirst(reduce: false)
        case .random: RandomWalk(seed: options.seed)
        case .pct: PCT(seed: options.seed, bugDepth: options.bugDepth, steps: options.depth)
        }
        var nextStatus = start + 1
        defer {
            live?.end()
            live = nil
        }
        while true {
            if let max = options.maxRuns, stats.runs >= max { stats.stoppedBecause = "--max-runs reached"; break }
            if let d = options.duration, Clock.monotonic - start >= d { stats.stoppedBecause = "--duration reached"; break }
            if shouldStop() { stats.stoppedBecause = "interrupted"; break }
            if options.firstOnly && stats.violations > 0 { stats.stoppedBecause = "violation found"; break }
            guard strategy.beginRun(stats.runs + 1) else {
                stats.exhausted = true
                stats.stoppedBecause = "every order explored"
                break
            }
            stats.runs += 1
            let result = try runOnce(&strategy, run: stats.runs)
            stats.deliveries += result.deliveries.count
            stats.maxDepth = max(stats.maxDepth, result.deliveries.count)
            stats.pruned = strategy.pruned
            if let v = result.violation, !keys.contains(v.key) {
                keys.insert(v.key)
                stats.violations += 1
                let finding = try save(v, deliveries: result.deliveries, run: stats.runs)
                stats.findings.append(finding)
                found(finding)
            }
            updateFigures(since: start)
            if Clock.monotonic >= nextStatus {
                nextStatus = Clock.monotonic + 1
                status(stats)
            }
        }
        updateFigures(since: start)
        stats.pruned = strategy.pruned
        return stats
    }

    private func updateFigures(since start: Double) {
        stats.seconds = Clock.monotonic - start
        stats.runsPerSecond = Double(stats.runs) / max(stats.seconds, 0.001)
        stats.distinctStates = seenStates.count
    }

    struct RunResult {
        var deliveries: [Delivery]
        var violation: Violation?
    }

    /// The set for a run, at the state every run starts from: the last run's put back in
    /// place, or a fresh restore (which keeps its first settled state for the runs after).
    private func startRun(_ run: Int) throws -> MediatedSet {
        if let set = live, options.resetInPlace {
            let started = Clock.monotonic
            defer { stats.resetSeconds += Clock.monotonic - started }
            do {
                if try set.rewind() {
                    stats.resets += 1
                    return set
                }
                if stats.resetNote == nil { stats.resetNote = "a run ended or killed a process, or removed memory of the kept state" }
            } catch {
                if stats.resetNote == nil { stats.resetNote = "\(error)" }
            }
            set.end()
            live = nil
        }
        live?.end()
        let started = Clock.monotonic
        defer { stats.restoreSeconds += Clock.monotonic - started }
        let set = try MediatedSet(dir: setDirectory, options: options.restore, tag: String(UnicodeScalar(UInt8(97 + run % 26))))
        live = set
        stats.restores += 1
        try set.settle()
        if options.resetInPlace && set.violation == nil {
            do { try set.keepBase() } catch { if stats.resetNote == nil { stats.resetNote = "\(error)" } }
        }
        return set
    }

    private func runOnce(_ strategy: inout any Strategy, run: Int) throws -> RunResult {
        let set = try startRun(run)
        var steps: [Step] = []
        var faultsUsed = 0
        defer { strategy.endRun(steps, pending: set.enabled.map { Step(id: $0.id, receiver: $0.to, cause: $0.cause) }) }
        while true {
            for note in set.unmediated where !stats.unmediated.contains(note) { stats.unmediated.append(note) }
            if let v = try Explorer.check(set, checks) { return RunResult(deliveries: set.deliveries, violation: v) }
            let enabled = set.enabled
            if enabled.isEmpty { break }
            let state = digest(set)
            if let state {
                seenStates.insert(state)
                // Reached by an earlier run with as many deliveries left (the depth bound): its
                // orders were explored from there. A state this run reached before (a cycle)
                // does not end it: its deliveries count towards the bound.
                if options.stateHashing && steps.count >= strategy.freshFrom {
                    if let seen = explored[state], seen.run != run, seen.depth <= steps.count {
                        stats.statesPruned += 1
                        break
                    }
                    if explored[state].map({ steps.count < $0.depth }) ?? true { explored[state] = (run, steps.count) }
                }
            }
            if let v = Explorer.depthReached(set, options.depth) { return RunResult(deliveries: set.deliveries, violation: v) }
            // A restart brings back a member a crash took: it is not counted as a fault.
            let faults = set.faults.filter { f in
                f.restartedMember != nil ? options.faults.contains("restart")
                    : faultsUsed < options.maxFaults && options.faults.contains(f.crashedMember != nil ? "crash" : "drop")
            }
            let choices = enabled.map { Choice(id: $0.id, receiver: $0.to) } + faults.map { Choice(id: $0, receiver: -1) }
            guard let pick = strategy.choose(step: steps.count, enabled: choices) else { break }
            guard choices.contains(where: { $0.id == pick }) else {
                stats.divergences += 1
                break
            }
            if pick.isFault && pick.restartedMember == nil { faultsUsed += 1 }
            if pick.restartedMember != nil { stats.restarts += 1 }
            steps.append(try set.perform(pick))
            strategy.delivered(steps)
            try set.settle()
        }
        return RunResult(deliveries: set.deliveries, violation: nil)
    }

    /// The checks of a state where every member waits: what the members did (a crash, an
    /// exit), the invariant, and a deadlock.
    static func check(_ set: MediatedSet, _ checks: Schedule.Checks) throws -> Violation? {
        if let v = set.violation { return v }
        if let v = try Explorer.invariant(checks.invariant, set) { return v }
        for text in checks.gdbChecks ?? [] {
            if let v = try Explorer.gdbCheck(text, set) { return v }
        }
        if set.enabled.isEmpty && !set.allEnded && set.inFlight == 0 && !checks.idleIsEnd {
            let waiting = set.members.filter { $0.ended == nil }.map(\.name)
            return Violation(kind: .deadlock, member: nil,
                             what: "every member waits and nothing is in flight (\(waiting.joined(separator: ", ")) not ended)")
        }
        return nil
    }

    /// Messages still in flight after `depth` deliveries: the liveness bound.
    static func depthReached(_ set: MediatedSet, _ depth: Int) -> Violation? {
        guard !set.enabled.isEmpty, set.delivered.count >= depth else { return nil }
        return Violation(kind: .liveness, member: nil, what: "\(set.inFlight) messages still in flight after \(depth) deliveries (--depth)")
    }

    /// Runs the invariant command: WB_MEMBERS lists "NAME=PID" of each member's top process
    /// (pids as seen on this box), WB_HOSTS "HOST=NETNS", WB_DELIVERIES the step and
    /// WB_IN_FLIGHT the messages pending (0: the job has settled).
    static func invariant(_ command: String?, _ set: MediatedSet) throws -> Violation? {
        guard let command else { return nil }
        var env = ProcessInfo.processInfo.environment
        env["WB_MEMBERS"] = set.members.filter { $0.ended == nil }.map { "\($0.name)=\($0.processes[0].pid)" }.joined(separator: " ")
        env["WB_HOSTS"] = set.set.namespaces.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " ")
        env["WB_DELIVERIES"] = "\(set.delivered.count)"
        env["WB_IN_FLIGHT"] = "\(set.inFlight)"
        let (status, output) = try set.runServing(command, environment: env)
        if status == 0 { return nil }
        let first = output.split(separator: "\n").first.map(String.init) ?? "exit status \(status)"
        return Violation(kind: .invariant, member: nil, what: "the invariant failed: \(first)", detail: output)
    }

    /// Evaluates a --gdb-check in each live member it names: the member is stopped, gdb
    /// reads it through wb, and it goes on.
    static func gdbCheck(_ text: String, _ set: MediatedSet) throws -> Violation? {
        guard let (who, expression) = Schedule.parseGDBCheck(text) else {
            throw WBError.invalidArgument("--gdb-check \(text): expected MEMBER: EXPRESSION (MEMBER as HOST:PID, or a host)")
        }
        let cache = FileCache(directory: RestoreOptions().cacheDirectory)
        for m in set.members where m.ended == nil && (m.name == who || m.restored.member.host == who) {
            try set.stop(m)
            defer { set.resume(m) }
            let holds = try GDBCheck.evaluate(expression, in: m.restored.process, image: m.restored.image, files: m.restored.files,
                                              cache: cache, keepTracing: true)
            if !holds {
                return Violation(kind: .gdbCheck, member: m.name, what: "\(expression) is false in \(m.name)")
            }
        }
        return nil
    }

    /// A digest of the state: each member's writable memory (stacks included: a loop's
    /// locals are state too) and the messages in flight, with which members have ended.
    /// Memory counts as the sum of its pages' digests (`ProcessRewind.pageDigest`): for a
    /// process kept at the run's start, only the pages written since are read. Nil when it
    /// cannot be whole (a process read whole with more than 64 MiB, or unreadable): such a
    /// state is counted by nothing and ends no run.
    private func digest(_ set: MediatedSet) -> UInt64? {
        var h = Checksum()
        for m in set.members {
            withUnsafeBytes(of: m.ended == nil) { h.update($0) }
            for t in m.processes where !t.tids.isEmpty {
                // Kept since the run's start: from the pages written since; else read whole.
                if let d = try? set.memoryDigest(t) {
                    withUnsafeBytes(of: d) { h.update($0) }
                    continue
                }
                guard let maps = try? ProcFS.maps(t.pid, withFlags: false) else { return nil }
                var total: UInt64 = 0
                var sum: UInt64 = 0
                for e in maps where !e.shared && e.protection & 2 != 0 && !e.path.hasPrefix("[v") {
                    total += e.end - e.start
                    if total > 64 << 20 { return nil }
                    guard let bytes = try? t.read(e.start, count: Int(e.end - e.start)) else { return nil }
                    bytes.withUnsafeBytes { b in
                        for o in stride(from: 0, to: b.count, by: 4096) { sum = sum &+ ProcessRewind.pageDigest(b.baseAddress! + o, at: e.start + UInt64(o)) }
                    }
                }
                withUnsafeBytes(of: sum) { h.update($0) }
            }
        }
        for d in set.pending.keys.sorted(by: { ($0.channel, $0.forward ? 0 : 1) < ($1.channel, $1.forward ? 0 : 1) }) {
            for m in set.pending[d]! {
                withUnsafeBytes(of: (m.id.channel, m.id.forward, m.bytes.count)) { h.update($0) }
                m.bytes.withUnsafeBytes { h.update($0) }
            }
        }
        return h.finish()
    }

    private func save(_ v: Violation, deliveries: [Delivery], run: Int) throws -> ExploreStats.Finding {
        let n = stats.violations
        let dir = "\(out)/violation-\(String(format: "%03d", n))-\(v.kind.rawValue)"
        try Paths.makeDirectories(dir)
        var schedule = Schedule(set: setDirectory, strategy: options.strategy.rawValue, seed: options.seed, run: run,
                                deliveries: deliveries, violation: v)
        schedule.checks = checks
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try Paths.writeFile("\(dir)/schedule.json", Array(try encoder.encode(schedule)) + [10])
        try Paths.writeFile("\(dir)/report.txt", Array(Explorer.report(v, deliveries: deliveries, run: run).utf8))
        return ExploreStats.Finding(directory: dir, kind: v.kind.rawValue, member: v.member, what: v.what, run: run, deliveries: deliveries.count)
    }

    /// report.txt: what was violated, where, and the deliveries that led there.
    public static func report(_ v: Violation, deliveries: [Delivery], run: Int) -> String {
        var lines = ["\(v.kind.rawValue): \(v.what)"]
        if let m = v.member { lines.append("member: \(m)") }
        lines.append("found in run \(run), after \(deliveries.count) deliveries:")
        for (i, d) in deliveries.enumerated() {
            lines.append("  \(i + 1). \(d.message) \(d.from) -> \(d.to) \(d.bytes) bytes \"\(d.preview)\"")
        }
        if !v.detail.isEmpty {
            lines.append(v.kind == .crash ? "backtrace:" : "output:")
            lines += v.detail.split(separator: "\n", omittingEmptySubsequences: false).map { "  \($0)" }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
