import Foundation
import Glibc
import Testing
import WBCore
import WBSystem

/// wb explore and wb replay --schedule on protocols with a bug only a rare order of messages
/// shows (never in a run on its own here), snapshotted mid-protocol on three hosts:
/// harness-replica, a primary-backup log that loses an acknowledged write when a failover
/// races it, and harness-twophase, a two-phase commit whose coordinator counts a late vote
/// for the next transaction.
extension DistributedTests {
    @Suite(.serialized) struct ExploreTests {
        /// A job of three members on three hosts (network namespaces), each started by `wb run
        /// --join` in turn (host, name in the set, program and arguments), checkpointed with
        /// --kill once every member has printed READY: the set's directory.
        static func jobSet(_ dir: String, subnet: String, tag: String,
                           _ programs: (TestHosts) -> [(host: Int, name: String, program: String, args: [String])]) throws -> String {
            let hosts = try TestHosts(count: 3, subnet: subnet, tag: tag)
            defer { hosts.remove() }
            let token = "explore-\(tag)"
            let (coordinator, address) = try hosts.coordinator(token: token)
            defer { coordinator.signal(SIGKILL); coordinator.wait(timeout: 30) }
            var members: [Child] = []
            defer { for m in members { m.signal(SIGKILL); m.wait(timeout: 30) } }
            for (i, p) in programs(hosts).enumerated() {
                let m = try hosts.start(p.host, Products.wb, ["run", "--join", address, "--host", p.name, "--", p.program] + p.args, env: ["WB_TOKEN": token])
                members.append(m)
                if i == 0 { usleep(200_000) }
            }
            for m in members { try #require(m.line(startingWith: "READY") != nil, "a member did not start: \(m.stderrText)") }
            let set = "\(dir)/set-\(tag)"
            let run = try wb(["checkpoint", "--coordinator", address, "-o", set, "--kill"], env: ["WB_TOKEN": token])
            try #require(run.code == 0, "\(run.stderr)")
            return set
        }

        /// harness-replica: backup, primary, and a client that has made two writes and waits
        /// to make one more and fail the primary over.
        static func replicaSet(_ dir: String, subnet: String, sync: Bool, tag: String) throws -> String {
            try jobSet(dir, subnet: subnet, tag: tag) { hosts in
                let replica = Products.harness("replica")
                let backup = "\(hosts.address(1)):7100", primary = "\(hosts.address(0)):7100"
                return [(1, "backup", replica, ["backup", "--listen", backup]),
                        (0, "primary", replica, ["primary", "--listen", primary, "--backup", backup] + (sync ? ["--sync"] : [])),
                        (2, "client", replica, ["client", "--primary", primary, "--backup", backup, "--warmup", "2", "--writes", "1", "--start-in", "4000"])]
            }
        }

        /// harness-twophase: two participants (the first votes no on transaction 3, the
        /// second on 4) and a coordinator paused after transactions 1 and 2.
        static func twoPhaseSet(_ dir: String, subnet: String, fixed: Bool, tag: String) throws -> String {
            try jobSet(dir, subnet: subnet, tag: tag) { hosts in
                let program = Products.harness("twophase")
                let p1 = "\(hosts.address(1)):7200", p2 = "\(hosts.address(2)):7200"
                return [(1, "p1", program, ["participant", "--listen", p1, "--no-on", "3"]),
                        (2, "p2", program, ["participant", "--listen", p2, "--no-on", "4"]),
                        (0, "coordinator", program, ["coordinator", "--participants", "\(p1),\(p2)", "--txns", "4", "--pause-before", "3",
                                                     "--pause-ms", "4000"] + (fixed ? ["--fixed"] : []))]
            }
        }

        static func summary(_ run: Run) throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], "\(run.stdout) \(run.stderr)")
        }

        static func setHosts() -> Set<String> {
            Set(((try? TestHosts.ip(["netns", "list"])) ?? "").split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
                .filter { $0.hasPrefix("wbb") })
        }

        /// DPOR explores every order that matters, finds the lost write with the client's
        /// backtrace, and ends; the schedule replays it, and in gdb stops in check_log.
        /// PCT finds it too; with --sync (the primary answers after the backup's
        /// acknowledgement) every order is explored and nothing is violated; an invariant
        /// command sees the members and fails the run it should.
        @Test func theOneBadOrderIsFoundReplayedAndDebugged() throws {
            let dir = scratchDirectory()
            let before = ExploreTests.setHosts()
            let set = try ExploreTests.replicaSet(dir, subnet: "10.216.0", sync: false, tag: "x")

            let explore = try wb(["explore", set, "--out", "\(dir)/found", "--json"], timeout: 600)
            #expect(explore.code == 3, "\(explore.stderr)")
            let s = try ExploreTests.summary(explore)
            #expect(s["exhausted"] as? Bool == true && s["violations"] as? Int == 1, "\(s)")
            let runs = s["runs"] as? Int ?? 0
            #expect(runs >= 2 && runs <= 20, "\(s)")
            #expect((s["pruned"] as? Int ?? 0) > 0, "\(s)")
            // The runs after the first start from the members put back in place, the crash
            // found included (the crashed thread is put back too).
            #expect(s["restores"] as? Int == 1 && s["resets"] as? Int == runs - 1, "\(s)")
            let finding = try #require((s["findings"] as? [[String: Any]])?.first, "\(s)")
            #expect(finding["kind"] as? String == "crash" && (finding["member"] as? String ?? "").hasPrefix("client:"), "\(finding)")
            let found = try #require(finding["directory"] as? String)
            let report = try Paths.readText("\(found)/report.txt")
            #expect(report.contains("SIGABRT"), "\(report)")
            // The lost write: the client's FAILOVER reached the backup before the primary's
            // REPL of the third entry, which the primary had acknowledged.
            #expect(report.contains("\"FAILOVER.\"") && report.contains("\"PROMOTED 2.\"") && report.contains("check_log"), "\(report)")

            let replay = try wb(["replay", set, "--schedule", "\(found)/schedule.json"], timeout: 300)
            #expect(replay.code == 0 && replay.stdout.contains("(as recorded)") && replay.stdout.contains("check_log"), "\(replay.stdout) \(replay.stderr)")
            let debug = try wb(["replay", set, "--schedule", "\(found)/schedule.json", "--debug", "--", "-batch", "-ex", "bt"], timeout: 300)
            #expect(debug.stdout.contains("check_log (promoted=") || debug.stdout.contains("in check_log"), "\(debug.stdout) \(debug.stderr)")

            for strategy in ["pct"] {
                let sampled = try wb(["explore", set, "--strategy", strategy, "--seed", "5", "--max-runs", "60", "--first",
                                      "--out", "\(dir)/\(strategy)", "--json"], timeout: 600)
                let s = try ExploreTests.summary(sampled)
                #expect(sampled.code == 3 && s["violations"] as? Int == 1, "\(strategy): \(s)")
            }

            // An invariant the third state breaks: it is given the members, and the run
            // that reaches that state is a finding that replays.
            let invariant = #"test "$WB_DELIVERIES" -lt 3 && for m in $WB_MEMBERS; do kill -0 "${m#*=}" || exit 1; done"#
            let checked = try wb(["explore", set, "--invariant", invariant, "--first", "--out", "\(dir)/inv", "--json"], timeout: 600)
            let c = try ExploreTests.summary(checked)
            let broken = try #require((c["findings"] as? [[String: Any]])?.first, "\(c)")
            #expect(broken["kind"] as? String == "invariant" && broken["deliveries"] as? Int == 3, "\(broken)")
            let again = try wb(["replay", set, "--schedule", "\(broken["directory"] as? String ?? "")/schedule.json", "--json"], timeout: 300)
            #expect(again.code == 0 && again.stdout.contains("\"reproduced\" : true"), "\(again.stdout) \(again.stderr)")

            // A gdb expression in a member: false once the primary has appended the third entry.
            let primaryName = try #require((try DistributedTests.manifest(set)["members"] as? [[String: Any]])?
                .first { $0["host"] as? String == "primary" }.map { "primary:\($0["pid"] as? Int ?? 0)" })
            let gdbRun = try wb(["explore", set, "--gdb-check", "\(primaryName): primary_log < 3", "--first", "--out", "\(dir)/gdb", "--json"], timeout: 600)
            let g = try ExploreTests.summary(gdbRun)
            let gdbFinding = try #require((g["findings"] as? [[String: Any]])?.first, "\(g) \(gdbRun.stderr)")
            #expect(gdbFinding["kind"] as? String == "gdb-check" && gdbFinding["member"] as? String == primaryName
                    && gdbFinding["deliveries"] as? Int == 1, "\(gdbFinding)")

            let fixed = try ExploreTests.replicaSet(dir, subnet: "10.217.0", sync: true, tag: "y")
            let clean = try wb(["explore", fixed, "--out", "\(dir)/clean", "--json"], timeout: 600)
            let f = try ExploreTests.summary(clean)
            #expect(clean.code == 0 && f["exhausted"] as? Bool == true && f["violations"] as? Int == 0, "\(f) \(clean.stderr)")

            // Faults as choices: a crashed member is not a violation itself, but the client
            // that loses its peer exits with an error, and that schedule replays.
            let faulted = try wb(["explore", fixed, "--faults", "crash", "--first", "--out", "\(dir)/faults", "--json"], timeout: 600)
            let fs = try ExploreTests.summary(faulted)
            let exit = try #require((fs["findings"] as? [[String: Any]])?.first, "\(fs) \(faulted.stderr)")
            #expect(exit["kind"] as? String == "exit" && (exit["member"] as? String ?? "").hasPrefix("client:"), "\(exit)")
            let exitDir = try #require(exit["directory"] as? String)
            #expect(((try? Paths.readText("\(exitDir)/report.txt")) ?? "").contains("<crash>"))
            let replayed = try wb(["replay", fixed, "--schedule", "\(exitDir)/schedule.json", "--json"], timeout: 300)
            #expect(replayed.code == 0 && replayed.stdout.contains("\"reproduced\" : true"), "\(replayed.stdout) \(replayed.stderr)")

            // Restarts: a crashed member comes back from its snapshot while the others go on
            // (its connections reset: the harness's members then end as their peers are gone).
            // The invariant logs the live members at every state.
            let log = "\(dir)/members.log"
            let restarted = try wb(["explore", fixed, "--strategy", "random", "--seed", "1", "--faults", "crash,restart", "--max-runs", "12",
                                    "--invariant", "echo \"$WB_DELIVERIES $WB_MEMBERS\" >> \(log)", "--out", "\(dir)/restarts", "--json"], timeout: 600)
            let rs = try ExploreTests.summary(restarted)
            #expect((rs["restarts"] as? Int ?? 0) > 0, "\(rs) \(restarted.stderr)")
            #expect(((rs["unmediated"] as? [String]) ?? []).contains { $0.contains("restarted from its snapshot") }, "\(rs) \(restarted.stderr)")
            // Crash runs are put back in place too (the crashed member is held, not killed);
            // only runs with a restart (new processes) make the next one restore the set.
            #expect((rs["resets"] as? Int ?? 0) > 0, "\(rs)")
            let states = try Paths.readText(log).split(separator: "\n")
            #expect(states.contains { $0.hasPrefix("0 ") && $0.split(separator: " ").count == 4 }, "\(states)")
            #expect(ExploreTests.setHosts().subtracting(before).isEmpty, "wb explore left hosts behind: \(ExploreTests.setHosts().subtracting(before))")
        }

        /// The coordinator's late-vote bug: found by DPOR (a participant told to commit what it
        /// voted against), replayed in gdb; --fixed is explored to the end with no violation.
        @Test func aLateVoteInTwoPhaseCommitIsFoundAndTheFixHolds() throws {
            let dir = scratchDirectory()
            let set = try ExploreTests.twoPhaseSet(dir, subnet: "10.218.0", fixed: false, tag: "t")
            let explore = try wb(["explore", set, "--depth", "40", "--out", "\(dir)/found", "--json"], timeout: 600)
            let s = try ExploreTests.summary(explore)
            #expect(explore.code == 3 && s["exhausted"] as? Bool == true, "\(s) \(explore.stderr)")
            let finding = try #require((s["findings"] as? [[String: Any]])?.first { $0["kind"] as? String == "crash" }, "\(s)")
            #expect((finding["member"] as? String ?? "").hasPrefix("p2:"), "\(finding)")
            let found = try #require(finding["directory"] as? String)
            let report = try Paths.readText("\(found)/report.txt")
            #expect(report.contains("check_decision") && report.contains("\"DECIDE 4 COMMIT.\""), "\(report)")
            let debug = try wb(["replay", set, "--schedule", "\(found)/schedule.json", "--debug", "--", "-batch", "-ex", "bt"], timeout: 300)
            #expect(debug.stdout.contains("check_decision"), "\(debug.stdout) \(debug.stderr)")

            let fixed = try ExploreTests.twoPhaseSet(dir, subnet: "10.218.1", fixed: true, tag: "u")
            let clean = try wb(["explore", fixed, "--depth", "40", "--out", "\(dir)/clean", "--json"], timeout: 600)
            let f = try ExploreTests.summary(clean)
            #expect(clean.code == 0 && f["exhausted"] as? Bool == true && f["violations"] as? Int == 0, "\(f) \(clean.stderr)")

            // wb killed in the middle of a run (SIGKILL): its members die with it and a guard
            // removes the hosts it had made.
            let killed = try Child(Products.wb, ["explore", fixed, "--strategy", "random", "--max-runs", "1000", "--out", "\(dir)/killed"])
            let ours = { ExploreTests.setHosts().filter { $0.hasPrefix("wbb\(killed.pid % 10_000_000)") } }
            #expect(DistributedTests.waitFor(30) { !ours().isEmpty }, "wb explore made no hosts")
            killed.signal(SIGKILL)
            killed.wait(timeout: 30)
            #expect(DistributedTests.waitFor(10) { ours().isEmpty }, "hosts left after wb was killed: \(ours())")
        }

        /// redis-server primary and replica with two writers, checkpointed mid-stream:
        /// explored to depth 8 with the invariant that the replica is never ahead of the
        /// primary and, once nothing is in flight, holds every acknowledged write.
        @Test(.enabled(if: Paths.exists("/usr/bin/redis-server"), "redis-server is not installed (harness/test installs it)"))
        func aRedisPrimaryWithAReplicaAndTwoWritersIsExplored() throws {
            let dir = scratchDirectory()
            let hosts = try TestHosts(count: 3, subnet: "10.218.2", tag: "r")
            defer { hosts.remove() }
            let primary = hosts.address(0), replica = hosts.address(1)
            let (p, r) = try hosts.redisPrimaryAndReplica(dir)
            var children = [p, r]
            defer { for c in children { c.signal(SIGKILL); c.wait(timeout: 30) } }
            let script = """
            import socket, sys, time
            s = socket.create_connection((sys.argv[1], 6379))
            f = s.makefile('rb')
            for i in range(1000000):
                k = b'%s:%d' % (sys.argv[2].encode(), i)
                v = b'%d' % i
                s.sendall(b'*3\\r\\n$3\\r\\nSET\\r\\n$%d\\r\\n%s\\r\\n$%d\\r\\n%s\\r\\n' % (len(k), k, len(v), v))
                if f.readline() != b'+OK\\r\\n': sys.exit(1)
                time.sleep(0.002)
            """
            try Data(script.utf8).write(to: URL(fileURLWithPath: "\(dir)/writer.py"))
            let writers = try ["a", "b"].map { try hosts.start(2, "/usr/bin/python3", ["\(dir)/writer.py", primary, $0]) }
            children += writers
            usleep(300_000)
            let (coordinator, address) = try hosts.coordinator(token: "redis-explore")
            children.append(coordinator)
            for (h, pids) in [(0, [p.pid]), (1, [r.pid]), (2, writers.map(\.pid))] {
                let a = try hosts.start(h, Products.wb, ["agent", "--join", address, "--host", ["primary", "replica", "writers"][h]] + pids.flatMap { ["--pid", "\($0)"] },
                                        env: ["WB_TOKEN": "redis-explore"])
                try #require(a.line(startingWith: "wb: joined") != nil, "\(a.stderrText)")
                children.append(a)
            }
            usleep(300_000)
            let set = "\(dir)/set"
            let run = try wb(["checkpoint", "--coordinator", address, "-o", set, "--kill"], env: ["WB_TOKEN": "redis-explore"])
            try #require(run.code == 0, "\(run.stderr)")

            let invariant = """
            for h in $WB_HOSTS; do case $h in primary=*) P=${h#*=};; replica=*) R=${h#*=};; esac; done
            a=$(ip netns exec $P redis-cli -h \(primary) DBSIZE); b=$(ip netns exec $R redis-cli -h \(replica) DBSIZE)
            [ "$b" -le "$a" ] || { echo "the replica has $b keys, more than the primary's $a"; exit 1; }
            [ "$WB_IN_FLIGHT" -gt 0 ] || [ "$a" = "$b" ] || { echo "settled with $a keys on the primary and $b on the replica"; exit 1; }
            """
            let explore = try wb(["explore", set, "--depth", "8", "--max-runs", "6", "--invariant", invariant, "--out", "\(dir)/found", "--json"], timeout: 600)
            let s = try ExploreTests.summary(explore)
            #expect(s["maxDepth"] as? Int == 8 && (s["runs"] as? Int ?? 0) >= 2, "\(s) \(explore.stderr)")
            // Every run after the first starts from the members put back in place.
            #expect(s["restores"] as? Int == 1 && s["resets"] as? Int == (s["runs"] as? Int ?? 0) - 1, "\(s)")
            let findings = (s["findings"] as? [[String: Any]]) ?? []
            // Redis keeps a replica behind its primary, never ahead, and catches it up: what
            // explore reports is the depth bound (a stream of writes never ends), nothing else.
            #expect(findings.allSatisfy { $0["kind"] as? String == "liveness" }, "\(findings)")
        }

        @Test func badArgumentsAndBadSchedulesGetOneLineErrors() throws {
            let dir = scratchDirectory()
            let notASet = try wb("explore", dir, "--out", "\(dir)/o")
            #expect(notASet.code != 0 && notASet.stderr.contains("wb: error:") && notASet.stderr.split(separator: "\n").count == 1, "\(notASet.stderr)")
            let strategy = try wb("explore", dir, "--strategy", "bfs")
            #expect(strategy.code != 0 && strategy.stderr.contains("dpor, all, random, pct"), "\(strategy.stderr)")
            try writeFile(Array("{\"format\": 1, \"deliveries\": 7}".utf8), "\(dir)/schedule.json")
            let bad = try wb("replay", dir, "--schedule", "\(dir)/schedule.json")
            #expect(bad.code == 1 && bad.stderr.contains("wb: error:"), "\(bad.stderr)")
        }
    }
}
