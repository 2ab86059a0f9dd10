import Foundation
import Glibc
import WBCore
import WBRestore
import WBTrace

/// What a campaign is asked to do (`wb fuzz`).
public struct CampaignOptions: Sendable {
    public var imagePath: String
    public var input: InputChannel
    public var corpus: String
    public var out: String
    /// Seconds to fuzz; nil: until interrupted.
    public var duration: Double?
    /// Stop after this many runs (all workers together, roughly).
    public var maxRuns: Int?
    /// Stop once this many crash buckets are found.
    public var untilCrashes: Int?
    public var jobs = 1
    /// Per-run timeout in seconds; nil: chosen from the seeds' run times.
    public var timeout: Double?
    public var dictionary: [[UInt8]] = []
    public var seed: UInt64 = 1
    public var cover = "auto"
    /// Where a server's input is cut into messages (`--input-split`).
    public var inputSplit: [UInt8]?
    /// As one instance of a sync directory (`--sync-name`, and every Slurm worker): the
    /// directory and this instance's name. `out` is then the sync directory's NAME.
    public var syncDirectory: String?
    public var syncName: String?
    public var restore: RestoreOptions = {
        var o = RestoreOptions()
        o.isolateSockets = true
        return o
    }()
    /// Which worker this process is (0: the first, which also reports).
    public var worker = 0

    public init(imagePath: String, input: InputChannel, corpus: String, out: String) {
        self.imagePath = imagePath; self.input = input; self.corpus = corpus; self.out = out
    }
}

/// A queue entry: an input that reached code no earlier input had.
struct Entry {
    var name: String
    var id: Int?
    var data: [UInt8]
    var traced = false
    var rounds = 0
}

/// One worker: restores the image once, then runs mutated inputs from the queue against
/// it, adding inputs that reach new code, triaging crashes and hangs. Workers share the
/// output directory and pick up each other's queue entries.
public final class Worker {
    public let options: CampaignOptions
    public let output: OutputDirectory
    public let executor: Executor
    public private(set) var stats: WorkerStats
    /// Called about twice a second on the first worker, with the campaign's status.
    public var report: ((CampaignStatus, Bool) -> Void)?
    /// Asked about four times a second: true to stop.
    public var shouldStop: () -> Bool = { false }

    private var queue: [Entry] = []
    private var known: Set<String> = []
    private var mutator: Mutator
    private var cursor = -1
    private let start = Clock.monotonic
    private var nextTick = 0.0, nextStats = 0.0, nextImport = 0.0, nextReport = 0.0, nextSync = 0.0
    /// Queue entries of the other instances of the sync directory already run, by instance.
    private var synced: [String: Set<String>] = [:]
    private var rateWindow: (time: Double, executions: Int) = (0, 0)
    private var hangKeys: Set<CrashBucket> = []
    /// Buckets whose crash did not reproduce in a fresh restore, with how often that was tried.
    private var unconfirmed: [String: Int] = [:]
    private var warnedUnread = false
    private var coveredWritten = 0
    private var stopping = false
    private let parent = getppid()

    /// Restores the image for this worker.
    public init(options: CampaignOptions) throws {
        self.options = options
        output = OutputDirectory(path: options.out)
        let image = try Image(path: options.imagePath)
        var restore = options.restore
        // Other workers, and instances of a sync directory (several may share a node),
        // restore in pid namespaces of their own: the image's pids are taken already.
        if options.worker > 0 || options.syncName != nil { restore.pidNamespace = .new }
        executor = try Executor(image: image, input: options.input, split: options.inputSplit, cover: options.cover, options: restore)
        let cpus = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        executor.pin(cpu: options.worker % cpus)
        stats = WorkerStats(worker: options.worker, pid: getpid(), target: executor.restored.pid)
        stats.blocks = executor.blockCount
        stats.reset = executor.reset
        stats.covers = executor.coveredObjects
        mutator = Mutator(seed: options.seed &+ UInt64(options.worker) &* 0x9E37_79B9,
                          dictionary: options.dictionary + executor.constants.prefix(256))
    }

    deinit { executor.terminate() }

