import Foundation
import Glibc
import WBCore

/// The campaign's output directory, laid out as AFL's so users' tools read it:
///
///     queue/id:000000,orig:SEED          inputs that reached new code (seeds first)
///     queue/id:000007,src:000003,op:cmp,+cov
///     crashes/BUCKET/{input,input.min,report.txt,report.json,replay.json}
///     hangs/id:000000,...                inputs that ran past the timeout
///     fuzzer_stats  plot_data  coverage.svg  campaign.json
///     .wb/                               workers' state (stats, coverage, logs, locks)
///
/// Several worker processes write it at once: queue ids are taken under a lock, a crash
/// bucket belongs to the worker whose mkdir made it.
public struct OutputDirectory: Sendable {
    public let path: String
    public var queue: String { "\(path)/queue" }
    public var crashes: String { "\(path)/crashes" }
    public var hangs: String { "\(path)/hangs" }
    public var state: String { "\(path)/.wb" }
    public var stopFile: String { "\(state)/stop" }

    public init(path: String) { self.path = path }

    /// Refuses a directory that holds another campaign.
    public func checkUnused() throws {
        if Paths.exists("\(path)/fuzzer_stats") || Paths.exists(queue) {
            throw WBError.invalidArgument("--out \(path) already holds a campaign: pick another directory, or remove it first")
        }
    }

    /// Makes the directory for a new campaign; refuses one that holds another campaign.
    public func create() throws {
        try checkUnused()
        for d in [path, queue, crashes, hangs, state] { try Paths.makeDirectories(d) }
        Paths.remove(stopFile)
    }

    /// Writes `bytes` to a new file (never over an existing one); false if it exists.
    @discardableResult
    public static func write(_ bytes: [UInt8], to file: String, replacing: Bool = false) throws -> Bool {
        let temporary = replacing ? file + ".tmp.\(getpid())" : file
        let fd = open(temporary, O_WRONLY | O_CREAT | (replacing ? O_TRUNC : O_EXCL) | O_CLOEXEC, 0o644)
        if fd < 0 {
            if errno == EEXIST { return false }
            throw WBError.system(call: "open", errno: errno, what: "writing \(file)")
        }
        let f = FileDescriptor(owning: fd)
        try f.writeAll(bytes)
        f.close()
        if replacing { try Paths.rename(temporary, to: file) }
        return true
    }

    public static func write(_ text: String, to file: String) throws {
        try write(Array(text.utf8), to: file, replacing: true)
    }

    /// Runs `body` holding the directory's lock (for taking queue ids).
    public func locked<T>(_ body: () throws -> T) throws -> T {
        let fd = open("\(state)/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw WBError.system(call: "open", errno: errno, what: "locking \(state)/lock") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 && errno == EINTR {}
        return try body()
    }

    /// Adds an input to queue/ under the next free id; returns its file name.
    public func enqueue(_ data: [UInt8], describe: (Int) -> String) throws -> String {
        try locked {
            let names = (try? Paths.list(queue)) ?? []
            let next = (names.compactMap(OutputDirectory.id(of:)).max() ?? -1) + 1
            let name = describe(next)
            try OutputDirectory.write(data, to: "\(queue)/\(name)")
            return name
        }
    }

    /// The id of a queue file name ("id:000012,...").
    public static func id(of name: String) -> Int? {
        guard name.hasPrefix("id:") else { return nil }
        return Int(name.dropFirst(3).prefix { $0.isNumber })
    }

    public static func idText(_ n: Int) -> String { String(format: "%06d", n) }
}

/// One worker's counters, written to .wb/worker-N.json about once a second and summed by
/// the first worker for the status screen and fuzzer_stats.
public struct WorkerStats: Codable, Sendable {
    public var worker: Int
    public var pid: Int32
    public var target: Int32
    public var executions = 0
    public var executionsPerSecond = 0.0
    public var corpus = 0
    public var found = 0
    public var imported = 0
    public var seeds = 0
    public var blocks = 0
    public var covered = 0
    public var crashes: [String: Int] = [:]
    public var hangs = 0
    /// Crashes and hangs that did not happen again in a fresh restore (dropped), and how
    /// many fresh restores were run to check.
    public var dropped = 0
    public var droppedHangs = 0
    /// The buckets of the dropped crashes (a reset wb got wrong shows here).
    public var droppedBuckets: [String: Int] = [:]
    public var confirmations = 0
    /// Runs that ended because the process forked or exec'd.
    public var forked = 0
    /// Checksum compares passed in every run, inputs found past them whose repair held, and
    /// ones whose repair did not (the program read the stored value elsewhere).
    public var checksums = 0
    public var repaired = 0
    public var unrepaired = 0
    public var cycles = 0
    public var lastNew: Double?
    public var lastCrash: Double?
    public var lastHang: Double?
    public var firstCrash: Double?
    public var seconds = 0.0
    public var stage = "starting"
    public var current = ""
    public var timeoutMilliseconds = 0
    public var reset = ""
    public var error: String?
    /// The files whose code is measured.
    public var covers: [String] = []
    /// Things the user should know about the campaign (the input is never read, ...).
    public var warnings: [String] = []

