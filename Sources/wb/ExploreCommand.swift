import ArgumentParser
import Foundation
import Glibc
import WBCore
import WBExplore
import WBSet

struct ExploreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explore",
        abstract: "Explore the orders in which a distributed job's messages can arrive, from a set checkpoint.",
        discussion: """
        SET is a set image (wb checkpoint --coordinator). Each run restores it on this box \
        (one network namespace per host) with every connection between members in wb's \
        hands: what a member writes on one is held as a pending message, and wb chooses \
        which pending message is delivered next, once every member waits. Every state \
        reached is checked: a member that crashes (a fault, an assertion's abort) or exits \
        with a non-zero status, the --invariant command, the --gdb-check expressions, a \
        deadlock (every member waits, \
        nothing is in flight, some member has not ended), and a liveness bound (messages \
        still in flight after --depth deliveries, or a member running 10 s without waiting).

        With --faults, failures are choices too: a connection dropped, a member crashed \
        (at most --max-faults per run); a member ended by an injected crash is not a \
        violation, what the others do about it is checked.

        Strategies: dpor (default) explores every order that matters, depth-first, with \
        dynamic partial-order reduction and sleep sets (deliveries to different members \
        commute, so only orders of deliveries to the same member are branched); all \
        explores every order, without reduction; random and pct sample orders, for search \
        spaces too large to exhaust (--seed makes them repeatable).

        Each violation is written under --out as a directory holding schedule.json (the \
        deliveries in order and the checks) and report.txt (what was violated, where, the \
        member's backtrace); wb replay SET --schedule FILE makes the same deliveries again \
        and stops at the violation (with --debug, in gdb on the member it names). The invariant command \
        runs with WB_MEMBERS ("HOST:PID=PID-HERE ..."), WB_HOSTS ("HOST=NETNS ..."), \
        WB_DELIVERIES and WB_IN_FLIGHT (messages pending) in its environment; exit status 0 \
        means it holds.

        Exit status: 0 when nothing was violated, 1 on an error, 3 when violations were found.

        Examples:
          wb explore set1 --out found
          wb explore set1 --strategy random --seed 7 --max-runs 500 --out found
          wb explore set1 --invariant './check-replicas "$WB_MEMBERS"' --depth 40 --out found
          wb explore set1 --gdb-check 'backup: backup_log >= 0' --out found
          wb explore set1 --faults crash,drop --out found
          wb replay set1 --schedule found/violation-001-crash/schedule.json --debug
        """)

    @Argument(help: "A set image: a directory written by wb checkpoint --coordinator.")
    var set: String

    @Option(help: "Where findings go (created): a directory per violation.")
    var out = "explore-out"

    @Option(help: "How to pick deliveries: dpor, all, random or pct.")
    var strategy = "dpor"

    @Option(help: "Deliveries per run at most; messages still in flight after that many are a liveness violation.")
    var depth = 100

    @Option(help: "Stop after this many runs.")
    var maxRuns: Int?

    @Option(help: "Stop after this long: seconds, or a number with s, m or h.")
    var duration: String?

    @Option(help: "Seed of random and pct (the same seed makes the same runs).")
    var seed: UInt64 = 1

    @Option(help: "With pct: the bug depth, the number of orderings a bug needs.")
    var bugDepth = 3

    @Option(help: ArgumentHelp("A shell command run at every state; a non-zero exit status is a violation.", valueName: "command"))
    var invariant: String?

    @Option(name: .customLong("gdb-check"), help: ArgumentHelp("'MEMBER: EXPRESSION' (MEMBER as HOST:PID, or a host for each of its members): a C expression gdb evaluates in the member at every state; false is a violation. Repeatable; each costs a gdb start per state.", valueName: "check"))
    var gdbChecks: [String] = []

    @Flag(help: "Every member waiting with nothing in flight ends a run normally (a service waiting for clients), not as a deadlock.")
    var idleOk = false

    @Option(help: ArgumentHelp("Faults to inject as choices besides deliveries, comma-separated: drop (a connection between two members fails: each end reads what it had, then end-of-file), crash (a member is killed, with the messages it had not delivered), restart (a crashed member is restored from its snapshot while the others go on; its connections to them come back reset).", valueName: "list"))
    var faults: String?

    @Option(help: "With --faults: faults per run at most (restarts not counted).")
    var maxFaults = 1

    @Flag(help: "Stop at the first violation.")
    var first = false

    @Flag(name: .customLong("no-state-hashing"), help: "With dpor and all: do not end a run at a state an earlier run reached by another order (the same memory in every member and the same messages in flight).")
    var noStateHashing = false

    @Flag(name: .customLong("restore-every-run"), help: "Restore the set from its images for every run, instead of putting the members back in place to the state the first run started from.")
    var restoreEveryRun = false

    @Flag(help: "Print a JSON summary on stdout at the end.")
    var json = false

    @Flag(name: .shortAndLong, help: "Print nothing but errors, findings and the summary.")
    var quiet = false

    var faultList: [String] { faults.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } } ?? [] }

    func validate() throws {
        if StrategyKind(rawValue: strategy) == nil {
            throw ValidationError("--strategy \(strategy): expected one of \(StrategyKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if depth < 1 { throw ValidationError("--depth must be at least 1") }
        if let maxRuns, maxRuns < 1 { throw ValidationError("--max-runs must be at least 1") }
        if let d = duration, FuzzCommand.seconds(d) == nil { throw ValidationError("--duration \(d): expected seconds, or a number with s, m or h (90, 90s, 10m, 2h)") }
        if bugDepth < 1 { throw ValidationError("--bug-depth must be at least 1") }
        for f in faultList where !["drop", "crash", "restart"].contains(f) {
            throw ValidationError("--faults \(f): expected drop, crash, restart or several (drop,crash,restart)")
        }
        if faultList.contains("restart") && !faultList.contains("crash") {
            throw ValidationError("--faults restart restarts crashed members: give crash too (--faults crash,restart)")
        }
        if maxFaults < 0 { throw ValidationError("--max-faults must be 0 or more") }
        for c in gdbChecks where Schedule.parseGDBCheck(c) == nil {
            throw ValidationError("--gdb-check \(c): expected 'MEMBER: EXPRESSION', MEMBER as HOST:PID or a host")
        }
    }

    func run() throws {
        try runReportingErrors {
            if getuid() != 0 { throw WBError.refused("wb explore makes a network namespace per host of the set: run it as root") }
            let members = try SetManifest.read(set).members
            var options = ExploreOptions()
            options.strategy = StrategyKind(rawValue: strategy)!
            options.seed = seed
            options.depth = depth
            options.maxRuns = maxRuns
            options.duration = duration.flatMap(FuzzCommand.seconds)
            options.invariant = invariant
            options.gdbChecks = gdbChecks
            options.faults = Set(faultList)
            options.maxFaults = maxFaults
            for c in gdbChecks {
                let who = Schedule.parseGDBCheck(c)!.member
                if !members.contains(where: { $0.name == who || $0.host == who }) {
                    throw WBError.invalidArgument("--gdb-check \(c): no member or host \(who) in the set (members: \(members.map(\.name).joined(separator: ", ")))")
                }
            }
            options.idleIsEnd = idleOk
            options.bugDepth = bugDepth
            options.firstOnly = first
            options.stateHashing = !noStateHashing
            options.resetInPlace = !restoreEveryRun
            let explorer = try Explorer(set: set, out: out, options: options)
            // Ctrl-C ends the exploration after the run under way (its members are ended
            // and its hosts removed), with the summary of what was done.
            Signals.block([SIGINT, SIGTERM, SIGHUP])
            explorer.shouldStop = { Signals.pending([SIGINT, SIGTERM, SIGHUP]) != nil }
            let quiet = quiet
            explorer.status = { s in
                if quiet { return }
                let line = String(format: "wb explore: %d runs (%.1f/s), %d distinct states, depth %d, pruned %d (+%d by state), violations %d\n",
                                  s.runs, s.runsPerSecond, s.distinctStates, s.maxDepth, s.pruned, s.statesPruned, s.violations)
                FileHandle.standardError.write(Data(line.utf8))
            }
            explorer.found = { f in
                FileHandle.standardError.write(Data("wb explore: \(f.kind): \(f.what) (run \(f.run), \(f.deliveries) deliveries) -> \(f.directory)\n".utf8))
            }
            let stats = try explorer.run()
            if json {
                try Output.json(stats)
            } else if !quiet || stats.violations > 0 {
                var lines = [String(format: "wb explore: %d runs in %.1f s (%.1f/s), %d deliveries, %d distinct states, deepest run %d",
                                    stats.runs, stats.seconds, stats.runsPerSecond, stats.deliveries, stats.distinctStates, stats.maxDepth)]
                if options.strategy == .dpor {
                    lines.append("  partial-order reduction: \(stats.pruned) branches pruned as equivalent to explored ones")
                }
                if options.stateHashing && (options.strategy == .dpor || options.strategy == .all) {
                    lines.append("  state hashing: \(stats.statesPruned) run\(stats.statesPruned == 1 ? "" : "s") ended at a state reached before by another order")
                }
                if options.resetInPlace {
                    lines.append("  runs started in place: \(stats.resets) of \(stats.runs) (\(stats.restores) restore\(stats.restores == 1 ? "" : "s") of the set)"
                                 + (stats.restores > 1 ? stats.resetNote.map { "; not in place: \($0)" } ?? "" : ""))
                }
                lines.append("  \(stats.exhausted ? "every order explored" : "stopped: \(stats.stoppedBecause)"); \(stats.violations) violation\(stats.violations == 1 ? "" : "s")")
                if stats.divergences > 0 { lines.append("  \(stats.divergences) runs diverged from the order asked (a member not deterministic from the snapshot)") }
                for n in stats.unmediated { lines.append("  note: \(n)") }
                for f in stats.findings { lines.append("  \(f.kind): \(f.what) -> \(f.directory)") }
                Output.line(lines.joined(separator: "\n"))
            }
            if stats.violations > 0 { throw ExitCode(3) }
        }
    }
}
