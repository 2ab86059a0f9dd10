import ArgumentParser
import Foundation
import Glibc
import WBCore
import WBFuzz
import WBRestore

struct FuzzCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fuzz",
        abstract: "Fuzz a checkpointed process: thousands of runs branched from the one snapshot.",
        discussion: """
        The image is restored once (per worker), stopped, and every run starts from exactly \
        the checkpointed state: the input goes where --input says, the process runs until it \
        exits, crashes, times out or comes back for more input, and then the pages it wrote \
        are put back (userfaultfd write-protect and PAGEMAP_SCAN find them), with any \
        memory it unmapped, files it closed and positions it moved. No recompilation and no \
        source code: coverage comes from one-shot breakpoints on the basic blocks of the \
        executable's code and the libraries it loads (--cover), found with capstone, and \
        compare instructions are traced to get past magic values, checksums and keys the \
        process computed itself.

        Every crash and hang is run again in a fresh restore before it is kept; one that \
        does not happen again is dropped and counted (dropped_crashes in fuzzer_stats).

        --input says where the input goes:
          stdin, fd:N             the fd (and every duplicate of it) is replaced by a file holding the input, then end of file
          file:PATH               the file is rewritten before each run (the process opens it)
          mem:SYM[:LENSYM]        the bytes are written into the buffer SYM (and their count into LENSYM)
          tcp:[HOST:]PORT         a server listening there gets one connection per run, made by wb
          unix:PATH               the same for a server's Unix stream socket

        A server's input is one connection per run: the image is taken while the server \
        waits (in accept, poll or epoll_wait), the run's input is sent on a new connection \
        (cut into several messages at each --input-split token, each sent when the server \
        waits for more), then the connection is half-closed; the run ends when the server \
        waits again with nothing left to send. Responses are discarded, and the connection \
        is reset at the end of the run. The copy runs in a network namespace of its own \
        (as root), so the original server keeps its port.

        --slurm N submits the campaign to Slurm as a job array of N workers, each restoring \
        the image on its node and fuzzing as instance wb-K of the sync directory --out (AFL++'s \
        layout, on a shared file system; afl-fuzz -S instances can join it). wb fuzz --status \
        DIR sums a campaign's instances while it runs or after.

        The output directory is laid out as AFL's (queue/, crashes/, hangs/, fuzzer_stats, \
        plot_data) with coverage.svg and campaign.json; each crash bucket in crashes/ holds the \
        input, a minimized input, report.txt and report.json. Replay one with wb replay.

        Examples:
          wb fuzz parser.wbimg --corpus seeds --out findings --duration 60s
          wb fuzz server.wbimg --input fd:5 --corpus seeds --out findings --jobs 2 --dict http.dict
          wb fuzz kv.wbimg --input tcp:6380 --input-split '\\n' --corpus seeds --out findings
          wb fuzz server.wbimg --corpus seeds --out /shared/findings --slurm 16 --time 4:00:00
          wb fuzz --status /shared/findings
          wb replay findings/crashes/SIGSEGV-parse_header-handle-main --debug
        """)

    @Argument(help: "The image to fuzz (checkpointed where it waits for input).")
    var image: String?

    @Option(help: "Where the input goes: stdin, fd:N, file:PATH or mem:SYMBOL[:LENGTH_SYMBOL].")
    var input = "stdin"

    @Option(help: ArgumentHelp("With --input tcp: or unix:, cut each input into messages at this token (escapes: \\n, \\r, \\t, \\xNN); each message is sent when the server waits for more.", valueName: "token"))
    var inputSplit: String?

    @Option(help: "A directory of seed inputs.")
    var corpus: String?

    @Option(help: "The output directory (created; must not hold another campaign). With --slurm or --sync-name: the sync directory the instances share.")
    var out: String?

    @Option(help: "How long to fuzz: seconds, or a number with s, m or h (default: until Ctrl-C).")
    var duration: String?

    @Option(help: "Stop after about this many runs.")
    var runs: Int?

    @Option(help: "Stop once this many distinct crashes (buckets) are found.")
    var untilCrashes: Int?

    @Option(help: "Worker processes, each with its own restored copy, sharing one corpus.")
    var jobs = 1

    @Option(help: "Milliseconds a run may take before it counts as a hang (default: from the seeds, 20-1000).")
    var timeout: Int?

    @Option(name: .customLong("dict"), help: "A dictionary of tokens in AFL's format; repeatable.")
    var dictionaries: [String] = []

    @Option(help: "Seed of the mutations (default: from the clock); the same seed makes the same mutations.")
    var seed: UInt64?

    @Option(help: "The code to measure coverage in: auto (the executable and the libraries it loads, but not the C library, the loader or the C++/Swift runtimes), exe, all, or library names, comma-separated (e.g. libxml2).")
    var cover = "auto"

    @Flag(help: "Restore even if this CPU lacks instructions or register state the process may use.")
    var force = false

    @Flag(help: "Print a JSON summary on stdout at the end.")
    var json = false

    @Flag(name: .shortAndLong, help: "Print nothing but errors (and the --json summary).")
    var quiet = false

    @Option(help: "Submit the campaign to Slurm as a job array of this many workers, each restoring the image on its node and fuzzing as instance wb-K of the sync directory --out (on a file system the nodes share).")
    var slurm: Int?

    @Option(help: "With --slurm: the partition to submit to.")
    var partition: String?

    @Option(help: "With --slurm: the job's time limit, as sbatch takes it (e.g. 2:00:00); the workers stop at it.")
    var time: String?

    @Option(help: ArgumentHelp("Fuzz as instance NAME of the sync directory --out (AFL++'s layout: OUT/NAME holds this instance's queue, crashes and stats; entries of the other instances, wb's or AFL++'s, are picked up).", valueName: "name"))
    var syncName: String?

    @Option(help: ArgumentHelp("Show the state of a campaign (an output directory, or a sync directory's instances) and exit.", valueName: "dir"))
    var status: String?

    @Option(name: .customLong("worker-index"), help: .hidden)
    var workerIndex: Int?

    func validate() throws {
        if status != nil {
            if image != nil || corpus != nil || out != nil || slurm != nil {
                throw ValidationError("--status DIR shows a campaign; it takes no image, --corpus, --out or --slurm")
            }
            return
        }
        if image == nil { throw ValidationError("missing the image to fuzz (or --status DIR to look at a campaign)") }
        if corpus == nil { throw ValidationError("missing --corpus DIR (seed inputs, one per file)") }
        if out == nil { throw ValidationError("missing --out DIR (where the campaign writes its findings)") }
        if let n = slurm, n < 1 || n > 10000 { throw ValidationError("--slurm takes the number of workers, 1 to 10000") }
        if slurm == nil && (partition != nil || time != nil) { throw ValidationError("--partition and --time are for --slurm") }
        if slurm != nil && syncName != nil { throw ValidationError("--slurm names its instances wb-0, wb-1, ...; leave out --sync-name") }
        if let n = syncName, !SyncDirectory.isValidName(n) {
            throw ValidationError("--sync-name \(n): use letters, digits, - and _ (it names a directory of the sync directory)")
        }
        if jobs < 1 || jobs > 64 { throw ValidationError("--jobs must be between 1 and 64") }
        if let t = timeout, t < 1 { throw ValidationError("--timeout is in milliseconds and must be at least 1") }
        if let r = runs, r < 1 { throw ValidationError("--runs must be at least 1") }
        if let c = untilCrashes, c < 1 { throw ValidationError("--until-crashes must be at least 1") }
        if let d = duration, FuzzCommand.seconds(d) == nil { throw ValidationError("--duration \(d): expected seconds, or a number with s, m or h (90, 90s, 10m, 2h)") }
        let c = try channel()
        if case let .unix(path) = c, jobs > 1, !path.hasPrefix("@") {
            throw ValidationError("--input unix:\(path) with --jobs \(jobs): every worker's copy would listen on that one path; fuzz a Unix socket server with one job")
        }
        if let t = inputSplit {
            if !c.isSocket { throw ValidationError("--input-split is for a server's input (--input tcp:PORT or unix:PATH)") }
            if TokenDictionary.unescape(t).isEmpty { throw ValidationError("--input-split must not be empty") }
        }
    }

    static func seconds(_ text: String) -> Double? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600]
        if let last = text.last, let unit = units[last], let v = Double(text.dropLast()), v > 0 { return v * unit }
        if let v = Double(text), v > 0 { return v }
        return nil
    }

    func channel() throws -> InputChannel {
        do { return try InputChannel(parsing: input) } catch { throw ValidationError("\(error)") }
    }

    func run() throws {
        try runReportingErrors {
            if let status {
                let report = try SyncDirectory.status(status)
                if json { try Output.json(report) } else { Output.line(report.text) }
                return
            }
            guard let image, let corpus, let out else { return }
            var options = CampaignOptions(imagePath: image, input: try channel(), corpus: corpus, out: out)
            options.duration = duration.flatMap(FuzzCommand.seconds)
            options.maxRuns = runs
            options.untilCrashes = untilCrashes
            options.jobs = jobs
            options.timeout = timeout.map { Double($0) / 1000 }
            options.seed = seed ?? UInt64(Clock.monotonic * 1e9) ^ UInt64(getpid())
            options.cover = cover
            options.inputSplit = inputSplit.map(TokenDictionary.unescape)
            options.restore.force = force
            for path in dictionaries {
                let tokens = TokenDictionary.parse(try Paths.readText(path))
                if tokens.isEmpty { throw WBError.invalidArgument("--dict \(path): no tokens in it (one \"token\" per line, as AFL's dictionaries)") }
                options.dictionary += tokens
            }
            if !Paths.exists(corpus) { throw WBError.invalidArgument("--corpus \(corpus): no such directory") }
            if let n = slurm { return try submit(n, options) }
            if let name = syncName {
                // One instance of a sync directory: its own output directory inside it.
                if Paths.exists("\(out)/queue") {
                    throw WBError.invalidArgument("--out \(out) is a campaign's own output directory, not a sync directory; give the directory its instances share")
                }
                options.syncDirectory = out
                options.syncName = name
                options.out = "\(out)/\(name)"
            }
            if let k = workerIndex { return try runWorker(k, options) }
            Signals.block([SIGINT, SIGTERM, SIGHUP])
            let campaign = Campaign(options: options)
            campaign.commandLine = (["wb"] + CommandLine.arguments.dropFirst()).joined(separator: " ")
            campaign.shouldStop = { Signals.pending([SIGINT, SIGTERM, SIGHUP]) != nil }
            let seedUsed = options.seed
            campaign.workerCommand = { k in
                var args = Array(CommandLine.arguments.dropFirst()) + ["--worker-index", "\(k)"]
                if seed == nil { args += ["--seed", "\(seedUsed)"] }
                return (ThisProcess.executable, args)
            }
            let screen = StatusScreen(image: image, seed: options.seed, quiet: quiet)
            campaign.status = { screen.show($0) }
            let summary = try campaign.run()
            screen.finish(summary)
            if json { try Output.json(summary) }
        }
    }

    /// Submits the campaign to Slurm: each array task runs this command as one instance.
    private func submit(_ workers: Int, _ options: CampaignOptions) throws {
        guard let image, let corpus, let out else { return }
        if Paths.exists("\(out)/queue") || !SyncDirectory.instances(out).isEmpty {
            throw WBError.invalidArgument("--out \(out) already holds a campaign: pick another directory, or remove it first")
        }
        var args = [ThisProcess.executable, "fuzz", Paths.absolute(image), "--input", input, "--corpus", Paths.absolute(corpus),
                    "--out", Paths.absolute(out), "--jobs", "\(jobs)", "--cover", cover, "--quiet"]
        if let inputSplit { args += ["--input-split", inputSplit] }
        if let duration { args += ["--duration", duration] }
        if let runs { args += ["--runs", "\(runs)"] }
        if let untilCrashes { args += ["--until-crashes", "\(untilCrashes)"] }
        if let timeout { args += ["--timeout", "\(timeout)"] }
        for d in dictionaries { args += ["--dict", Paths.absolute(d)] }
        if force { args.append("--force") }
        var job = SlurmSubmission(workers: workers, out: Paths.absolute(out), command: args, seed: options.seed)
        job.partition = partition
        job.time = time
        job.cpusPerTask = jobs
        let id = try job.submit()
        if json {
            try Output.json(SlurmReceipt(job: id, workers: workers, out: job.out, script: "\(job.out)/.wb/slurm.sh"))
        } else if !quiet {
            Output.line("wb: submitted Slurm job \(id): \(workers) worker\(workers == 1 ? "" : "s") fuzzing into \(job.out)")
            Output.line("wb: watch it with: wb fuzz --status \(job.out)   (or afl-whatsup \(job.out)); stop it with: scancel \(id)")
        }
    }

    /// A worker process started by the first: it fuzzes until the campaign stops.
    private func runWorker(_ k: Int, _ options: CampaignOptions) throws {
        try ThisProcess.setParentDeathSignal(SIGKILL)
        var o = options
        o.worker = k
        let worker = try Worker(options: o)
        try worker.run()
    }
}