    var elapsed: Double { Clock.monotonic - start }

    /// Fuzzes until the duration is over, the run budget is spent, a crash is found (with
    /// untilCrashes) or `shouldStop` says so.
    public func run() throws {
        defer { stats.stage = "done"; writeStats() }
        do {
            try dryRun()
            while !stopping {
                cursor = (cursor + 1) % queue.count
                if cursor == 0 && queue[0].rounds > 0 { stats.cycles += 1 }
                stats.current = queue[cursor].name
                if !queue[cursor].traced { try comparisonStage(cursor) }
                if stopping { break }
                try havocStage(cursor)
            }
        } catch {
            stats.error = "\(error)"
            throw error
        }
    }

    // MARK: Stages

    /// Every seed runs once (and joins the queue); the timeout follows from their run times.
    private func dryRun() throws {
        stats.stage = "seeds"
        if options.worker > 0 { return try joinFirstWorker() }
        let names = (try? Paths.list(options.corpus).filter { !$0.hasPrefix(".") }.sorted()) ?? []
        var seeds: [(String, [UInt8])] = []
        for n in names {
            let p = "\(options.corpus)/\(n)"
            guard let st = try? Paths.stat(p), st.isRegular else { continue }
            seeds.append((n, try Paths.readBytes(p, limit: 1 << 20)))
        }
        if seeds.isEmpty {
            throw WBError.invalidArgument("--corpus \(options.corpus): no seed inputs there; put at least one file in it (an empty file will do)")
        }
        executor.timeout = options.timeout ?? 1
        var slowest = 0.0
        for (name, data) in seeds {
            let t0 = Clock.monotonic
            let r = try executor.run(data)
            var fastest = Clock.monotonic - t0
            stats.executions += 1
            // A run that finishes is timed twice more, its fastest counting (as AFL++
            // calibrates): one slow run on a busy machine does not set a long timeout.
            if !r.outcome.isFinding && r.outcome != .forked {
                for _ in 0..<2 {
                    let t1 = Clock.monotonic
                    _ = try executor.run(data)
                    fastest = min(fastest, Clock.monotonic - t1)
                    stats.executions += 1
                }
            }
            slowest = max(slowest, fastest)
            var entry = Entry(name: "", data: data)
            if options.worker == 0 {
                entry.name = try output.enqueue(data) { "id:\(OutputDirectory.idText($0)),orig:\(Worker.safe(name))" }
                entry.id = OutputDirectory.id(of: entry.name)
            } else {
                entry.name = "seed:\(name)"
            }
            known.insert(entry.name)
            queue.append(entry)
            try handle(r, data: data, source: nil, op: "seed", enqueue: false)
            if stopping { return }
        }
        stats.seeds = seeds.count
        stats.corpus = queue.count
        if options.timeout == nil {
            // As AFL: a generous multiple of the slowest seed, within 20 ms to 1 s.
            executor.timeout = min(1, max(0.02, slowest * 10))
        }
        stats.timeoutMilliseconds = Int(executor.timeout * 1000)
        stats.stage = "fuzzing"
    }

    /// The other workers start from the first one's queue once it has run the seeds, with
    /// the timeout it chose.
    private func joinFirstWorker() throws {
        let deadline = Clock.monotonic + 300
        while Clock.monotonic < deadline {
            if let d = try? Paths.readBytes("\(output.state)/worker-0.json"),
               let first = try? JSONDecoder().decode(WorkerStats.self, from: Data(d)), first.stage != "seeds" && first.stage != "starting" {
                executor.timeout = Double(first.timeoutMilliseconds) / 1000
                stats.timeoutMilliseconds = first.timeoutMilliseconds
                break
            }
            if Paths.exists(output.stopFile) || getppid() != parent { stopping = true; return }
            usleep(50_000)
        }
        try importOthers()
        if queue.isEmpty { throw WBError.failed("worker \(options.worker): the first worker left no queue in \(output.queue)") }
        stats.stage = "fuzzing"
    }

