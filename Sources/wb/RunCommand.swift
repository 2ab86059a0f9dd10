import ArgumentParser
import Foundation
import Glibc
import WBCoordinator
import WBCore
import WBTimeline
import WBVerbs

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start a program for wb to checkpoint, in the foreground.",
        discussion: """
        wb starts PROGRAM with its arguments, prints its pid on stderr, passes on signals sent \
        to wb, and exits with the program's exit status (128 + N when signal N ended it).

        --portable starts it with glibc tunables that make glibc choose baseline x86-64 code \
        (SSE2) instead of the AVX, AVX2 or AVX-512 variants it would pick for this CPU, so its \
        checkpoints restore on any x86-64 machine. It costs speed in glibc's string and memory \
        functions on large buffers (see docs/benchmarks.md); code the program itself was \
        compiled for a newer CPU (-march) is not changed.

        With --timeline, the program runs under wb's controller for its whole life and wb \
        takes a checkpoint every --every into the timeline directory; the checkpoints share \
        unchanged pages (a content-addressed store), so a timeline of a large process that \
        changes little costs little disk. When a signal is about to kill the program (a \
        segfault, an abort), wb takes a last checkpoint at that moment, then lets it die. \
        List a timeline with wb timeline DIR; find where things went wrong with wb bisect.

        --ib preloads wb's verbs layer (libwbverbs.so, beside wb): the program's InfiniBand \
        verbs calls go to wbsoft0, an emulated HCA that carries RC, UC and UD traffic over \
        TCP (and memory, between processes of one host), so the program runs on an Ethernet \
        box and its checkpoints hold its verbs \
        state (queue pairs, memory regions, completions, work in flight). The processes of \
        one job find each other through a fabric directory (WB_IB_FABRIC, default \
        /tmp/wbsoft-fabric), which they must share. With --join each rank is a member of \
        the job; see docs/infiniband.md.

        --record (with --timeline) also logs what the program gets from outside: the data \
        of reads and receives on pipes, sockets, ttys and files, accepted connections, the \
        time and random bytes, which fds were ready, and the results of writes. A seccomp \
        filter stops only those calls at wb, and a preload library (libwbrecord.so, beside \
        wb) makes the common ones itself and keeps them in memory, so a busy program runs \
        nearly at full speed. The first checkpoint is taken at the program's start. After a \
        crash, wb replay DIR runs the last checkpoint before it again on this log, with the \
        other side gone, and stops at the crash.

        Examples:
          wb run --portable -- ./server --port 8080
          wb run --timeline job.tl --every 30s --keep 100 -- ./simulate input.dat
          wb run --timeline srv.tl --every 10s --keep 20 --record -- ./server --port 8080
          wb run --ib --join 10.0.0.254:7000 -- ib_write_bw -n 100000 10.0.0.1
        """)

    @Flag(help: "Make glibc choose baseline x86-64 code, so checkpoints restore on any x86-64 CPU.")
    var portable = false

    @Option(help: "Keep a timeline of checkpoints in this directory (created).")
    var timeline: String?

    @Option(help: "Time between checkpoints: seconds, or a number with ms, s, m or h (with --timeline).")
    var every: String?

    @Option(help: "Keep only the newest N scheduled checkpoints (with --timeline).")
    var keep: Int?

    @Flag(help: "Log what the program reads from outside, for wb replay (with --timeline).")
    var record = false

    @Option(help: ArgumentHelp("How long a checkpoint waits for a thread to stop before it is skipped, in seconds (with --timeline).", valueName: "seconds"))
    var stopTimeout: Double?

    @Flag(name: .shortAndLong, help: "Print nothing about checkpoints (errors still).")
    var quiet = false

    @Option(help: ArgumentHelp("Join a distributed job's coordinator (HOST:PORT): the program and all its descendants are members, checkpointed with the job.", valueName: "address"))
    var join: String?

    @Option(help: "With --join: the job token (default: WB_TOKEN).")
    var token: String?

    @Option(help: "With --join: this host's name in the job (default: the hostname).")
    var host: String?

    @Flag(help: "Run the program on wb's verbs layer: InfiniBand verbs over the emulated device wbsoft0, checkpointed with the program.")
    var ib = false

    @Argument(parsing: .postTerminator, help: "The program and its arguments (after --).")
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the program to run after --, e.g. wb run -- ./server") }
        if timeline == nil && (every != nil || keep != nil || record) { throw ValidationError("--every, --keep and --record need --timeline DIR") }
        if let e = every, RunCommand.seconds(e) == nil { throw ValidationError("--every \(e): expected seconds, or a number with ms, s, m or h (500ms, 30s, 5m)") }
        if let k = keep, k < 1 { throw ValidationError("--keep must be at least 1") }
        if timeline == nil && stopTimeout != nil { throw ValidationError("--stop-timeout needs --timeline DIR") }
        if join != nil && timeline != nil { throw ValidationError("--join and --timeline exclude each other (the coordinator takes the job's checkpoints)") }
        if join == nil && (token != nil || host != nil) { throw ValidationError("--token and --host are for --join") }
        if let stopTimeout { try CheckpointCommand.validate(stopTimeout: stopTimeout) }
    }

    static func seconds(_ text: String) -> Double? {
        if text.hasSuffix("ms"), let v = Double(text.dropLast(2)), v > 0 { return v / 1000 }
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600]
        if let last = text.last, let unit = units[last], let v = Double(text.dropLast()), v > 0 { return v * unit }
        if let v = Double(text), v > 0 { return v }
        return nil
    }

    func run() throws {
        try runReportingErrors {
            let argv = command
            guard let program = argv.first else { throw WBError.invalidArgument("give the program to run after --, e.g. wb run -- ./server") }
            guard let path = Subprocess.find(program) else {
                throw WBError.invalidArgument("\(program): command not found (not a file, and not in PATH)")
            }
            var environment = ProcessInfo.processInfo.environment
            if portable {
                let existing = environment["GLIBC_TUNABLES"].map { $0 + ":" } ?? ""
                environment["GLIBC_TUNABLES"] = existing + CPUCompatibility.portableTunables
                let marker = CPUCompatibility.portableMarker.split(separator: "=")
                environment[String(marker[0])] = String(marker[1])
            }
            if ib { environment = try VerbsLayer.environment(environment) }
            Signals.block(Signals.forwarded)
            if let timeline {
                var options = Supervisor.Options(environment: environment)
                options.every = every.flatMap(RunCommand.seconds)
                options.keep = keep
                options.record = record
                if let stopTimeout { options.stopTimeout = stopTimeout }
                let supervisor = try Supervisor(program: path, arguments: Array(argv.dropFirst()), directory: timeline, options: options)
                supervisor.warn = { FileHandle.standardError.write(Data("wb: warning: \($0)\n".utf8)) }
                if !quiet {
                    supervisor.report = { FileHandle.standardError.write(Data("wb: \($0)\n".utf8)) }
                    FileHandle.standardError.write(Data("wb: started \(program) as pid \(supervisor.pid); timeline in \(timeline)\n".utf8))
                }
                Signals.forward(Signals.forwarded, to: supervisor.pid)
                throw ExitCode(try supervisor.run())
            }
            if let join { return try runJoined(join, path: path, argv: argv, environment: environment) }
            let pid = try Subprocess.spawn(path, Array(argv.dropFirst()), environment: environment, stdin: 0, stdout: 1, stderr: 2)
            FileHandle.standardError.write(Data("wb: started \(program) as pid \(pid)\(portable ? " (portable)" : "")\n".utf8))
            Signals.forward(Signals.forwarded, to: pid)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            throw ExitCode(Subprocess.exitCode(waitStatus: status))
        }
    }
}

