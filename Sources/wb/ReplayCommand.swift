import ArgumentParser
import Foundation
import Glibc
import WBCore
import WBFuzz
import WBRestore
import WBTimeline
import WBExplore
import WBSet

struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Run a crash again and stop at it: a recorded production crash, one wb fuzz found, or a violation wb explore found.",
        discussion: """
        TIMELINE is a timeline recorded with wb run --timeline DIR --record that ended in a \
        crash. wb restores the last checkpoint before the crash (or --from N) and runs it \
        with the input log fed back in place of the outside world: the clients, the time \
        and the random bytes it had then, none of which need exist now. wb prints whether \
        the crash happened again at the same instruction with the same backtrace; with \
        --debug it starts gdb on the process stopped at the crash. A call the log does not \
        have (the program took another path) is reported as a divergence.

        CRASH_DIR is a bucket directory of a fuzzing campaign (OUT/crashes/BUCKET): its \
        replay.json names the image and where the input goes. The image is restored, fed \
        the input, and run until it crashes.

        SET with --schedule FILE is a set image and a schedule.json of wb explore: the set \
        is restored with its channels mediated, the schedule's deliveries are made in its \
        order with the exploration's checks at every state, and wb reports whether the \
        violation happened again; with --debug, gdb gets the member (--member, default the \
        one the violation names) stopped there.

        Exit status: 0 when the crash happened again (at the same instruction, or in the \
        same bucket; for a schedule, the same violation in the same member), 1 otherwise.

        Examples:
          wb replay srv.tl --debug
          wb replay out/crashes/SIGSEGV-parse_record-1a2b3c --minimized
          wb replay set1 --schedule found/violation-001-crash/schedule.json --debug
        """)

    @Argument(help: "A timeline (wb run --record), a crash directory (OUT/crashes/BUCKET), a file holding an input (then give --image and --input), or a set image (with --schedule).")
    var crash: String

    @Option(help: "With a set image: a schedule.json of wb explore to follow.")
    var schedule: String?

    @Option(help: ArgumentHelp("With --schedule and --debug: the member to hand to gdb, HOST:PID (default: the one the violation names).", valueName: "member"))
    var member: String?

    @Option(help: "With a timeline: replay from this checkpoint (default: the last one before the crash).")
    var from: Int?

    @Flag(help: "Replay the minimized input (input.min) instead of the original one.")
    var minimized = false

    @Option(help: "The image to replay against (default: the one replay.json names).")
    var image: String?

    @Option(help: "Where the input goes (default: as in replay.json): stdin, fd:N, file:PATH, mem:SYMBOL[:LENGTH_SYMBOL], tcp:[HOST:]PORT, unix:PATH.")
    var input: String?

    @Option(help: ArgumentHelp("With a server's input: where it is cut into messages (default: as in replay.json).", valueName: "token"))
    var inputSplit: String?

    @Option(help: "Milliseconds to wait for the crash (default: ten times the campaign's timeout, at least 5 s; 60 s for a timeline).")
    var timeout: Int?

    @Flag(help: "Start gdb on the process stopped at the crash.")
    var debug = false

    @Option(name: .customLong("gdb-port"), help: "Serve the gdb remote protocol on 127.0.0.1:PORT instead of starting gdb (0: any free port).")
    var gdbPort: UInt16?

    @Option(name: .customLong("debug-dir"), help: "A directory with separate debug info (a .build-id tree) for gdb; repeatable.")
    var debugDirectories: [String] = []

    @Argument(parsing: .postTerminator, help: "With --debug: arguments for gdb, after --.")
    var gdbArguments: [String] = []

    @Flag(help: "Let a replayed timeline write the real files it had open (by default it gets copies, removed afterwards).")
    var liveFiles = false

    @Flag(help: "Print the outcome as JSON.")
    var json = false

    @Flag(help: "Restore even if this CPU lacks instructions or register state the process may use.")
    var force = false

    func validate() throws {
        if member != nil && (schedule == nil || !debug) { throw ValidationError("--member goes with --schedule and --debug") }
        if !gdbArguments.isEmpty && !debug { throw ValidationError("arguments after -- are for gdb: add --debug") }
        if json && (debug || gdbPort != nil) { throw ValidationError("--json cannot go with --debug or --gdb-port") }
    }

    func run() throws {
        try runReportingErrors {
            let isDirectory = (try? Paths.stat(crash))?.isDirectory ?? false
            if let schedule { return try replaySchedule(schedule) }
            if isDirectory && Paths.exists("\(crash)/timeline.json") { return try replayTimeline() }
            if from != nil { throw WBError.invalidArgument("--from is for a timeline; \(crash) is not one (no timeline.json)") }
            var recipe: ReplayRecipe?
            if isDirectory {
                let path = "\(crash)/replay.json"
                guard let raw = try? Paths.readBytes(path) else {
                    throw WBError.invalidArgument("\(crash): no replay.json there; give a crash directory of wb fuzz (OUT/crashes/BUCKET)")
                }
                do { recipe = try JSONDecoder().decode(ReplayRecipe.self, from: Data(raw)) } catch {
                    throw WBError.badImage(path: path, problem: "not a replay recipe of wb fuzz (\(error))")
                }
            }
            guard let imagePath = image ?? recipe?.image else {
                throw WBError.invalidArgument("\(crash) is not a crash directory: give --image and --input with an input file")
            }
            let channel = try InputChannel(parsing: input ?? recipe?.input ?? "stdin")
            let inputPath = isDirectory ? "\(crash)/\(minimized ? "input.min" : "input")" : crash
            let data = try Paths.readBytes(inputPath, limit: 16 << 20)
            let opened = try Image(path: imagePath)
            var options = RestoreOptions()
            options.force = force
            options.isolateSockets = true
            let debugging = debug || gdbPort != nil
            if debugging {
                signal(SIGINT, SIG_IGN)
                signal(SIGQUIT, SIG_IGN)
            }
            let split = (inputSplit ?? recipe?.inputSplit).map(TokenDictionary.unescape)
            // A server never exits: its run ends when it waits for the next connection, which
            // only a run under wb's filter sees (with --debug, the server just goes on).
            let executor = try Executor(image: opened, input: channel, split: split, cover: nil, options: options,
                                        mode: channel.isSocket && !debugging ? .branching : .once)
            executor.timeout = timeout.map { Double($0) / 1000 } ?? max(5, Double(recipe?.timeoutMilliseconds ?? 1000) * 10 / 1000)
            let result = try executor.run(data)
            let outcome = ReplayOutcome(result, exe: opened.process.exe, expected: recipe?.bucket)
            if debugging {
                guard case .crashed = result.outcome, let c = result.crash else {
                    executor.terminate()
                    throw WBError.failed("the input did not crash the process (\(outcome.what)); nothing to debug")
                }
                FileHandle.standardError.write(Data("wb: \(outcome.what); handing the process to gdb\n".utf8))
                let launcher = DebugLauncher(startGDB: debug, port: gdbPort, snapshots: imagePath + ".snapshots",
                                             debugDirectories: debugDirectories, gdbArguments: gdbArguments, quiet: false,
                                             initialStop: (c.tid, c.signal))
                throw ExitCode(try launcher.run(executor.restored, image: opened, files: executor.files, options: options))
            }
            executor.terminate()
            if json { try Output.json(outcome) } else { Output.line(outcome.text) }
            if !outcome.reproduced { throw ExitCode(1) }
        }
    }
}