    /// Input-to-state: the operands of the compares this input reaches, put into the input
    /// where the other operand came from. A candidate that changes nothing new is traced in
    /// turn, so a second comparison it upsets (a checksum over the bytes just changed) is
    /// repaired the same way.
    private func comparisonStage(_ index: Int) throws {
        stats.stage = "comparisons"
        queue[index].traced = true
        let data = queue[index].data
        let traced = try executor.run(data, traceComparisons: true)
        stats.executions += 1
        try handle(traced, data: data, source: queue[index].id, op: "cmp", enqueue: true)
        let before = Set(traced.comparisons)
        if ProcessInfo.processInfo.environment["WB_FUZZ_TRACE"] != nil {
            FileHandle.standardError.write(Data("wb-trace: \(queue[index].name): \(traced.comparisons.map { "\(hex($0.left))/\(hex($0.right))/\($0.width)" }), \(Mutator.solutions(for: data, comparisons: traced.comparisons).count) candidates\n".utf8))
        }
        var tracedFollowUps = 0
        mutator.learn(traced.stringComparisons.flatMap { [$0.left, $0.right] })
        for candidate in Mutator.stringSolutions(for: data, comparisons: traced.stringComparisons) where !stopping {
            _ = try execute(candidate, source: queue[index].id, op: "cmp")
        }
        for candidate in Mutator.solutions(for: data, comparisons: traced.comparisons) where !stopping {
            let r = try execute(candidate, source: queue[index].id, op: "cmp")
            guard r.newBlocks.isEmpty, case .exited = r.outcome, tracedFollowUps < 64 else { continue }
            tracedFollowUps += 1
            let again = try executor.run(candidate, traceComparisons: true)
            stats.executions += 1
            try handle(again, data: candidate, source: queue[index].id, op: "cmp", enqueue: true)
            let fresh = again.comparisons.filter { !before.contains($0) }
            if ProcessInfo.processInfo.environment["WB_FUZZ_TRACE"] != nil {
                FileHandle.standardError.write(Data("wb-trace:   follow-up \(candidate.map { String(format: "%02x", $0) }.joined()) \(again.outcome): \(fresh.map { "\(hex($0.left))/\(hex($0.right))/\($0.width)" })\n".utf8))
            }
            for repaired in Mutator.solutions(for: candidate, comparisons: fresh, limit: 16) where !stopping {
                _ = try execute(repaired, source: queue[index].id, op: "cmp")
            }
        }
        if !stopping { try dependencyStage(index, comparisons: traced.comparisons) }
    }