/// The live status: a screen redrawn in place on a terminal, otherwise a line every few seconds.
final class StatusScreen {
    let image: String
    let seed: UInt64
    let quiet: Bool
    let terminal = isatty(2) != 0
    private var drawn = 0
    private var lastLine = -10.0
    private var warned: Set<String> = []

    init(image: String, seed: UInt64, quiet: Bool) {
        self.image = image; self.seed = seed; self.quiet = quiet
    }

    static func duration(_ s: Double) -> String {
        let t = Int(s)
        return String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60)
    }

    static func ago(_ now: Double, _ t: Double?) -> String {
        guard let t else { return "none yet" }
        return "\(Int(now - t)) s ago"
    }

    static func list(_ names: [String]) -> String {
        names.count <= 4 ? names.joined(separator: ", ") : names.prefix(3).joined(separator: ", ") + " and \(names.count - 3) more"
    }

    func lines(_ s: CampaignStatus) -> [String] {
        let pct = s.blocks > 0 ? String(format: " (%.1f%%)", 100 * Double(s.covered) / Double(s.blocks)) : ""
        return [
            "wb fuzz  \(image)   run time \(StatusScreen.duration(s.seconds))   seed \(seed)",
            "  reset      \(s.reset), \(s.workers) worker\(s.workers == 1 ? "" : "s")",
            "  runs       \(s.executions) total, \(Int(s.executionsPerSecond))/s, timeout \(s.timeoutMilliseconds) ms",
            "  coverage   \(s.covered) of \(s.blocks) basic blocks\(pct) in \(StatusScreen.list(s.covers))",
            "  corpus     \(s.corpus) entries (\(s.seeds) seeds, \(s.found) found), last new \(StatusScreen.ago(s.seconds, s.lastNew))",
            "  crashes    \(s.uniqueCrashes) unique (\(s.crashes) in all), last \(StatusScreen.ago(s.seconds, s.lastCrash))",
            "  hangs      \(s.hangs)",
            "  checksums  \(s.checksums) passed in every run, \(s.repaired) inputs repaired past them\(s.unrepaired > 0 ? ", \(s.unrepaired) could not be" : "")",
            "  dropped    \(s.dropped) crashes, \(s.droppedHangs) hangs that did not happen again in a fresh restore",
            "  stage      \(s.stage)",
        ]
    }

    func show(_ s: CampaignStatus) {
        if quiet { return }
        for w in s.warnings where !warned.contains(w) {
            warned.insert(w)
            FileHandle.standardError.write(Data("wb: warning: \(w)\n".utf8))
            drawn = 0
        }
        if terminal {
            var text = drawn > 0 ? "\u{1b}[\(drawn)A" : ""
            let l = lines(s)
            for line in l { text += "\u{1b}[2K" + line + "\n" }
            drawn = l.count
            FileHandle.standardError.write(Data(text.utf8))
        } else if s.seconds - lastLine >= 5 {
            lastLine = s.seconds
            FileHandle.standardError.write(Data(("wb: fuzz \(StatusScreen.duration(s.seconds)) runs \(s.executions) (\(Int(s.executionsPerSecond))/s) "
                + "cover \(s.covered)/\(s.blocks) corpus \(s.corpus) crashes \(s.uniqueCrashes) (\(s.crashes)) hangs \(s.hangs) "
                + (s.dropped + s.droppedHangs > 0 ? "dropped \(s.dropped + s.droppedHangs) " : "") + "last-new \(s.lastNew.map { "\(Int(s.seconds - $0))s" } ?? "-") reset dirty-pages\n").utf8))
        }
    }

    func finish(_ summary: CampaignSummary) {
        if quiet { return }
        var out = "wb: fuzzing stopped (\(summary.stoppedBecause)) after \(StatusScreen.duration(summary.status.seconds)): "
            + "\(summary.status.executions) runs, \(summary.status.covered) blocks covered, \(summary.crashes.count) crash bucket\(summary.crashes.count == 1 ? "" : "s")\n"
        for c in summary.crashes {
            out += "  \(c.signal) in \(c.function ?? "?") (\(c.hits) hit\(c.hits == 1 ? "" : "s")): \(c.directory)\n"
        }
        out += "  output: \(summary.out)\n"
        FileHandle.standardError.write(Data(out.utf8))
    }
}

/// What `wb fuzz --slurm --json` prints.
struct SlurmReceipt: Codable {
    var job: String
    var workers: Int
    var out: String
    var script: String
}
