import ArgumentParser
import Foundation
import WBCore
import WBTimeline

struct TimelineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "timeline",
        abstract: "List the checkpoints of a timeline (wb run --timeline).",
        discussion: """
        For each checkpoint: its number, when it was taken (seconds after the program \\
        started), why (scheduled; fault or signal: at the moment a signal was about to kill \\
        the program), the memory it holds, what it added on disk, and its image, which \\
        wb restore, wb inspect and wb restore --debug take as any other.
        """)

    @Argument(help: "The timeline directory.")
    var directory: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        try runReportingErrors {
            let timeline = try Timeline(opening: directory)
            let m = timeline.manifest
            let disk = timeline.diskBytes
            let full = m.checkpoints.reduce(UInt64(0)) { $0 + $1.fullBytes }
            if json {
                try Output.json(TimelineReport(directory: timeline.directory, program: m.program, started: m.started, ended: m.ended,
                                               every: m.every, keep: m.keep, recording: m.recording,
                                               checkpoints: m.checkpoints.map { .init($0, timeline) }, diskBytes: disk, fullImagesBytes: full))
                return
            }
            Output.line("timeline \(timeline.directory)")
            Output.line("program  \(m.program.joined(separator: " ")) (pid \(m.pid)), started \(m.started)" + (m.ended.map { ", \($0)" } ?? ", still running"))
            Output.line("")
            Output.line("   #   seconds  reason          memory       new on disk  paused     image")
            for c in m.checkpoints {
                let reason = c.reason + (c.signal.map { " \(SignalNames.name($0))" } ?? "")
                Output.line(String(format: "%4d  %8.2f  ", c.number, c.seconds) + reason.padding(toLength: 16, withPad: " ", startingAt: 0)
                            + Timeline.bytes(c.storedBytes).padding(toLength: 13, withPad: " ", startingAt: 0)
                            + Timeline.bytes(c.newBytes).padding(toLength: 13, withPad: " ", startingAt: 0)
                            + (c.pauseSeconds > 0 ? String(format: "%6.1f ms  ", c.pauseSeconds * 1000) : "     -     ") + timeline.imagePath(c))
            }
            Output.line("")
            Output.line("\(m.checkpoints.count) checkpoint\(m.checkpoints.count == 1 ? "" : "s") in \(Timeline.bytes(disk)) on disk "
                        + "(as separate images: \(Timeline.bytes(full)))")
        }
    }
}

struct TimelineReport: Encodable {
    struct Entry: Encodable {
        var number: Int, seconds: Double, time: String, reason: String, signal: String?
        var storedBytes: UInt64, newBytes: UInt64, fullBytes: UInt64, pauseSeconds: Double, image: String
        init(_ c: Timeline.Checkpoint, _ t: Timeline) {
            number = c.number; seconds = c.seconds; time = c.time; reason = c.reason; signal = c.signal.map(SignalNames.name)
            storedBytes = c.storedBytes; newBytes = c.newBytes; fullBytes = c.fullBytes; pauseSeconds = c.pauseSeconds; image = t.imagePath(c)
        }
    }
    var directory: String
    var program: [String]
    var started: String
    var ended: String?
    var every: Double?
    var keep: Int?
    var recording: Bool
    var checkpoints: [Entry]
    var diskBytes: UInt64
    var fullImagesBytes: UInt64
}