extension ReplayCommand {
    /// A recorded crash, replayed from the timeline's log.
    func replayTimeline() throws {
        if minimized || image != nil || input != nil {
            throw WBError.invalidArgument("--minimized, --image and --input are for fuzzing crashes; \(crash) is a timeline")
        }
        let replayer = try Replayer(timeline: try Timeline(opening: crash), from: from)
        replayer.restoreOptions.force = force
        replayer.liveFiles = liveFiles
        if let t = timeout { replayer.timeout = Double(t) / 1000 }
        if !json { replayer.report = { FileHandle.standardError.write(Data("wb: \($0)\n".utf8)) } }
        let debugging = debug || gdbPort != nil
        if debugging {
            signal(SIGINT, SIG_IGN)
            signal(SIGQUIT, SIG_IGN)
        }
        let outcome = try replayer.run(keepAtCrash: debugging)
        if debugging {
            guard let restored = replayer.restored, let tid = outcome.thread else {
                throw WBError.failed("the replay did not crash (\(outcome.what)); nothing to debug")
            }
            FileHandle.standardError.write(Data("wb replay: \(outcome.what); handing the process to gdb\n".utf8))
            let launcher = DebugLauncher(startGDB: debug, port: gdbPort, snapshots: "\(crash)/replay.snapshots",
                                         debugDirectories: debugDirectories, gdbArguments: gdbArguments, quiet: false,
                                         initialStop: (tid, outcome.signalNumber ?? SIGSEGV))
            let code = try launcher.run(restored, image: replayer.crashImage, files: replayer.crashFiles, options: replayer.restoreOptions)
            replayer.removePrivateFiles()
            throw ExitCode(code)
        }
        if json {
            try Output.json(outcome)
        } else {
            var lines = ["wb replay: \(outcome.what)",
                         "from checkpoint \(outcome.checkpoint); \(outcome.callsReplayed) of \(outcome.callsLogged) logged calls fed back"]
            if outcome.signal != nil {
                lines.append("recorded: \(outcome.recordedSignal ?? "?") at \(outcome.recordedPC ?? "?"); "
                             + "same instruction: \(outcome.sameInstruction ? "yes" : "no"), same backtrace: \(outcome.sameBacktrace ? "yes" : "no")")
            }
            for (i, f) in outcome.backtrace.enumerated() { lines.append("  #\(i) \(f.description)") }
            Output.line(lines.joined(separator: "\n"))
        }
        if !outcome.reproduced { throw ExitCode(1) }
    }
}