extension RunCommand {
    /// The program as a member of a distributed job: this wb is its host's agent for it and
    /// its descendants until it exits (with its exit status).
    func runJoined(_ address: String, path: String, argv: [String], environment: [String: String]) throws {
        guard let token = jobToken(token) else {
            throw WBError.invalidArgument("no job token: give the coordinator's with --token or WB_TOKEN")
        }
        let pid = try Subprocess.spawn(path, Array(argv.dropFirst()), environment: environment, stdin: 0, stdout: 1, stderr: 2)
        Signals.forward(Signals.forwarded, to: pid)
        var status: Int32 = 0
        var ended = false
        let agent = Agent(coordinator: address, token: token, host: host ?? HostName.short,
                          members: [Message.Member(pid: pid, parent: getpid(), command: String(path.split(separator: "/").last ?? ""), tree: true)])
        if !quiet { agent.progress = { FileHandle.standardError.write(Data("wb: \($0)\n".utf8)) } }
        agent.stillThere = {
            if !ended && waitpid(pid, &status, WNOHANG) == pid { ended = true }
            return !ended
        }
        signal(SIGPIPE, SIG_IGN)
        do {
            try agent.run()
        } catch {
            // The job could not be joined: the program does not run outside it.
            if !ended { kill(pid, SIGKILL); while waitpid(pid, &status, 0) < 0 && errno == EINTR {} }
            throw error
        }
        if !ended { while waitpid(pid, &status, 0) < 0 && errno == EINTR {} }
        throw ExitCode(Subprocess.exitCode(waitStatus: status))
    }
}
