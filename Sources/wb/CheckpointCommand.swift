import ArgumentParser
import Foundation
import Glibc
import WBCheckpoint
import WBCore

struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Write an image of a running process, from outside, without changing it.",
        discussion: """
        wb attaches with ptrace, stops every thread, records the process's state and memory, \
        and lets it run on exactly where it was. The image is written to a temporary name next \
        to IMAGE and renamed only when complete.

        wb refuses, without touching the process, what it cannot restore yet: sockets, \
        inotify and other unusual fds, System V shared memory and child \
        processes. --allow-unsupported stores such fds as /dev/null placeholders and leaves \
        children out instead.
        """)

    @Argument(help: "The process to checkpoint.")
    var pid: Int32

    @Option(name: .shortAndLong, help: "The image file to write.")
    var output: String

    @Flag(help: "Let the process run on after the checkpoint (the default).")
    var leaveRunning = false

    @Flag(help: "End the process once the image is complete and flushed to disk.")
    var kill = false

    @Flag(help: "Store unsupported fds as /dev/null placeholders and leave children out, instead of refusing.")
    var allowUnsupported = false

    @Flag(help: "Print the result as JSON.")
    var json = false

    @Flag(name: .shortAndLong, help: "Print nothing but errors.")
    var quiet = false

    func validate() throws {
        if leaveRunning && kill { throw ValidationError("--leave-running and --kill exclude each other") }
        if pid <= 0 { throw ValidationError("PID must be a positive process id") }
        if output.isEmpty { throw ValidationError("IMAGE must not be empty") }
    }

    func run() throws {
        try runReportingErrors {
            var options = CheckpointOptions()
            options.after = kill ? .kill : .leaveRunning
            options.allowUnsupported = allowUnsupported
            let checkpointer = Checkpointer(pid: pid, options: options)
            checkpointer.progress = Output.progress(quiet: quiet || json)
            // A Ctrl-C or kill while the process is stopped waits until it runs again.
            let interrupting = [SIGINT, SIGTERM, SIGHUP]
            Signals.block(interrupting)
            let result: CheckpointResult
            do {
                result = try checkpointer.checkpoint(to: output)
            } catch {
                if let sig = Signals.pending(interrupting) { throw WBError.failed("interrupted by signal \(sig); pid \(pid) was left running and no image was written") }
                throw error
            }
            if let sig = Signals.pending(interrupting) {
                Signals.unblock(interrupting)
                _ = Glibc.raise(sig)
            }
            if json {
                try Output.json(CheckpointReport(result))
                return
            }
            if !quiet {
                for n in result.notes { Output.note(n) }
                Output.line(String(format: "checkpointed pid %d (%d thread%@, %d mappings, %@ of memory, %d file%@) to %@ (%@) in %.3f s; the process was paused %.3f s%@",
                                   result.pid, result.threads, result.threads == 1 ? "" : "s", result.mappings,
                                   Output.bytes(result.storedPageBytes), result.embeddedFiles, result.embeddedFiles == 1 ? "" : "s",
                                   result.path, Output.bytes(result.imageBytes), result.totalSeconds, result.pauseSeconds,
                                   kill ? " and is now killed" : ""))
            }
        }
    }
}

struct CheckpointReport: Encodable {
    var image: String, pid: Int32, threads: Int, mappings: Int, memoryBytes: UInt64, embeddedFiles: Int
    var imageBytes: UInt64, pauseSeconds: Double, totalSeconds: Double, notes: [String]

    init(_ r: CheckpointResult) {
        image = r.path; pid = r.pid; threads = r.threads; mappings = r.mappings; memoryBytes = r.storedPageBytes
        embeddedFiles = r.embeddedFiles; imageBytes = r.imageBytes; pauseSeconds = r.pauseSeconds
        totalSeconds = r.totalSeconds; notes = r.notes
    }
}
