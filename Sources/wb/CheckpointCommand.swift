import ArgumentParser
import Foundation
import Glibc
import WBCheckpoint
import WBCoordinator
import WBCore

struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Write an image of a running process, from outside, without changing it.",
        discussion: """
        wb attaches with ptrace, stops every thread, records the process's state and memory, \
        and lets it run on exactly where it was. The image is written to a temporary name next \
        to IMAGE and renamed only when complete.

        Sockets are saved with their state: Unix sockets of every type, TCP listeners and \
        connections (read in TCP repair mode while an nftables rule of wb's holds their \
        packets; peers see a pause), UDP, raw, netlink and packet sockets. With --kill the \
        connections stay held until wb restore rebuilds them, so peers never see a reset.

        With --tree, the process and all its descendants go into one image: parent and \
        child links, sessions and process groups, pipes, files, sockets and shared memory \
        they share, connections between them, and children that exited but were not yet \
        reaped. Its memory is copied while it runs, as for one process. \
        System V shared memory segments, semaphore sets and message queues are stored with \
        their ids, keys and contents.

        wb refuses, without touching the process, what it cannot restore yet, naming it: \
        io_uring, userfaultfd and other unusual fds, a listener with connections from outside waiting to \
        be accepted, a connect in progress, fds in flight over a Unix socket, and (without \
        --tree) child processes. --allow-unsupported stores such fds as placeholders (a \
        program can still hold, watch and close them) and leaves the rest out instead.

        A thread stops only when it comes back from the kernel: one waiting for its vfork \
        child to call exec, or for a hung network file system, may not. If a thread has not \
        stopped within --stop-timeout seconds, wb gives up, leaves the process as it was and \
        says what the thread waits for.
        """)

    @Argument(help: "The process to checkpoint.")
    var pid: Int32?

    @Option(help: ArgumentHelp("Take a set checkpoint of a whole distributed job through its coordinator (HOST:PORT) instead: -o names the set directory.", valueName: "address"))
    var coordinator: String?

    @Option(help: "With --coordinator: the job token (default: WB_TOKEN).")
    var token: String?

    @Option(name: .shortAndLong, help: "The image file to write.")
    var output: String

    @Flag(help: "Let the process run on after the checkpoint (the default).")
    var leaveRunning = false

    @Flag(help: "End the process once the image is complete and flushed to disk.")
    var kill = false

    @Flag(help: "Checkpoint the process and all its descendants into one image.")
    var tree = false

    @Flag(help: "Store unsupported fds as placeholders (a socket of its type, an eventfd, /dev/null) and leave children out, instead of refusing.")
    var allowUnsupported = false

    @Option(help: ArgumentHelp("How long a thread may take to stop before wb gives up, in seconds.", valueName: "seconds"))
    var stopTimeout: Double = 5

    @Flag(help: "Print the result as JSON.")
    var json = false

    @Flag(name: .shortAndLong, help: "Print nothing but errors.")
    var quiet = false

    /// Set on the helper process that does the work (see `run`).
    @Flag(help: .hidden)
    var asAgent = false

    func validate() throws {
        if leaveRunning && kill { throw ValidationError("--leave-running and --kill exclude each other") }
        if coordinator != nil {
            if pid != nil || tree || allowUnsupported { throw ValidationError("--coordinator checkpoints the job's members: it takes no PID, --tree or --allow-unsupported") }
            return
        }
        guard let pid else { throw ValidationError("give the PID of the process to checkpoint (or --coordinator ADDRESS for a distributed job)") }
        if pid <= 0 { throw ValidationError("PID must be a positive process id") }
        if output.isEmpty { throw ValidationError("IMAGE must not be empty") }
        try CheckpointCommand.validate(stopTimeout: stopTimeout)
    }

    /// The check of `--stop-timeout`, here and on `wb run`.
    static func validate(stopTimeout: Double) throws {
        if !(stopTimeout > 0 && stopTimeout <= 86400) { throw ValidationError("--stop-timeout must be a number of seconds above 0 (up to 86400)") }
    }

    /// The work happens in a helper process in its own session: if this process is killed,
    /// even with SIGKILL, the helper notices, puts the target back as it was and removes the
    /// partial image, so an interrupted checkpoint never harms the process. The helper is a
    /// fork of this process (wb starting again would cost about 10 ms), or, when this process
    /// already has other threads, wb started again with --as-agent.
    func run() throws {
        if let coordinator { return try runSet(coordinator) }
        if asAgent {
            return try runAsAgent(parent: ProcessInfo.processInfo.environment["WB_AGENT_PARENT"].flatMap { Int32($0) })
        }
        let interrupting = [SIGINT, SIGTERM, SIGHUP]
        Signals.block(interrupting)
        let out = try Pipes.make()
        let parent = getpid()
        let agent: Int32
        if let forked = try ThisProcess.forkIfSingleThreaded() {
            if forked == 0 {
                dup2(out.write.rawValue, 1)
                out.read.close()
                out.write.close()
                do {
                    try runAsAgent(parent: parent)
                    Glibc.exit(0)
                } catch {
                    CheckpointCommand.exit(withError: error)
                }
            }
            agent = forked
        } else {
            var environment = ProcessInfo.processInfo.environment
            environment["WB_AGENT_PARENT"] = "\(parent)"
            agent = try Subprocess.spawn(ThisProcess.executable, Array(CommandLine.arguments.dropFirst()) + ["--as-agent"],
                                         environment: environment, stdout: out.write.rawValue, stderr: 2)
        }
        out.write.close()
        Signals.forward(interrupting, to: agent, includingTerminal: true)
        let result = try out.read.readAll()
        FileHandle.standardOutput.write(Data(result))
        var status: Int32 = 0
        while waitpid(agent, &status, 0) < 0 && errno == EINTR {}
        throw ExitCode(Subprocess.exitCode(waitStatus: status))
    }

    /// `parent`: the wb the user started, which must still be there once the helper watches it.
    private func runAsAgent(parent: Int32?) throws {
        try runReportingErrors {
            let interrupting = [SIGINT, SIGTERM, SIGHUP]
            Signals.block(interrupting)
            ThisProcess.allowManyFiles()
            setsid()
            try ThisProcess.setParentDeathSignal(SIGTERM)
            if let parent, parent != getppid() {
                throw WBError.failed("checkpoint of pid \(pid ?? 0) interrupted before it started")
            }
            var options = CheckpointOptions()
            options.after = kill ? .kill : .leaveRunning
            options.allowUnsupported = allowUnsupported
            options.stopTimeout = stopTimeout
            if tree { return try runTree(options, interrupting: interrupting) }
            let checkpointer = Checkpointer(pid: pid ?? 0, options: options)
            checkpointer.progress = Output.progress(quiet: quiet || json)
            // A request to stop (or the death of the wb the user started) is honoured between
            // steps, with the process put back as it was.
            checkpointer.shouldStop = { Signals.pending(interrupting) != nil }
            let result = try checkpointer.checkpoint(to: output)
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

extension CheckpointCommand {
    private func runTree(_ options: CheckpointOptions, interrupting: [Int32]) throws {
        let checkpointer = TreeCheckpointer(root: pid ?? 0, options: options)
        checkpointer.progress = Output.progress(quiet: quiet || json)
        checkpointer.shouldStop = { Signals.pending(interrupting) != nil }
        let result = try checkpointer.checkpoint(to: output)
        if json {
            try Output.json(TreeCheckpointReport(image: result.path, root: result.root, processes: result.processes,
                                                 imageBytes: result.imageBytes, pauseSeconds: result.pauseSeconds,
                                                 totalSeconds: result.totalSeconds, notes: result.notes))
            return
        }
        if quiet { return }
        for n in result.notes { Output.note(n) }
        let memory = result.processes.reduce(UInt64(0)) { $0 + $1.memoryBytes }
        let zombies = result.processes.filter { $0.zombieStatus != nil }.count
        Output.line(String(format: "checkpointed the tree of pid %d (%d process%@%@, %@ of memory) to %@ (%@) in %.3f s; the processes were paused %.3f s%@",
                           result.root, result.processes.count, result.processes.count == 1 ? "" : "es",
                           zombies > 0 ? ", \(zombies) not yet reaped" : "", Output.bytes(memory), result.path,
                           Output.bytes(result.imageBytes), result.totalSeconds, result.pauseSeconds,
                           kill ? " and are now killed" : ""))
        for p in result.processes {
            let what = p.zombieStatus.map { "exited, not reaped (wait status \($0))" }
                ?? "\(p.threads) thread\(p.threads == 1 ? "" : "s"), \(Output.bytes(p.memoryBytes))"
            Output.line("  pid \(p.pid) (\(p.command)), parent \(p.ppid): \(what)")
        }
    }
}

extension CheckpointCommand {
    /// A set checkpoint of a distributed job, asked of its coordinator.
    private func runSet(_ address: String) throws {
        try runReportingErrors {
            guard let token = jobToken(token) else {
                throw WBError.invalidArgument("no job token: give the coordinator's with --token or WB_TOKEN")
            }
            let dir = Paths.absolute(output)
            let started = Clock.monotonic
            let result = try CoordinatorClient.checkpoint(address, token: token, dir: dir, kill: kill)
            let members = result.members ?? []
            if json {
                try Output.json(SetCheckpointReport(set: dir, members: members.map { "\($0.pid)" }, pauseSeconds: result.pauseSeconds ?? 0,
                                                    totalSeconds: Clock.monotonic - started))
            } else if !quiet {
                Output.line(String(format: "checkpointed %d member%@ of the job into %@ in %.3f s; the longest pause was %.3f s%@",
                                   members.count, members.count == 1 ? "" : "s", dir, Clock.monotonic - started, result.pauseSeconds ?? 0,
                                   kill ? "; the members are ended" : ""))
            }
        }
    }
}

struct SetCheckpointReport: Encodable {
    var set: String, members: [String], pauseSeconds: Double, totalSeconds: Double
}

struct TreeCheckpointReport: Encodable {
    var image: String, root: Int32, processes: [TreeCheckpointResult.Member], imageBytes: UInt64
    var pauseSeconds: Double, totalSeconds: Double, notes: [String]
}

struct CheckpointReport: Encodable {
    var image: String, pid: Int32, threads: Int, mappings: Int, memoryBytes: UInt64, embeddedFiles: Int
    var imageBytes: UInt64, pauseSeconds: Double, pauses: [Double], stopPhases: [CheckpointResult.Phase]
    var totalSeconds: Double, notes: [String]

    init(_ r: CheckpointResult) {
        image = r.path; pid = r.pid; threads = r.threads; mappings = r.mappings; memoryBytes = r.storedPageBytes
        embeddedFiles = r.embeddedFiles; imageBytes = r.imageBytes; pauseSeconds = r.pauseSeconds
        pauses = r.pauses; stopPhases = r.phases
        totalSeconds = r.totalSeconds; notes = r.notes
    }
}