    /// Comparisons of values computed from the input: the bytes each depends on, found by
    /// perturbing them, then solved over those bytes (`Solver`).
    private func dependencyStage(_ index: Int, comparisons: [Comparison], rounds: Int = 0) throws {
        stats.stage = "dependencies"
        let data = queue[index].data
        let solver = Solver()
        let source = queue[index].id
        var probes: [ChecksumFinder.Probe] = []
        let found = try solver.dependencies(of: data, base: comparisons) { candidate in
            let r = try executor.run(candidate, traceComparisons: true)
            stats.executions += 1
            try handle(r, data: candidate, source: source, op: "dep", enqueue: true)
            if let lo = candidate.indices.first(where: { candidate[$0] != data[$0] }),
               let hi = candidate.indices.last(where: { candidate[$0] != data[$0] }) {
                probes.append(.init(changed: lo..<(hi + 1), input: candidate, comparisons: r.comparisons))
            }
            return stopping ? [] : r.comparisons
        }
        // A checksum among the compares the perturbations upset: passed from now on, and the
        // bytes perturbed again, now that changing them gets past it (to the next checksum,
        // or to the code it guards).
        let checksums = ChecksumFinder.find(input: data, base: comparisons, probes: probes, equality: executor.equalityCompares,
                                            known: executor.checksums)
        if !checksums.isEmpty {
            try executor.passChecksums(checksums)
            stats.checksums = executor.checksums.count
            if ProcessInfo.processInfo.environment["WB_FUZZ_TRACE"] != nil {
                FileHandle.standardError.write(Data("wb-trace: \(queue[index].name): checksums \(checksums.map { "\(hex($0.address)) operand \($0.stored) follows \($0.positions.sorted { $0.key < $1.key }.map { "#\($0.key) [\($0.value)]" }.joined(separator: " ")) (\($0.width) bytes\($0.bigEndian ? ", big-endian" : ""), \($0.model.rawValue)\($0.direct ? ", direct" : ""))" })\n".utf8))
            }
            if rounds < 4 && !stopping { return try dependencyStage(index, comparisons: comparisons, rounds: rounds + 1) }
        }
        let dependents = found.filter { executor.checksums[$0.base.address] == nil }
        if ProcessInfo.processInfo.environment["WB_FUZZ_TRACE"] != nil {
            FileHandle.standardError.write(Data("wb-trace: \(queue[index].name): dependent comparisons \(dependents.map { "\(hex($0.base.address))#\($0.base.hit): \($0.effects.map { "[\($0.position)] \($0.left)/\($0.right)" })" })\n".utf8))
        }
        for candidate in solver.candidates(for: data, dependents) where !stopping {
            _ = try execute(candidate, source: source, op: "solve")
        }
    }

    /// Stacked random mutations of one entry.
    private func havocStage(_ index: Int) throws {
        stats.stage = "havoc"
        let rounds = queue[index].rounds == 0 ? 512 : 128
        queue[index].rounds += 1
        let base = queue[index].data
        for _ in 0..<rounds where !stopping {
            let other = queue.isEmpty ? [] : [queue[mutator.random.below(queue.count)].data]
            _ = try execute(mutator.mutate(base, corpus: other), source: queue[index].id, op: "havoc")
        }
    }

    // MARK: Runs and findings

    private func execute(_ data: [UInt8], source: Int?, op: String) throws -> RunResult {
        let r = try executor.run(data)
        stats.executions += 1
        try handle(r, data: data, source: source, op: op, enqueue: true)
        return r
    }

    private func handle(_ r: RunResult, data: [UInt8], source: Int?, op: String, enqueue: Bool) throws {
        if let fixed = r.repaired, r.outcome.isFinding || !r.newBlocks.isEmpty {
            // A run made to pass a checksum: what it found is kept once the repaired input
            // gets there as it is (a checksum over another's field may take a round more).
            var input = fixed
            for _ in 0..<4 where !stopping {
                var again = try executor.run(input)
                stats.executions += 1
                if let more = again.repaired { input = more; continue }
                again.newBlocks = r.newBlocks + again.newBlocks
                stats.repaired += 1
                return try handle(again, data: input, source: source, op: op, enqueue: enqueue)
            }
            stats.unrepaired += 1
            return
        }
        switch r.outcome {
        case .crashed:
            try crash(r, data: data)
        case .hang:
            try hang(r, data: data, source: source)
        case .exited, .waiting:
            if enqueue && !r.newBlocks.isEmpty { try add(data, source: source, op: op) }
        case .forked:
            stats.forked += 1
            if stats.forked == 1 {
                stats.warnings.append("runs fork or exec (first with input \(data.prefix(32).map { String(format: "%02x", $0) }.joined())); "
                                      + "a snapshot cannot be branched over a new process, so such runs end there")
            }
            if enqueue && !r.newBlocks.isEmpty { try add(data, source: source, op: op) }
        }
        if !r.newBlocks.isEmpty { stats.lastNew = elapsed; stats.covered = executor.covered.count }
        if options.maxRuns.map({ stats.executions >= $0 }) == true { stopping = true }
        let now = Clock.monotonic
        if now >= nextTick { try tick(now) }
    }

    private func add(_ data: [UInt8], source: Int?, op: String) throws {
        let src = source.map { ",src:\(OutputDirectory.idText($0))" } ?? ""
        let name = try output.enqueue(data) { "id:\(OutputDirectory.idText($0))\(src),op:\(op),+cov" }
        known.insert(name)
        queue.append(Entry(name: name, id: OutputDirectory.id(of: name), data: data))
        stats.found += 1
        stats.corpus = queue.count
    }

    /// Runs `data` once in a fresh restore of the image, as `wb replay` does: whether it
    /// crashes into `bucket` again (or, for a hang, runs past the timeout again). A finding
    /// that does not is the fuzzing copy's doing, not the input's, and is dropped. Nil when
    /// the fresh restore itself failed (the finding is kept, unconfirmed).
    private func reproduces(_ data: [UInt8], bucket: CrashBucket?) -> Bool? {
        let saved = stats.stage
        stats.stage = "confirming"
        defer { stats.stage = saved }
        var restore = options.restore
        restore.pidNamespace = .new
        // What the target prints (a crash's own message) is not the campaign's output.
        restore.silenceOutput = true
        // Its memory mapped from the image, not copied: one run does not need it all, and
        // copying a large snapshot for every finding costs seconds.
        restore.mapPages = true
        let fresh: Executor
        do {
            // A server never exits: its run ends when it waits for the next connection,
            // which only a branching copy sees (its first run is from a fresh restore too).
            fresh = try Executor(image: executor.image, input: options.input, split: options.inputSplit, cover: nil, options: restore,
                                 mode: options.input.isSocket ? .branching : .once)
        } catch {
            stats.error = "confirming a finding: \(error)"
            return nil
        }
        defer { fresh.terminate() }
        // A hang counts only when the input runs past a generous bound again (as AFL++'s
        // hang timeout): a run that was merely slow on a loaded machine is not a finding.
        fresh.timeout = bucket == nil ? max(1, executor.timeout * 3) : max(1, executor.timeout * 10)
        guard let r = try? fresh.run(data) else { return nil }
        stats.confirmations += 1
        guard let bucket else { return r.outcome == .hang }
        guard case .crashed = r.outcome, let s = r.crash else { return false }
        return CrashBucket(signal: s.signal, frames: s.frames, exe: executor.image.process.exe) == bucket
    }

    private func crash(_ r: RunResult, data: [UInt8]) throws {
        guard let state = r.crash else { return }
        let bucket = CrashBucket(signal: state.signal, frames: state.frames, exe: executor.image.process.exe)
        if stats.crashes[bucket.name] == nil {
            // A new bucket counts once a fresh restore crashes the same way.
            if unconfirmed[bucket.name, default: 0] >= 3 || reproduces(data, bucket: bucket) == false {
                unconfirmed[bucket.name, default: 0] += 1
                stats.dropped += 1
                stats.droppedBuckets[bucket.name, default: 0] += 1
                return
            }
        }
        stats.crashes[bucket.name, default: 0] += 1
        stats.lastCrash = elapsed
        if stats.firstCrash == nil { stats.firstCrash = elapsed }
        if let n = options.untilCrashes, stats.crashes.count >= n { stopping = true }
        let dir = "\(output.crashes)/\(bucket.name)"
        // The worker whose mkdir makes the bucket writes it.
        guard mkdir(dir, 0o755) == 0 else { return }
        var report = CrashReport(bucket: bucket, crash: state, input: data, runs: stats.executions, seconds: elapsed,
                                 worker: options.worker, image: Paths.absolute(options.imagePath), channel: options.input)
        try OutputDirectory.write(data, to: "\(dir)/input", replacing: true)
        var recipe = ReplayRecipe(image: Paths.absolute(options.imagePath), input: options.input.description,
                                  timeoutMilliseconds: Int(executor.timeout * 1000), signal: state.signal, bucket: bucket.name)
        recipe.inputSplit = options.inputSplit.map(ReplayRecipe.escape)
        try OutputDirectory.write(Array(try Worker.encoder.encode(recipe)), to: "\(dir)/replay.json", replacing: true)
        try writeReport(report, to: dir)
        stats.stage = "minimizing"
        var small = try Minimizer.minimize(data, budget: 1000) { candidate in
            let again = try executor.run(candidate)
            stats.executions += 1
            // A smaller input counts as it is: one a checksum had to be passed for does not.
            guard again.repaired == nil, let s = again.crash, case .crashed = again.outcome else { return false }
            return CrashBucket(signal: s.signal, frames: s.frames, exe: executor.image.process.exe) == bucket
        }
        if small != data && reproduces(small, bucket: bucket) == false { small = data }
        try OutputDirectory.write(small, to: "\(dir)/input.min", replacing: true)
        report.minimizedBytes = small.count
        try writeReport(report, to: dir)
        stats.stage = "fuzzing"
    }

    private func writeReport(_ report: CrashReport, to dir: String) throws {
        try OutputDirectory.write(Array(try Worker.encoder.encode(report)) + [10], to: "\(dir)/report.json", replacing: true)
        try OutputDirectory.write(report.text, to: "\(dir)/report.txt")
    }

    private func hang(_ r: RunResult, data: [UInt8], source: Int?) throws {
        stats.lastHang = elapsed
        let key = CrashBucket(signal: 0, frames: r.crash?.frames ?? [], exe: executor.image.process.exe)
        guard !hangKeys.contains(key), hangKeys.count < 100 else { return }
        // Slow runs stop in many places of the same function: after three that were not
        // hangs there, the others are not run again (each costs a second or more).
        let place = "hang:" + (key.function ?? key.name)
        if unconfirmed[place, default: 0] >= 3 { stats.droppedHangs += 1; return }
        if reproduces(data, bucket: nil) == false {
            unconfirmed[place, default: 0] += 1
            stats.droppedHangs += 1
            return
        }
        hangKeys.insert(key)
        stats.hangs += 1
        let src = source.map { ",src:\(OutputDirectory.idText($0))" } ?? ""
        let at = key.function.map { ",in:\(Worker.safe($0))" } ?? ""
        _ = try output.locked {
            let next = ((try? Paths.list(output.hangs)) ?? []).compactMap(OutputDirectory.id(of:)).max().map { $0 + 1 } ?? 0
            try OutputDirectory.write(data, to: "\(output.hangs)/id:\(OutputDirectory.idText(next))\(src)\(at)")
        }
    }

    // MARK: Housekeeping

    private func tick(_ now: Double) throws {
        nextTick = now + 0.25
        if !warnedUnread, options.input.isRead, elapsed > 2, stats.executions >= 10, executor.inputReads == 0 {
            warnedUnread = true
            stats.warnings.append(unreadWarning())
        }
        if Clock.monotonic - start >= (options.duration ?? .infinity) || shouldStop()
            || Paths.exists(output.stopFile) || getppid() != parent {
            stopping = true
        }
        if now >= nextStats {
            nextStats = now + 1
            let window = now - rateWindow.time
            if window > 0 && rateWindow.time > 0 {
                stats.executionsPerSecond = Double(stats.executions - rateWindow.executions) / window
            } else if elapsed > 0 {
                stats.executionsPerSecond = Double(stats.executions) / elapsed
            }
            rateWindow = (now, stats.executions)
            writeStats()
        }
        if options.jobs > 1 && now >= nextImport {
            nextImport = now + 2
            try? importOthers()
        }
        if options.syncDirectory != nil && options.worker == 0 && now >= nextSync {
            nextSync = now + 5
            try importSynced()
        }
        if let report, now >= nextReport {
            nextReport = now + 0.5
            report(status(), false)
        }
    }

    /// No run read the input: say which fds the process does read, so the user can point
    /// --input at the right one.
    private func unreadWarning() -> String {
        let pid = executor.restored.pid
        let read = executor.readsByFD.sorted { $0.value > $1.value }.prefix(5).map { fd, n in
            let target = (try? Paths.readLink("/proc/\(pid)/fd/\(fd)")) ?? "closed"
            return "fd \(fd) (\(target), \(n) read\(n == 1 ? "" : "s"))"
        }
        let channel: String
        switch options.input {
        case .fd: channel = "--input \(options.input) (fd \(executor.inputFDs.sorted().map(String.init).joined(separator: ", ")))"
        default: channel = "--input \(options.input)"
        }
        return "no run has read the input given with \(channel) in \(stats.executions) runs; "
            + (read.isEmpty ? "the process read no fd at all (is it blocked elsewhere, or does the input go to memory: --input mem:SYMBOL?)"
               : "the process reads \(read.joined(separator: ", ")): give --input fd:N for the one that carries the input")
    }

    /// Queue entries other workers found, run here so this worker's coverage catches up.
    private func importOthers() throws {
        let names = try Paths.list(output.queue).filter { !known.contains($0) && !$0.hasPrefix(".") }.sorted()
        for name in names where !stopping {
            known.insert(name)
            guard let data = try? Paths.readBytes("\(output.queue)/\(name)", limit: 1 << 20) else { continue }
            let r = try executor.run(data)
            stats.executions += 1
            if !r.newBlocks.isEmpty { stats.covered = executor.covered.count }
            queue.append(Entry(name: name, id: OutputDirectory.id(of: name), data: data))
            stats.imported += 1
            stats.corpus = queue.count
        }
    }

    /// Queue entries of the sync directory's other instances (wb's or AFL++'s), run here;
    /// those that reach code this instance had not are saved to its queue as AFL++ does
    /// (`id:N,sync:INSTANCE,src:ID`), and crashes and hangs are findings of this instance.
    private func importSynced() throws {
        guard let sync = options.syncDirectory, let me = options.syncName else { return }
        for other in SyncDirectory.instances(sync) where other != me {
            let dir = "\(sync)/\(other)/queue"
            var seen = synced[other, default: []]
            defer { synced[other] = seen }
            let fresh = ((try? Paths.list(dir)) ?? []).filter { $0.hasPrefix("id:") && !seen.contains($0) }.sorted()
            for name in fresh where !stopping {
                seen.insert(name)
                guard let st = try? Paths.stat("\(dir)/\(name)"), st.isRegular,
                      let data = try? Paths.readBytes("\(dir)/\(name)", limit: 1 << 20) else { continue }
                let r = try executor.run(data)
                stats.executions += 1
                stats.imported += 1
                switch r.outcome {
                case .crashed, .hang:
                    try handle(r, data: data, source: nil, op: "sync", enqueue: false)
                default:
                    guard !r.newBlocks.isEmpty else { continue }
                    let src = OutputDirectory.id(of: name).map { ",src:\(OutputDirectory.idText($0))" } ?? ""
                    let saved = try output.enqueue(data) { "id:\(OutputDirectory.idText($0)),sync:\(Worker.safe(other))\(src)" }
                    known.insert(saved)
                    queue.append(Entry(name: saved, id: OutputDirectory.id(of: saved), data: data))
                    stats.lastNew = elapsed
                    stats.covered = executor.covered.count
                    stats.corpus = queue.count
                }
            }
        }
    }

    private func writeStats() {
        stats.seconds = elapsed
        stats.covered = executor.covered.count
        if let data = try? Worker.encoder.encode(stats) {
            _ = try? OutputDirectory.write(Array(data), to: "\(output.state)/worker-\(options.worker).json", replacing: true)
        }
        // Newly covered blocks, appended for the union across workers.
        let covered = executor.coveredInOrder
        if covered.count > coveredWritten {
            let fresh = covered[coveredWritten...].flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }
            let fd = open("\(output.state)/worker-\(options.worker).covered", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if fd >= 0 {
                let f = FileDescriptor(owning: fd)
                if (try? f.writeAll(fresh)) != nil { coveredWritten = covered.count }
            }
        }
    }

    /// The campaign's status from every worker's latest stats (this worker's own are current).
    public func status() -> CampaignStatus {
        var all = [stats]
        var union = Set(executor.covered)
        if options.jobs > 1 {
            for k in 1..<options.jobs {
                if let d = try? Paths.readBytes("\(output.state)/worker-\(k).json"),
                   let s = try? JSONDecoder().decode(WorkerStats.self, from: Data(d)) {
                    all.append(s)
                }
                if let raw = try? Paths.readBytes("\(output.state)/worker-\(k).covered", limit: 1 << 28) {
                    for i in stride(from: 0, to: raw.count - 7, by: 8) {
                        union.insert(raw[i..<(i + 8)].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
                    }
                }
            }
        }
        all[0].seconds = elapsed
        return CampaignStatus(workers: all, covered: union.count)
    }

    static func safe(_ name: String) -> String {
        String(name.map { $0.isLetter || $0.isNumber || "_.-".contains($0) ? $0 : "_" }.prefix(60))
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return e
    }()
}

/// A whole campaign: the output directory, the first worker in this process and the
/// others as child processes (`workerCommand` says how to start worker k), the record
/// of it all, and a summary at the end.
public final class Campaign {
    public let options: CampaignOptions
    /// The campaign's status about twice a second (for the status screen).
    public var status: ((CampaignStatus) -> Void)?
    /// Asked a few times a second: true to stop (Ctrl-C).
    public var shouldStop: () -> Bool = { false }
    /// The program and arguments that run worker k in a process of its own.
    public var workerCommand: ((Int) -> (String, [String]))?
    public var commandLine = ""

    public init(options: CampaignOptions) { self.options = options }

    public func run() throws -> CampaignSummary {
        let output = OutputDirectory(path: options.out)
        try output.checkUnused()
        // The first worker restores before anything is written: a restore that fails (a
        // wrong --input, an image that cannot come back here) leaves no campaign behind.
        let worker = try Worker(options: options)
        try output.create()
        var children: [Int32] = []
        defer { stop(children, output) }
        if options.jobs > 1, let command = workerCommand {
            for k in 1..<options.jobs {
                let log = open("\(output.state)/worker-\(k).log", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
                defer { if log >= 0 { close(log) } }
                let (program, arguments) = command(k)
                children.append(try Subprocess.spawn(program, arguments, stdout: log, stderr: log))
            }
        }
        let recorder = try Recorder(output: output, commandLine: commandLine)
        recorder.banner = options.syncName ?? "wb"
        var bucketsFound = 0
        var interrupted = false
        worker.report = { [weak self] status, _ in
            recorder.record(status)
            bucketsFound = status.uniqueCrashes
            self?.status?(status)
        }
        worker.shouldStop = { [options, shouldStop] in
            if shouldStop() { interrupted = true; return true }
            return options.untilCrashes.map { bucketsFound >= $0 } ?? false
        }
        try worker.run()
        stop(children, output)
        children = []
        let final = worker.status()
        recorder.record(final, force: true)
        status?(final)
        let summary = CampaignSummary(
            image: Paths.absolute(options.imagePath), out: Paths.absolute(options.out), input: options.input.description,
            status: final, crashes: crashes(output, final), secondsToFirstCrash: final.firstCrash,
            stoppedBecause: interrupted ? "interrupted" : options.untilCrashes.map { final.uniqueCrashes >= $0 } == true ? "crashes found"
                : options.maxRuns.map { final.executions >= $0 } == true ? "run limit" : "duration")
        try recorder.finish(summary)
        return summary
    }

    /// Asks the other workers to stop and waits for them (killing any that hang on).
    private func stop(_ children: [Int32], _ output: OutputDirectory) {
        guard !children.isEmpty else { return }
        _ = try? OutputDirectory.write([], to: output.stopFile, replacing: true)
        let deadline = Clock.monotonic + 15
        var left = Set(children)
        while !left.isEmpty {
            for pid in left {
                var st: Int32 = 0
                let r = waitpid(pid, &st, WNOHANG)
                if r == pid || (r < 0 && errno == ECHILD) { left.remove(pid) }
            }
            if Clock.monotonic > deadline { for pid in left { kill(pid, SIGKILL); var st: Int32 = 0; waitpid(pid, &st, 0) }; break }
            usleep(20_000)
        }
    }

    private func crashes(_ output: OutputDirectory, _ status: CampaignStatus) -> [CampaignSummary.Crash] {
        let names = ((try? Paths.list(output.crashes)) ?? []).sorted()
        return names.compactMap { name in
            let dir = "\(output.crashes)/\(name)"
            guard let raw = try? Paths.readBytes("\(dir)/report.json"),
                  let r = try? JSONDecoder().decode(CrashReport.self, from: Data(raw)) else { return nil }
            return .init(bucket: name, directory: dir, signal: r.signalName, function: r.function,
                         hits: status.buckets[name] ?? 1, inputBytes: r.inputBytes, minimizedBytes: r.minimizedBytes)
        }
    }
}
