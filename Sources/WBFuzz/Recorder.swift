import Foundation
import Glibc
import WBCore

/// The campaign's record for people and their tools: `fuzzer_stats` and `plot_data` in
/// AFL++'s formats, a coverage-over-time plot (`coverage.svg`) and `campaign.json`.
public final class Recorder {
    public struct Sample: Codable, Sendable {
        public var seconds: Double
        public var covered: Int
        public var corpus: Int
        public var crashes: Int
        public var hangs: Int
        public var executions: Int
        public var executionsPerSecond: Double
    }

    let output: OutputDirectory
    let commandLine: String
    /// The campaign's name in fuzzer_stats (afl_banner): its instance name in a sync directory.
    public var banner = "wb"
    let startTime = time(nil)
    public private(set) var samples: [Sample] = []
    private var nextSample = 0.0

    public init(output: OutputDirectory, commandLine: String) throws {
        self.output = output
        self.commandLine = commandLine
        try OutputDirectory.write("# relative_time, cycles_done, cur_item, corpus_count, pending_total, pending_favs, map_size, "
                                  + "saved_crashes, saved_hangs, max_depth, execs_per_sec, total_execs, edges_found\n",
                                  to: "\(output.path)/plot_data")
    }

    /// Takes a sample (at most one a second unless `force`) and rewrites fuzzer_stats.
    public func record(_ s: CampaignStatus, force: Bool = false) {
        guard force || s.seconds >= nextSample else { return }
        nextSample = s.seconds + 1
        let sample = Sample(seconds: s.seconds, covered: s.covered, corpus: s.corpus, crashes: s.uniqueCrashes, hangs: s.hangs,
                            executions: s.executions, executionsPerSecond: s.executionsPerSecond)
        samples.append(sample)
        let line = "\(Int(s.seconds)), \(s.cycles), 0, \(s.corpus), 0, 0, \(percent(s)), \(s.uniqueCrashes), \(s.hangs), 1, "
            + String(format: "%.2f", s.executionsPerSecond) + ", \(s.executions), \(s.covered)\n"
        let fd = open("\(output.path)/plot_data", O_WRONLY | O_APPEND | O_CLOEXEC)
        if fd >= 0 { _ = try? FileDescriptor(owning: fd).writeAll(Array(line.utf8)) }
        try? OutputDirectory.write(fuzzerStats(s), to: "\(output.path)/fuzzer_stats")
    }

    func percent(_ s: CampaignStatus) -> String {
        String(format: "%.2f%%", s.blocks > 0 ? 100 * Double(s.covered) / Double(s.blocks) : 0)
    }

    func fuzzerStats(_ s: CampaignStatus) -> String {
        let now = time(nil)
        func at(_ t: Double?) -> Int { t.map { startTime + Int($0) } ?? 0 }
        let rows: [(String, String)] = [
            ("start_time", "\(startTime)"), ("last_update", "\(now)"), ("run_time", "\(Int(s.seconds))"),
            ("fuzzer_pid", "\(getpid())"), ("hostname", SyncDirectory.host), ("afl_banner", banner),
            ("cycles_done", "\(s.cycles)"), ("cur_item", "0"), ("pending_favs", "0"), ("pending_total", "0"),
            ("execs_done", "\(s.executions)"),
            ("execs_per_sec", String(format: "%.2f", s.executionsPerSecond)), ("corpus_count", "\(s.corpus)"),
            ("corpus_found", "\(s.found)"), ("corpus_seeds", "\(s.seeds)"), ("saved_crashes", "\(s.uniqueCrashes)"),
            ("total_crashes", "\(s.crashes)"), ("saved_hangs", "\(s.hangs)"), ("dropped_crashes", "\(s.dropped)"), ("dropped_hangs", "\(s.droppedHangs)"),
            ("checksums", "\(s.checksums)"), ("repaired_inputs", "\(s.repaired)"), ("unrepaired_inputs", "\(s.unrepaired)"), ("last_find", "\(at(s.lastNew))"),
            ("last_crash", "\(at(s.lastCrash))"), ("last_hang", "\(at(s.lastHang))"), ("exec_timeout", "\(s.timeoutMilliseconds)"),
            ("bitmap_cvg", percent(s)), ("edges_found", "\(s.covered)"), ("total_edges", "\(s.blocks)"),
            ("coverage_unit", "basic blocks"), ("workers", "\(s.workers)"), ("reset", s.reset),
            ("target_mode", "snapshot (wb)"), ("command_line", commandLine),
        ]
        return rows.map { "\($0.0.padding(toLength: 18, withPad: " ", startingAt: 0)): \($0.1)" }.joined(separator: "\n") + "\n"
    }

