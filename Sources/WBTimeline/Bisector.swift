import Foundation
import Glibc
import WBCheckpoint
import WBCore
import WBDebug
import WBRestore
import WBSymbols
import WBTrace

/// Finds where a timeline went wrong (`wb bisect`): a binary search over its checkpoints for
/// the last good one, then rounds of running forward from the last good checkpoint, taking
/// finer checkpoints and searching among them, until the window between the last good and
/// the first bad state is no longer than the resolution.
public final class Bisector {
    public enum Check: Sendable {
        /// A shell command: WB_PID is the restored, stopped process; exit 0 means good.
        case predicate(String)
        /// A C expression gdb evaluates in the restored process: true means good.
        case gdb(String)
    }

    /// One point on the timeline: an image and its time in seconds after the program started.
    public struct Point: Codable, Sendable {
        public var image: String
        public var seconds: Double
        public var label: String
    }

    public struct Evaluation: Codable, Sendable {
        public var point: Point
        public var good: Bool
        public var round: Int
    }

    public struct Result: Codable, Sendable {
        public var lastGood: Point
        public var firstBad: Point
        public var windowSeconds: Double
        public var rounds: Int
        public var evaluations: [Evaluation]
        /// The bad end's threads, innermost frame first.
        public var backtrace: [Frame]
        public var thread: Int32
    }

    let timeline: Timeline
    let check: Check
    public var resolution: Double = 0.001
    /// Checkpoints per narrowing round.
    public var steps = 8
    public var report: (String) -> Void = { _ in }
    private(set) var evaluations: [Evaluation] = []
    private var round = 0
    let store: TimelineStore
    private var taken: [Point] = []

    /// Files the process may write are copies (in this directory), unless `liveFiles`: a
    /// bisect runs processes forward and must not write the user's files.
    public var liveFiles = false
    /// Made at the first restore, removed when the bisect ends: the checkpoints a narrowing
    /// round takes name the copies, and are restored (copied again) after that run.
    private var copiesDirectory: String?

