import Foundation
import Glibc
import WBCore
import WBTrace

/// A campaign spread over instances, in AFL++'s sync-directory layout: OUT/NAME is one
/// instance's output directory (queue/, crashes/, hangs/, fuzzer_stats), wb's or AFL++'s.
/// Instances read each other's queues, `afl-whatsup OUT` reads their fuzzer_stats, and
/// `wb fuzz --status OUT` sums them.
public enum SyncDirectory {
    /// This machine's name, as fuzzer_stats gives it (without its domain).
    public static let host = HostInfo.current().hostname.split(separator: ".").first.map(String.init) ?? "localhost"

    /// Whether `name` can name an instance (a directory name AFL++ accepts too).
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64 && name.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95
        }
    }

    /// The instances in `dir`: its subdirectories with a queue/ (none for an individual
    /// output directory, which holds queue/ itself).
    public static func instances(_ dir: String) -> [String] {
        ((try? Paths.list(dir)) ?? []).filter { !$0.hasPrefix(".") && Paths.exists("\(dir)/\($0)/queue") }.sorted()
    }

    /// fuzzer_stats as key-value pairs ("key   : value" lines).
    public static func fuzzerStats(_ path: String) -> [String: String]? {
        guard let text = try? Paths.readText(path) else { return nil }
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            out[line[..<colon].trimming(" \t")] = line[line.index(after: colon)...].trimming(" \t")
        }
        return out
    }

    /// What `wb fuzz --status` shows: every instance, and the sums.
    public static func status(_ dir: String) throws -> CampaignReport {
        guard (try? Paths.stat(dir))?.isDirectory == true else {
            throw WBError.invalidArgument("--status \(dir): no such directory")
        }
        // An individual output directory (a campaign without --slurm) is its one instance.
        let individual = Paths.exists("\(dir)/queue")
        let names = individual ? ["."] : instances(dir)
        if names.isEmpty {
            throw WBError.invalidArgument("--status \(dir): no campaign there (no queue/ in it or in any directory in it); give wb fuzz's --out")
        }
        let now = Int(time(nil))
        var report = CampaignReport(out: Paths.absolute(dir), instances: [], buckets: [:])
        for name in names {
            let path = name == "." ? dir : "\(dir)/\(name)"
            let stats = fuzzerStats("\(path)/fuzzer_stats") ?? [:]
            func int(_ k: String) -> Int { Int(stats[k] ?? "") ?? 0 }
            var i = CampaignReport.Instance(name: name == "." ? (path.split(separator: "/").last.map(String.init) ?? name) : name,
                                            fuzzer: stats["target_mode"]?.contains("wb") == true ? "wb" : (stats.isEmpty ? "unknown" : "AFL++"),
                                            state: "starting", host: stats["hostname"], pid: Int32(int("fuzzer_pid")),
                                            executions: int("execs_done"), executionsPerSecond: Double(stats["execs_per_sec"] ?? "") ?? 0,
                                            corpus: int("corpus_count"), crashes: int("saved_crashes"), hangs: int("saved_hangs"),
                                            secondsSinceLastFind: int("last_find") > 0 ? now - int("last_find") : nil,
                                            secondsRunning: int("run_time"))
            if !stats.isEmpty {
                let updated = int("last_update")
                // Alive: a process of this host still running, or (elsewhere) stats written lately.
                let here = i.host == nil || i.host == SyncDirectory.host
                let alive = here ? (i.pid > 0 && kill(i.pid, 0) == 0 && now - updated < 600) : now - updated < 120
                i.state = alive ? "running" : "stopped"
            }
            let crashes = ((try? Paths.list("\(path)/crashes")) ?? []).filter { !$0.hasPrefix(".") && $0 != "README.txt" }
            for c in crashes {
                // wb's crashes are buckets (directories); AFL++'s are files, one per crash.
                let key = (try? Paths.stat("\(path)/crashes/\(c)"))?.isDirectory == true ? c : "AFL++ crash \(i.name)/\(c)"
                report.buckets[key, default: []].append(i.name)
            }
            report.instances.append(i)
        }
        return report
    }
}

/// A campaign's state across its instances.
public struct CampaignReport: Codable, Sendable {
    public struct Instance: Codable, Sendable {
        public var name: String
        /// "wb" or "AFL++".
        public var fuzzer: String
        /// running, stopped, or starting (no fuzzer_stats yet).
        public var state: String
        public var host: String?
        public var pid: Int32
        public var executions: Int
        public var executionsPerSecond: Double
        public var corpus: Int
        public var crashes: Int
        public var hangs: Int
        public var secondsSinceLastFind: Int?
        public var secondsRunning: Int
    }

    public var out: String
    public var instances: [Instance]
    /// Crash buckets (wb's, by name; AFL++'s crashes one by one), with the instances that saved each.
    public var buckets: [String: [String]]

    public var executions: Int { instances.reduce(0) { $0 + $1.executions } }
    public var running: Int { instances.filter { $0.state == "running" }.count }

    public var text: String {
        let rate = instances.filter { $0.state == "running" }.reduce(0.0) { $0 + $1.executionsPerSecond }
        var lines = ["\(out): \(instances.count) instance\(instances.count == 1 ? "" : "s") (\(running) running), \(executions) runs, "
            + "\(Int(rate)) runs/s now, \(buckets.count) crash bucket\(buckets.count == 1 ? "" : "s"), \(instances.reduce(0) { $0 + $1.hangs }) hangs"]
        let header = ["instance", "fuzzer", "state", "runs", "runs/s", "corpus", "crashes", "hangs", "last find"]
        var rows = [header]
        for i in instances {
            rows.append([i.name, i.fuzzer, i.state + (i.host.map { " on \($0)" } ?? ""), "\(i.executions)", String(format: "%.0f", i.executionsPerSecond),
                         "\(i.corpus)", "\(i.crashes)", "\(i.hangs)", i.secondsSinceLastFind.map { "\($0) s ago" } ?? "none"])
        }
        let widths = header.indices.map { c in rows.map { $0[c].count }.max() ?? 0 }
        for r in rows {
            lines.append("  " + r.indices.map { c in r[c].padding(toLength: widths[c], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimming(" "))
        }
        if !buckets.isEmpty {
            lines.append("crash buckets:")
            for (b, who) in buckets.sorted(by: { $0.key < $1.key }) { lines.append("  \(b) (\(who.joined(separator: ", ")))") }
        }
        return lines.joined(separator: "\n")
    }
}