struct ReplayOutcome: Encodable {
    var what: String
    var signal: String?
    var faultAddress: String?
    var function: String?
    var bucket: String?
    var expectedBucket: String?
    var reproduced: Bool
    var frames: [Frame]

    init(_ r: RunResult, exe: String, expected: String?) {
        expectedBucket = expected
        frames = r.crash?.frames ?? []
        switch r.outcome {
        case let .crashed(sig, address):
            let bucket = CrashBucket(signal: sig, frames: frames, exe: exe)
            self.bucket = bucket.name
            signal = SignalNames.name(sig)
            faultAddress = [SIGSEGV, SIGBUS, SIGILL, SIGFPE].contains(sig) ? hex(address) : nil
            function = bucket.function
            what = "crashed: \(SignalNames.name(sig)) in \(bucket.function ?? "an unknown function")"
            reproduced = expected == nil || expected == bucket.name
        case let .exited(code):
            what = "exited with status \(code)"
            reproduced = false
        case .waiting:
            what = "read all of its input and waited for more"
            reproduced = false
        case .forked:
            what = "forked or exec'd a new program"
            reproduced = false
        case .hang:
            what = "still running at the timeout"
            reproduced = expected == nil ? false : expected!.hasPrefix("hang")
        }
    }

    var text: String {
        var out = ["wb replay: \(what)"]
        if let b = bucket { out.append("bucket: \(b)" + (expectedBucket.map { $0 == b ? " (as recorded)" : " (recorded: \($0))" } ?? "")) }
        for (i, f) in frames.enumerated() { out.append("  #\(i) \(f.description)") }
        return out.joined(separator: "\n")
    }
}

extension ReplayCommand {
    /// A violation wb explore found, replayed by its schedule.
    func replaySchedule(_ path: String) throws {
        if minimized || image != nil || input != nil || from != nil || gdbPort != nil {
            throw WBError.invalidArgument("--minimized, --image, --input, --from and --gdb-port are not for a schedule; give SET --schedule FILE [--debug]")
        }
        if getuid() != 0 { throw WBError.refused("replaying a schedule makes a network namespace per host of the set: run it as root") }
        let manifest = try SetManifest.read(crash)
        let plan = try Schedule.read(path)
        let target = member ?? plan.violation?.member
        if debug {
            guard let target else { throw WBError.invalidArgument("the schedule's violation names no member: give --member HOST:PID") }
            if !manifest.members.contains(where: { $0.name == target }) {
                throw WBError.invalidArgument("--member \(target): the set has \(manifest.members.map(\.name).joined(separator: ", "))")
            }
            signal(SIGINT, SIG_IGN)
            signal(SIGQUIT, SIG_IGN)
        }
        var options = RestoreOptions()
        options.force = force
        options.silenceOutput = json
        let (outcome, kept) = try ScheduleReplay.run(plan, set: crash, options: options, keep: debug)
        if debug, let set = kept {
            defer { set.end() }
            guard outcome.violation != nil, let m = set.members.first(where: { $0.name == target }), m.ended == nil else {
                Output.line(outcome.text)
                throw WBError.failed("the replay did not stop with \(target!) alive at a violation; nothing to debug")
            }
            let stop = set.crashStop.flatMap { $0.member == m.index ? ($0.tid, $0.signal) : nil }
            try set.stop(m, alreadyStopped: stop.map { [$0.0] } ?? [])
            FileHandle.standardError.write(Data("wb replay: \(outcome.violation!.what); handing \(m.name) to gdb\n".utf8))
            let launcher = DebugLauncher(startGDB: true, port: nil, snapshots: "\(crash)/\(m.restored.member.image).snapshots",
                                         debugDirectories: debugDirectories, gdbArguments: gdbArguments, quiet: false,
                                         initialStop: stop)
            throw ExitCode(try launcher.run(m.restored.process, image: m.restored.image, files: m.restored.files, options: options))
        }
        if json { try Output.json(outcome) } else { Output.line(outcome.text) }
        if !outcome.reproduced { throw ExitCode(1) }
    }
}
