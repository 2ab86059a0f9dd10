import Foundation
import Glibc
import WBTrace

/// What `wb checkpoint` does after writing the image.
public enum AfterCheckpoint: Sendable {
    /// Let the process run on, unharmed (the default).
    case leaveRunning
    /// Kill it once the image is complete and flushed to disk.
    case kill
}

public struct CheckpointOptions: Sendable {
    public var after: AfterCheckpoint = .leaveRunning
    /// Store fds wb cannot restore yet as /dev/null placeholders and leave children out,
    /// instead of refusing.
    public var allowUnsupported = false
    /// Embed private file mappings up to this size (executables and libraries always).
    public var embedLimit: UInt64 = 64 << 20
    public init() {}
}

public struct CheckpointResult: Sendable {
    public var path: String
    public var pid: Int32
    public var threads: Int
    public var mappings: Int
    public var storedPageBytes: UInt64
    public var embeddedFiles: Int
    public var imageBytes: UInt64
    /// How long the process was stopped.
    public var pauseSeconds: Double
    public var totalSeconds: Double
    public var notes: [String]
}

/// Takes a checkpoint of a running process from outside: seize and stop every thread, read
/// their state (injecting a few system calls into the process for what only it can tell),
/// copy memory, describe its files, write the image, and let the process go (or kill it).
public final class Checkpointer {
    public let pid: Int32
    public let options: CheckpointOptions
    /// Called with a short line as each phase starts.
    public var progress: (String) -> Void = { _ in }
    /// Asked between steps; when it answers true the checkpoint stops at once, leaving the
    /// process exactly as it was and no image behind.
    public var shouldStop: () -> Bool = { false }

    var notes: [String] = []
    var placeholders: [Int32: String] = [:]

    public init(pid: Int32, options: CheckpointOptions = CheckpointOptions()) {
        self.pid = pid
        self.options = options
    }

    public func checkpoint(to path: String) throws -> CheckpointResult {
        let started = Clock.now
        let plan = try withContext("checkpoint of pid \(pid)") { try preflight() }
        // The image file exists before the process is touched: a bad path costs it nothing.
        try checkStop()
        let writer = try ImageWriter(path: path)
        progress("stopping \(plan.threads) thread(s) of pid \(pid)")
        let tracee: Tracee
        do {
            tracee = try withContext("checkpoint of pid \(pid)") { try Tracee.seize(pid) }
        } catch {
            writer.abandon()
            throw error
        }
        let stopped = Clock.now
        var released = false
        defer { if !released { tracee.detach() } }
        do {
            var process = try withContext("checkpoint of pid \(pid)") { () -> ProcessState in
                try checkStop()
                var process = try captureThreads(tracee)
                try checkStop()
                try captureProcess(tracee, into: &process)
                try checkStop()
                progress("copying memory")
                var files = try captureMemory(tracee, into: &process, writer: writer)
                try checkStop()
                progress("storing mapped files")
                try embedMappedFiles(&files, into: &process)
                try checkStop()
                try captureFiles(tracee, into: &process, writer: writer, plan: plan)
                try checkStop()
                return process
            }
            // Signals a thread had already dequeued when it stopped are pending in the image.
            for (i, t) in process.threads.enumerated() {
                if let info = tracee.interceptedSignals[t.tid] {
                    let data = Data(info)
                    process.threads[i].pending.insert(PendingSignal(signal: data.withUnsafeBytes { $0.load(as: Int32.self) }, siginfo: data), at: 0)
                }
            }
            let metadata = ImageMetadata(host: HostInfo.current(), process: process, files: writer.embeddedFiles, notes: notes)
            progress("writing \(path)")
            try writer.complete(metadata, sync: options.after == .kill)
            // Read back what was written before it gets its name and before anything
            // irreversible happens.
            let check = try Image(path: writer.temporaryPath, displayName: path)
            if options.after == .kill { try check.verifyData() }
            try checkStop()
            try writer.commit()
            var pause = 0.0
            if options.after == .kill {
                tracee.kill()
                released = true
                pause = Clock.now - stopped
            } else {
                tracee.detach()
                released = true
                pause = Clock.now - stopped
            }
            let stored = process.mappings.reduce(UInt64(0)) { $0 + UInt64($1.storedPageCount) * 4096 }
            return CheckpointResult(path: path, pid: pid, threads: process.threads.count, mappings: process.mappings.count,
                                    storedPageBytes: stored, embeddedFiles: writer.embeddedFiles.count,
                                    imageBytes: check.fileSize, pauseSeconds: pause,
                                    totalSeconds: Clock.now - started, notes: notes)
        } catch {
            writer.abandon()
            throw error
        }
    }
}

extension Checkpointer {
    func checkStop() throws {
        if shouldStop() {
            throw WBError.failed("checkpoint of pid \(pid) interrupted: the process runs on as before and no image was written")
        }
    }
}

/// Monotonic seconds.
public enum Clock {
    public static var now: Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
