import ArgumentParser
import WBCore
import WBVerbs
import WBSet
import WBSymbols

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show what an image holds: threads with backtraces, registers, memory, files and signals.",
        discussion: """
        inspect checks every checksum in the image first, so it also tells whether an image is \
        intact: a truncated or damaged image gets a one-line error naming the section.

        Given a set image (the directory wb checkpoint --coordinator writes), it shows the \
        job's hosts with their addresses, its members with their images, and the channels \
        (TCP connections between members) with the bytes in flight on each.
        """)

    @Argument(help: "The image (or set image directory) to show.")
    var image: String

    @Flag(help: "Print a JSON document instead of text.")
    var json = false

    @Flag(help: "Skip checking the page and file checksums (metadata is always checked).")
    var noVerify = false

    @Flag(help: "Leave out the backtraces of the threads.")
    var noBacktrace = false

    @Option(name: .customLong("debug-dir"), help: "A directory with separate debug info (a .build-id tree); repeatable.")
    var debugDirectories: [String] = []

    func run() throws {
        try runReportingErrors {
            if SetManifest.isSet(image) {
                let report = try SetReport(dir: image, verify: !noVerify)
                if json { try Output.json(report) } else { Output.line(report.text) }
                return
            }
            let opened = try Image(path: image)
            if !noVerify { try opened.verifyData() }
            var backtraces: [Int32: [Frame]] = [:]
            if !noBacktrace {
                let files = try FileResolver(image: opened, cache: FileCache(directory: FileCache.defaultDirectory)).resolveAll()
                let tracer = try Backtracer(image: opened, files: files, debugDirectories: debugDirectories)
                for t in opened.process.threads { backtraces[t.tid] = tracer.backtrace(t.tid) }
            }
            let report = ImageReport(opened, backtraces: backtraces)
            let verbs = try VerbsState.read(opened)
            if json {
                try Output.json(report, adding: verbs.isEmpty ? nil : verbs, as: "verbs")
            } else {
                Output.line(([report.text] + verbs.map(\.text)).joined(separator: "\n"))
            }
        }
    }
}