    /// Writes coverage.svg and campaign.json at the end.
    public func finish(_ summary: CampaignSummary) throws {
        try OutputDirectory.write(svg(total: summary.status.blocks), to: "\(output.path)/coverage.svg")
        let data = try Worker.encoder.encode(summary)
        try OutputDirectory.write(Array(data) + [10], to: "\(output.path)/campaign.json", replacing: true)
    }

    /// Covered blocks over time, with a mark where each new crash bucket appeared.
    public func svg(total: Int) -> String {
        let w = 720.0, h = 360.0, left = 64.0, right = 16.0, top = 32.0, bottom = 48.0
        let maxT = max(1, samples.last?.seconds ?? 1)
        let maxY = Double(max(1, samples.map(\.covered).max() ?? 1))
        func x(_ t: Double) -> Double { left + (w - left - right) * t / maxT }
        func y(_ v: Double) -> Double { h - bottom - (h - top - bottom) * v / maxY }
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(left)" y="20" font-size="14">wb fuzz: basic blocks covered over time (\(Int(maxY)) of \(total))</text>
        <line x1="\(left)" y1="\(h - bottom)" x2="\(w - right)" y2="\(h - bottom)" stroke="black"/>
        <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(h - bottom)" stroke="black"/>

        """
        for i in 0...4 {
            let v = maxY * Double(i) / 4, t = maxT * Double(i) / 4
            out += "<text x=\"\(left - 6)\" y=\"\(y(v) + 4)\" text-anchor=\"end\">\(Int(v))</text>\n"
            out += "<text x=\"\(x(t))\" y=\"\(h - bottom + 16)\" text-anchor=\"middle\">\(String(format: "%.0f", t)) s</text>\n"
            if i > 0 { out += "<line x1=\"\(left)\" y1=\"\(y(v))\" x2=\"\(w - right)\" y2=\"\(y(v))\" stroke=\"#ddd\"/>\n" }
        }
        out += "<text x=\"\((left + w - right) / 2)\" y=\"\(h - 10)\" text-anchor=\"middle\">seconds</text>\n"
        let points = ([Sample(seconds: 0, covered: samples.first?.covered ?? 0, corpus: 0, crashes: 0, hangs: 0, executions: 0, executionsPerSecond: 0)] + samples)
            .map { String(format: "%.1f,%.1f", x($0.seconds), y(Double($0.covered))) }.joined(separator: " ")
        out += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"\(points)\"/>\n"
        var crashes = 0
        for s in samples where s.crashes > crashes {
            crashes = s.crashes
            out += "<circle cx=\"\(x(s.seconds))\" cy=\"\(y(Double(s.covered)))\" r=\"4\" fill=\"#d62728\"><title>crash bucket \(crashes) at \(Int(s.seconds)) s</title></circle>\n"
        }
        out += "<text x=\"\(w - right)\" y=\"20\" text-anchor=\"end\" fill=\"#d62728\">● new crash bucket</text>\n</svg>\n"
        return out
    }
}

/// What `wb fuzz --json` prints and campaign.json holds.
public struct CampaignSummary: Codable, Sendable {
    public struct Crash: Codable, Sendable {
        public var bucket: String
        public var directory: String
        public var signal: String
        public var function: String?
        public var hits: Int
        public var inputBytes: Int
        public var minimizedBytes: Int?
    }

    public var image: String
    public var out: String
    public var input: String
    public var status: CampaignStatus
    public var crashes: [Crash]
    public var secondsToFirstCrash: Double?
    public var stoppedBecause: String
}
