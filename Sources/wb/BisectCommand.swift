import ArgumentParser
import Foundation
import WBCore
import WBTimeline

struct BisectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bisect",
        abstract: "Find the last good checkpoint of a timeline, and narrow the window in which things went wrong.",
        discussion: """
        Each checkpoint the search looks at is restored, stopped, and checked: with \\
        --predicate, CMD runs with the process's pid in WB_PID (and the image in WB_IMAGE) and \\
        exit status 0 means good; with --gdb-check, gdb evaluates the C expression in the \\
        process and true means good. The first checkpoint must be good and the last bad.

        A binary search over the timeline finds the last good checkpoint; then, in rounds, the \\
        last good one is restored and run forward, with checkpoints taken at finer intervals \\
        and searched again, until the window is no longer than --resolution. The result \\
        names the two images that bound it (restorable with wb restore) and shows a \\
        backtrace at the bad end.

        Examples:
          wb bisect job.tl --gdb-check 'ledger.sum == ledger.expected'
          wb bisect job.tl --predicate './check-state $WB_PID' --resolution 10ms --json
        """)

    @Argument(help: "The timeline directory (wb run --timeline).")
    var timeline: String

    @Option(help: "A shell command; the restored, stopped process's pid is in WB_PID; exit 0 means good.")
    var predicate: String?

    @Option(name: .customLong("gdb-check"), help: "A C expression gdb evaluates in the restored process; true means good.")
    var gdbCheck: String?

    @Option(help: "Narrow the window down to this: seconds, or a number with ms or s (default 1ms; 0 skips narrowing).")
    var resolution = "1ms"

    @Flag(help: "Print the result as JSON (last_good and first_bad are image paths).")
    var json = false

    @Flag(help: "Let the restored processes write the real files they had open (by default they get copies, removed after each run).")
    var liveFiles = false

    @Flag(name: .shortAndLong, help: "Print only the result.")
    var quiet = false

    func validate() throws {
        if (predicate == nil) == (gdbCheck == nil) { throw ValidationError("give one of --predicate CMD or --gdb-check EXPR") }
        if BisectCommand.seconds(resolution) == nil { throw ValidationError("--resolution \(resolution): expected seconds, or a number with ms or s") }
    }

    static func seconds(_ text: String) -> Double? {
        if text.hasSuffix("ms"), let v = Double(text.dropLast(2)), v >= 0 { return v / 1000 }
        if text.hasSuffix("s"), let v = Double(text.dropLast()), v >= 0 { return v }
        if let v = Double(text), v >= 0 { return v }
        return nil
    }

    func run() throws {
        try runReportingErrors {
            let opened = try Timeline(opening: timeline)
            let check: Bisector.Check = predicate.map { .predicate($0) } ?? .gdb(gdbCheck!)
            let bisector = try Bisector(timeline: opened, check: check)
            bisector.resolution = BisectCommand.seconds(resolution) ?? 0.001
            bisector.liveFiles = liveFiles
            if !quiet && !json { bisector.report = { FileHandle.standardError.write(Data("wb: \($0)\n".utf8)) } }
            let r = try bisector.run()
            if json {
                try Output.json(BisectReport(r))
                return
            }
            Output.line("last good: \(r.lastGood.label) at \(String(format: "%.4f", r.lastGood.seconds)) s  \(r.lastGood.image)")
            Output.line("first bad: \(r.firstBad.label) at \(String(format: "%.4f", r.firstBad.seconds)) s  \(r.firstBad.image)")
            Output.line("window:    \(String(format: "%.4f", r.windowSeconds)) s after \(r.rounds) narrowing round\(r.rounds == 1 ? "" : "s"), \(r.evaluations.count) checks")
            if !r.backtrace.isEmpty {
                Output.line("at the bad end, thread \(r.thread):")
                for (i, f) in r.backtrace.enumerated() { Output.line("  #\(i) \(f.description)") }
            }
        }
    }
}

struct BisectReport: Encodable {
    var last_good: String
    var first_bad: String
    var last_good_seconds: Double
    var first_bad_seconds: Double
    var window_seconds: Double
    var rounds: Int
    var checks: [Check]
    var backtrace: [Frame]
    var thread: Int32

    struct Check: Encodable {
        var image: String
        var seconds: Double
        var label: String
        var good: Bool
        var round: Int
    }

    init(_ r: Bisector.Result) {
        last_good = r.lastGood.image; first_bad = r.firstBad.image
        last_good_seconds = r.lastGood.seconds; first_bad_seconds = r.firstBad.seconds
        window_seconds = r.windowSeconds; rounds = r.rounds
        checks = r.evaluations.map { Check(image: $0.point.image, seconds: $0.point.seconds, label: $0.point.label, good: $0.good, round: $0.round) }
        backtrace = r.backtrace; thread = r.thread
    }
}
