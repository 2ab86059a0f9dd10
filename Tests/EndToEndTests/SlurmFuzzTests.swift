import Foundation
import Glibc
import Testing
import WBCore
import WBSystem

/// `wb fuzz --slurm` on a real single-node Slurm (Debian's slurmctld, slurmd and munge,
/// started on loopback by harness/slurm/local and stopped after), with an AFL++ instance
/// (`afl-fuzz -S`) sharing the sync directory.
@Suite(.serialized) struct SlurmFuzzTests {
    static let root = Paths.directory(of: #filePath) + "/../.."

    /// Runs a program to its end; its status and output.
    static func run(_ path: String, _ args: [String], env: [String: String] = [:]) throws -> (status: Int32, out: String, err: String) {
        var environment = ProcessInfo.processInfo.environment
        for (k, v) in env { environment[k] = v }
        let o = try Subprocess.output(path, args, environment: environment)
        return (o.status, String(decoding: o.stdout, as: UTF8.self), String(decoding: o.stderr, as: UTF8.self))
    }

    static func waitFor(_ seconds: Double, _ what: () throws -> Bool) rethrows -> Bool {
        let deadline = Clock.monotonic + seconds
        while Clock.monotonic < deadline {
            if try what() { return true }
            usleep(250_000)
        }
        return try what()
    }

    @Test func aCampaignOfTwoSlurmWorkersAndAnAFLInstanceShareOneSyncDirectory() throws {
        for tool in ["slurmctld", "slurmd", "munged", "sbatch", "afl-fuzz", "afl-clang-fast", "afl-whatsup"] {
            try #require(Subprocess.find(tool) != nil, "\(tool) is installed by harness/test (Debian's slurmctld, slurmd, slurm-client, munge, afl++)")
        }
        let dir = scratchDirectory()
        let slurmDir = "\(dir)/slurm"
        let start = try SlurmFuzzTests.run("/bin/bash", ["\(SlurmFuzzTests.root)/harness/slurm/local", "start", slurmDir])
        try #require(start.status == 0, "local Slurm did not start: \(start.err)")
        defer { _ = try? SlurmFuzzTests.run("/bin/bash", ["\(SlurmFuzzTests.root)/harness/slurm/local", "stop", slurmDir]) }
        let env = ["SLURM_CONF": "\(slurmDir)/slurm.conf"]

        // The AFL++ instance's target, built before the workers start: the workers' --duration
        // is not spent compiling.
        let src = ["\(SlurmFuzzTests.root)/harness/programs/parser/main.c", "\(SlurmFuzzTests.root)/harness/programs/support/support.c"]
        let build = try SlurmFuzzTests.run(try #require(Subprocess.find("afl-clang-fast")),
                                           ["-O2", "-g", "-pthread", "-I", "\(SlurmFuzzTests.root)/harness/programs/support/include"] + src
                                            + ["-o", "\(dir)/parser-afl"], env: ["AFL_QUIET": "1"])
        try #require(build.status == 0, "\(build.err)")
        let (image, _) = try FuzzTests.checkpointParser(dir)
        let out = "\(dir)/sync"
        let submit = try wb(["fuzz", image, "--corpus", FuzzTests.corpus, "--out", out, "--slurm", "2", "--duration", "60", "--json"], env: env)
        try #require(submit.code == 0, "\(submit.stderr)")
        let receipt = try #require(try JSONSerialization.jsonObject(with: Data(submit.stdout.utf8)) as? [String: Any])
        let job = try #require(receipt["job"] as? String)
        #expect(Paths.exists("\(out)/.wb/slurm.sh"))

        // Both workers run, each as an instance with its own queue, and find inputs: one finds
        // new coverage and the other takes it from the sync directory (what one has found
        // first is no longer new to the other).
        let found = SlurmFuzzTests.waitFor(60) {
            let queues = ["wb-0", "wb-1"].map { n in (try? Paths.list("\(out)/\(n)/queue")) ?? [] }
            return queues.allSatisfy { q in q.contains { $0.contains("+cov") || $0.contains(",sync:") } }
                && queues.joined().contains { $0.contains("+cov") }
        }
        try #require(found, "the workers did not start fuzzing: \((try? Paths.readText("\(slurmDir)/slurmd.log")) ?? "")")

        // An AFL++ instance joins the same sync directory (and imports wb's entries first).
        let aflLog = open("\(dir)/afl.log", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { close(aflLog) }
        var aflEnv = ProcessInfo.processInfo.environment
        for (k, v) in ["AFL_SKIP_CPUFREQ": "1", "AFL_NO_UI": "1", "AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES": "1", "AFL_NO_AFFINITY": "1",
                       "AFL_IMPORT_FIRST": "1", "AFL_SKIP_CRASHES": "1"] { aflEnv[k] = v }
        let afl = try Subprocess.spawn(try #require(Subprocess.find("afl-fuzz")),
                                       ["-S", "afl1", "-i", FuzzTests.corpus, "-o", out, "-V", "15", "--", "\(dir)/parser-afl"],
                                       environment: aflEnv, stdout: aflLog, stderr: aflLog)
        defer { kill(afl, SIGKILL); var st: Int32 = 0; waitpid(afl, &st, 0) }

        // afl-whatsup reads the sync directory: wb's two instances and AFL++'s, alive.
        var whatsup = ""
        let alive = try SlurmFuzzTests.waitFor(30) {
            whatsup = try SlurmFuzzTests.run(try #require(Subprocess.find("afl-whatsup")), ["-s", out]).out
            return whatsup.range(of: #"Fuzzers alive\s*:\s*3"#, options: .regularExpression) != nil
        }
        #expect(alive, "afl-whatsup: \(whatsup) AFL++: \((try? Paths.readText("\(dir)/afl.log")) ?? "")")

        // The job ends with its --duration.
        let ended = try SlurmFuzzTests.waitFor(120) {
            try SlurmFuzzTests.run(try #require(Subprocess.find("squeue")), ["-h", "-j", job], env: env).out
                .trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
        }
        #expect(ended, "Slurm job \(job) did not end")
        var st: Int32 = 0
        _ = SlurmFuzzTests.waitFor(30) { waitpid(afl, &st, WNOHANG) == afl }

        // wb fuzz --status sums the instances and merges their crash buckets.
        let status = try wb(["fuzz", "--status", out, "--json"])
        try #require(status.code == 0, "\(status.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        let instances = try #require(report["instances"] as? [[String: Any]])
        #expect(Set(instances.compactMap { $0["name"] as? String }) == ["afl1", "wb-0", "wb-1"], "\(instances)")
        for i in instances { #expect((i["executions"] as? Int ?? 0) > 0, "\(i)") }
        let buckets = try #require(report["buckets"] as? [String: [String]])
        for n in ["wb-0", "wb-1"] {
            let own = ((try? Paths.list("\(out)/\(n)/crashes")) ?? []).filter { !$0.hasPrefix(".") }
            for b in own { #expect(buckets[b]?.contains(n) == true, "\(b) of \(n) missing from the merged buckets \(buckets)") }
        }
        #expect(buckets.keys.contains { $0.hasPrefix("SIG") }, "no crash bucket found by the workers: \(buckets)")
        let text = try wb("fuzz", "--status", out)
        #expect(text.stdout.contains("3 instances") && text.stdout.contains("wb-1") && text.stdout.contains("afl1"), "\(text.stdout)")

        // Entries went both ways: each wb instance ran the other instances' entries (AFL++'s
        // among them), and AFL++ read wb's queues.
        for n in ["wb-0", "wb-1"] {
            let stats = try #require(try JSONSerialization.jsonObject(with: Data(Paths.readBytes("\(out)/\(n)/.wb/worker-0.json"))) as? [String: Any])
            #expect((stats["imported"] as? Int ?? 0) > 0, "\(n) ran none of the other instances' entries: \(stats)")
        }
        // An AFL++ instance started now, importing first (nothing else runs, so its start-up
        // sync is not raced by the campaign's end): it reads both wb queues. AFL++ keeps, per
        // instance it synced from, the next queue id to read.
        let second = try Subprocess.spawn(try #require(Subprocess.find("afl-fuzz")),
                                          ["-S", "afl2", "-i", FuzzTests.corpus, "-o", out, "-V", "60", "--", "\(dir)/parser-afl"],
                                          environment: aflEnv, stdout: aflLog, stderr: aflLog)
        func next(_ n: String) -> Int {
            (try? Paths.readBytes("\(out)/afl2/.synced/\(n)")).map { $0.prefix(4).reversed().reduce(0) { $0 << 8 | Int($1) } } ?? 0
        }
        // Its first sync comes after its seeds are calibrated: slow on a loaded machine.
        _ = SlurmFuzzTests.waitFor(60) { next("wb-0") > 0 && next("wb-1") > 0 }
        kill(second, SIGKILL)
        var secondStatus: Int32 = 0
        waitpid(second, &secondStatus, 0)
        for n in ["wb-0", "wb-1"] {
            #expect(next(n) > 0, "AFL++ read nothing of \(n)'s queue: \((try? Paths.readText("\(dir)/afl.log"))?.suffix(2000) ?? "")")
        }
    }
}
