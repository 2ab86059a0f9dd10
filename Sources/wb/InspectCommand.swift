import ArgumentParser
import WBCore

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show what an image holds: threads, registers, memory, files and signals.",
        discussion: """
        inspect checks every checksum in the image first, so it also tells whether an image is \
        intact: a truncated or damaged image gets a one-line error naming the section.
        """)

    @Argument(help: "The image to show.")
    var image: String

    @Flag(help: "Print a JSON document instead of text.")
    var json = false

    @Flag(help: "Skip checking the page and file checksums (metadata is always checked).")
    var noVerify = false

    func run() throws {
        try runReportingErrors {
            let opened = try Image(path: image)
            if !noVerify { try opened.verifyData() }
            let report = ImageReport(opened)
            if json { try Output.json(report) } else { Output.line(report.text) }
        }
    }
}