    var restoreOptions: RestoreOptions {
        var o = RestoreOptions()
        o.silenceOutput = true
        o.isolateSockets = true
        if !liveFiles {
            if copiesDirectory == nil {
                var template = Array("\(ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp")/wb-bisect-XXXXXX".utf8CString)
                copiesDirectory = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) }
                if let d = copiesDirectory { _ = chmod(d, 0o711) }
            }
            o.privateFiles = copiesDirectory
        }
        return o
    }

    deinit {
        if let d = copiesDirectory { try? FileManager.default.removeItem(atPath: d) }
    }

    public init(timeline: Timeline, check: Check) throws {
        self.timeline = timeline
        self.check = check
        store = try TimelineStore(timeline: timeline)
    }

    public func run() throws -> Result {
        let points = timeline.checkpoints.filter { $0.reason != "bisect" }.sorted { $0.seconds < $1.seconds }
            .map { Point(image: timeline.imagePath($0), seconds: $0.seconds, label: "#\($0.number)") }
        guard points.count >= 1 else { throw WBError.invalidArgument("\(timeline.directory): the timeline has no checkpoints") }
        guard let last = points.last, try !evaluate(last) else {
            throw WBError.failed("every checkpoint passes the check, the last one (\(points.last!.label)) too: nothing went wrong in this timeline, as far as the check can tell")
        }
        guard try evaluate(points[0]) else {
            throw WBError.failed("the first checkpoint (\(points[0].label), \(String(format: "%.3f", points[0].seconds)) s) already fails the check: things went wrong before it")
        }
        var (good, bad) = try search(points, good: 0, bad: points.count - 1)
        report("last good \(good.label) at \(String(format: "%.3f", good.seconds)) s, first bad \(bad.label) at \(String(format: "%.3f", bad.seconds)) s")
        var kept: Set<String> = []
        while bad.seconds - good.seconds > resolution && round < 12 {
            round += 1
            let step = (bad.seconds - good.seconds) / Double(steps)
            report("round \(round): from \(good.label), \(steps - 1) checkpoints \(String(format: "%.3f", step * 1000)) ms apart")
            let finer = try runForward(from: good, step: step, count: steps - 1)
            guard !finer.isEmpty else { break }
            let candidates = [good] + finer + [bad]
            let (g, b) = try search(candidates, good: 0, bad: candidates.count - 1)
            if g.image == good.image && b.image == bad.image { break }
            (good, bad) = (g, b)
            kept = [good.image, bad.image]
            try forget(taken.filter { !kept.contains($0.image) })
        }
        try forget(taken.filter { !kept.contains($0.image) })
        let (tid, frames) = backtrace(of: bad.image)
        return Result(lastGood: good, firstBad: bad, windowSeconds: bad.seconds - good.seconds, rounds: round,
                      evaluations: evaluations, backtrace: frames, thread: tid)
    }

    /// Binary search between a good and a bad index.
    private func search(_ points: [Point], good: Int, bad: Int) throws -> (Point, Point) {
        var lo = good, hi = bad
        while hi - lo > 1 {
            let mid = (lo + hi) / 2
            if try evaluate(points[mid]) { lo = mid } else { hi = mid }
        }
        return (points[lo], points[hi])
    }

    /// Restores `point`, stopped, and asks the check.
    func evaluate(_ point: Point) throws -> Bool {
        if let known = evaluations.first(where: { $0.point.image == point.image }) { return known.good }
        let image = try Image(path: point.image)
        let restorer = Restorer(image: image, options: restoreOptions)
        let restored = try restorer.restore()
        let good: Bool
        switch check {
        case let .predicate(command):
            restored.releaseStopped()
            defer { restored.terminate() }
            var env = ProcessInfo.processInfo.environment
            env["WB_PID"] = "\(restored.pid)"
            env["WB_IMAGE"] = point.image
            let sh = try Subprocess.spawn("/bin/sh", ["-c", command], environment: env, stdin: 0, stdout: 2, stderr: 2)
            var status: Int32 = 0
            while waitpid(sh, &status, 0) < 0 && errno == EINTR {}
            good = status & 0x7f == 0 && (status >> 8) & 0xff == 0
        case let .gdb(expression):
            defer { restored.terminate() }
            good = try GDBCheck.evaluate(expression, in: restored, image: image, files: restorer.files ?? ResolvedFiles(),
                                         cache: FileCache(directory: FileCache.defaultDirectory))
        }
        evaluations.append(Evaluation(point: point, good: good, round: round))
        report("  \(point.label.padding(toLength: 20, withPad: " ", startingAt: 0)) \(String(format: "%9.4f", point.seconds)) s  \(good ? "good" : "bad")")
        return good
    }

    /// Restores `start` and lets it run, taking a checkpoint every `step` seconds, `count`
    /// times or until a signal is about to kill it (a last checkpoint then) or it ends.
    private func runForward(from start: Point, step: Double, count: Int) throws -> [Point] {
        Signals.block([SIGCHLD])
        let image = try Image(path: start.image)
        let restorer = Restorer(image: image, options: restoreOptions)
        let restored = try restorer.restore()
        let tracee = restored.tracee
        defer { restored.terminate() }
        var out: [Point] = []
        var elapsed = 0.0
        tracee.resumeAll()
        runs: for _ in 1...count {
            let until = Clock.monotonic + step
            while true {
                let left = until - Clock.monotonic
                if left <= 0 { break }
                guard let (tid, stop) = try tracee.waitAny(timeout: left) else { break }
                switch stop {
                case .exited where tid == restored.pid, .killed where tid == restored.pid:
                    break runs
                case .exited, .killed:
                    continue
                case let .signal(sig) where Supervisor.isFatal(sig, pid: restored.pid):
                    tracee.holdSignal(tid)
                    try tracee.stopAll(alreadyStopped: [tid])
                    elapsed += step - max(0, until - Clock.monotonic)
                    out.append(try take(restored, renamed: restorer.privateFileNames, label: "round \(round), \(SignalNames.name(sig))", seconds: start.seconds + elapsed, signal: sig))
                    break runs
                case let .signal(sig):
                    try tracee.resume(tid, .continue, signal: sig)
                case .event, .interrupted:
                    try tracee.resume(tid, .continue)
                }
            }
            elapsed += step
            try tracee.stopAll()
            out.append(try take(restored, renamed: restorer.privateFileNames, label: "round \(round)", seconds: start.seconds + elapsed))
            tracee.resumeAll()
        }
        return out
    }

    /// A checkpoint of the copy running forward, into the timeline (reason "bisect"), its
    /// pages shared with the others through the store.
    private func take(_ restored: RestoredProcess, renamed: [String: String], label: String, seconds: Double,
                      signal: Int32? = nil) throws -> Point {
        let (number, name) = timeline.takeNumber()
        let temporary = "\(timeline.directory)/.\(name).partial-image"
        var options = CheckpointOptions()
        options.renamedFiles = renamed
        let result = try Checkpointer(pid: restored.pid, options: options).checkpoint(to: temporary, stopped: restored.tracee)
        let interned = try store.intern(temporary, as: name, pack: number)
        let entry = Timeline.Checkpoint(number: number, image: name, seconds: seconds, time: ISO8601DateFormatter().string(from: Date()),
                                        reason: "bisect", signal: signal, storedBytes: interned.storedBytes, newBytes: interned.newBytes,
                                        fullBytes: interned.fullBytes, pauseSeconds: result.pauseSeconds)
        try timeline.append(entry, packs: interned.pack.map { [$0] } ?? [])
        let point = Point(image: timeline.imagePath(entry), seconds: seconds, label: "#\(number) (\(label))")
        taken.append(point)
        return point
    }

    /// Removes bisect checkpoints no longer needed.
    private func forget(_ points: [Point]) throws {
        let names = Set(points.map { ($0.image as NSString).lastPathComponent })
        let numbers = Set(timeline.checkpoints.filter { names.contains($0.image) }.map(\.number))
        if !numbers.isEmpty { try store.prune(numbers) }
        taken.removeAll { names.contains(($0.image as NSString).lastPathComponent) }
    }

    /// The bad end's main thread, symbolized.
    private func backtrace(of path: String) -> (Int32, [Frame]) {
        guard let image = try? Image(path: path),
              let files = try? FileResolver(image: image, cache: FileCache(directory: FileCache.defaultDirectory)).resolveAll(),
              let tracer = try? Backtracer(image: image, files: files) else { return (0, []) }
        let tid = image.process.pid
        return (tid, tracer.backtrace(tid))
    }
}