    public init(worker: Int, pid: Int32, target: Int32) {
        self.worker = worker; self.pid = pid; self.target = target
    }
}

/// The campaign as a whole: the sum of its workers.
public struct CampaignStatus: Codable, Sendable {
    public var seconds: Double
    public var workers: Int
    public var executions: Int
    public var executionsPerSecond: Double
    public var blocks: Int
    public var covered: Int
    public var corpus: Int
    public var found: Int
    public var seeds: Int
    public var uniqueCrashes: Int
    public var crashes: Int
    public var hangs: Int
    /// Crashes and hangs dropped because they did not happen again in a fresh restore.
    public var dropped: Int
    public var droppedHangs: Int
    /// The buckets of the dropped crashes, with how many runs fell in each.
    public var droppedBuckets: [String: Int]
    /// Checksum compares passed in every run (the most any worker found), and the inputs
    /// found past them whose repair held, or did not.
    public var checksums: Int
    public var repaired: Int
    public var unrepaired: Int
    public var cycles: Int
    public var lastNew: Double?
    public var lastCrash: Double?
    public var lastHang: Double?
    public var firstCrash: Double?
    public var reset: String
    public var stage: String
    public var timeoutMilliseconds: Int
    public var buckets: [String: Int]
    /// The files whose code is measured (`--cover`).
    public var covers: [String]
    public var warnings: [String]

    public init(workers stats: [WorkerStats], covered: Int) {
        let main = stats.first
        seconds = main?.seconds ?? 0
        workers = stats.count
        executions = stats.reduce(0) { $0 + $1.executions }
        executionsPerSecond = stats.reduce(0) { $0 + $1.executionsPerSecond }
        blocks = main?.blocks ?? 0
        self.covered = covered
        corpus = stats.map(\.corpus).max() ?? 0
        found = stats.reduce(0) { $0 + $1.found }
        seeds = main?.seeds ?? 0
        var buckets: [String: Int] = [:]
        for s in stats { for (b, n) in s.crashes { buckets[b, default: 0] += n } }
        self.buckets = buckets
        uniqueCrashes = buckets.count
        crashes = buckets.values.reduce(0, +)
        hangs = stats.reduce(0) { $0 + $1.hangs }
        dropped = stats.reduce(0) { $0 + $1.dropped }
        droppedHangs = stats.reduce(0) { $0 + $1.droppedHangs }
        var droppedBuckets: [String: Int] = [:]
        for s in stats { for (b, n) in s.droppedBuckets { droppedBuckets[b, default: 0] += n } }
        self.droppedBuckets = droppedBuckets
        checksums = stats.map(\.checksums).max() ?? 0
        repaired = stats.reduce(0) { $0 + $1.repaired }
        unrepaired = stats.reduce(0) { $0 + $1.unrepaired }
        cycles = main?.cycles ?? 0
        lastNew = stats.compactMap(\.lastNew).max()
        lastCrash = stats.compactMap(\.lastCrash).max()
        lastHang = stats.compactMap(\.lastHang).max()
        firstCrash = stats.compactMap(\.firstCrash).min()
        reset = main?.reset ?? ""
        stage = main.map { $0.current.isEmpty ? $0.stage : "\($0.stage) on \($0.current)" } ?? ""
        timeoutMilliseconds = main?.timeoutMilliseconds ?? 0
        covers = main?.covers ?? []
        var seen = Set<String>()
        warnings = stats.flatMap(\.warnings).filter { seen.insert($0).inserted }
    }
}
