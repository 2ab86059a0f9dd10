import Foundation
import Glibc
import Testing
import WBCore
import WBSystem

/// Hosts for a distributed test: network namespaces with addresses of their own on veth
/// pairs into one bridge (which holds `gateway`, where the coordinator listens). Nothing
/// leaves the machine; `remove` takes it all away.
final class TestHosts {
    let prefix: String
    let subnet: String
    var names: [String] = []
    var bridge: String { "\(prefix)br" }
    var gateway: String { "\(subnet).254" }

    /// `count` hosts named PREFIX0..., with addresses SUBNET.1... (`tag` keeps the names of
    /// hosts made one after another apart from those still being taken down).
    init(count: Int, subnet: String, tag: String = "") throws {
        prefix = "wbt\(getpid() % 100_000)\(tag)"
        self.subnet = subnet
        TestHosts.removeStale(prefix: prefix, subnet: subnet)
        try TestHosts.ip(["link", "add", bridge, "type", "bridge"])
        try TestHosts.ip(["addr", "add", "\(gateway)/24", "dev", bridge])
        try TestHosts.ip(["link", "set", bridge, "up"])
        for i in 0..<count {
            let ns = "\(prefix)h\(i)"
            try TestHosts.ip(["netns", "add", ns])
            names.append(ns)
            try TestHosts.ip(["link", "add", "\(prefix)v\(i)", "type", "veth", "peer", "name", "eth0", "netns", ns])
            try TestHosts.ip(["link", "set", "\(prefix)v\(i)", "master", bridge, "up"])
            try TestHosts.ip(["-n", ns, "addr", "add", "\(address(i))/24", "dev", "eth0"])
            try TestHosts.ip(["-n", ns, "link", "set", "eth0", "up"])
            try TestHosts.ip(["-n", ns, "link", "set", "lo", "up"])
        }
    }

    func address(_ i: Int) -> String { "\(subnet).\(i + 1)" }

    /// `program` run in host `i`'s namespace.
    func start(_ i: Int, _ program: String, _ args: [String], env: [String: String] = [:]) throws -> Child {
        try Child(TestHosts.ipPath, ["netns", "exec", names[i], program] + args, env: env)
    }

    /// The nftables tables in host `i`.
    func tables(_ i: Int) -> String {
        (try? Subprocess.output(TestHosts.ipPath, ["netns", "exec", names[i], "nft", "list", "tables"]))
            .map { String(decoding: $0.stdout, as: UTF8.self) } ?? ""
    }

    /// A coordinator for a job on these hosts, listening on the bridge; its address.
    func coordinator(token: String, _ extra: [String] = []) throws -> (child: Child, address: String) {
        let child = try Child(Products.wb, ["coordinator", "--listen", "\(gateway):0", "--token", token] + extra)
        guard let line = child.line(startingWith: "wb: coordinator listening on"), let address = line.split(separator: " ").last else {
            child.signal(SIGKILL)
            child.wait(timeout: 30)
            throw WBError.failed("the coordinator did not start: \(child.stderrText)")
        }
        return (child, String(address))
    }

    /// redis-server on host 0 and its replica on host 1 (port 6379, no persistence, data and
    /// logs under `dir`), returned once the replica's link is up.
    func redisPrimaryAndReplica(_ dir: String) throws -> (primary: Child, replica: Child) {
        func redis(_ h: Int, _ extra: [String]) throws -> Child {
            try Paths.makeDirectories("\(dir)/redis\(h)")
            return try start(h, "/usr/bin/redis-server", ["--port", "6379", "--bind", address(h), "--save", "", "--appendonly", "no",
                                                     "--protected-mode", "no", "--dir", "\(dir)/redis\(h)", "--logfile", "\(dir)/redis\(h).log"] + extra)
        }
        let p = try redis(0, [])
        let r = try redis(1, ["--replicaof", address(0), "6379"])
        let linked = DistributedTests.waitFor(20) { TestHosts.redisCLI(names[1], address(1), ["INFO", "replication"]).contains("master_link_status:up") }
        if !linked {
            for c in [p, r] { c.signal(SIGKILL); c.wait(timeout: 30) }
            throw WBError.failed("the replica did not link up: \((try? Paths.readText("\(dir)/redis1.log")) ?? "")")
        }
        return (p, r)
    }

    /// redis-cli against `host` from the network namespace `ns`: its output, trimmed.
    static func redisCLI(_ ns: String, _ host: String, _ args: [String]) -> String {
        let o = try? Subprocess.output(ipPath, ["netns", "exec", ns, "/usr/bin/redis-cli", "-h", host] + args)
        return o.map { String(decoding: $0.stdout, as: UTF8.self).trimming("\n") } ?? ""
    }

    func remove() {
        for ns in names { _ = try? TestHosts.ip(["netns", "delete", ns]) }
        _ = try? TestHosts.ip(["link", "delete", bridge])
    }

    static let ipPath = Subprocess.find("ip") ?? "/usr/sbin/ip"

    /// What an earlier test run that was stopped midway left behind: a test bridge holding an
    /// address of this subnet (it would take the coordinator's traffic), and hosts and a
    /// bridge under these names.
    static func removeStale(prefix: String, subnet: String) {
        let holders = ((try? ip(["-o", "addr", "show", "to", "\(subnet).0/24"])) ?? "").split(separator: "\n").compactMap { line in
            line.split(separator: " ").dropFirst().first.map { String($0.split(separator: "@").first ?? $0) }
        }
        for device in Set(holders + ["\(prefix)br"]) where device.hasPrefix("wbt") { _ = try? ip(["link", "del", device]) }
        let namespaces = ((try? ip(["netns", "list"])) ?? "").split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
        for ns in namespaces where ns.hasPrefix("\(prefix)h") { _ = try? ip(["netns", "del", ns]) }
    }

    @discardableResult
    static func ip(_ args: [String]) throws -> String {
        let o = try Subprocess.output(ipPath, args)
        if o.status != 0 { throw WBError.failed("ip \(args.joined(separator: " ")): \(String(decoding: o.stderr, as: UTF8.self))") }
        return String(decoding: o.stdout, as: UTF8.self)
    }
}

/// wb coordinator, agents and set checkpoints on a job spread over three hosts (network
/// namespaces), restored on one box.
@Suite(.serialized) struct DistributedTests {
    /// A ring of 4 harness-ring processes on 3 hosts, its members' agents joined to a
    /// coordinator in the job's network.
    struct Ring {
        let hosts: TestHosts
        let members: [Child]
        let pids: [Int32]
        let coordinator: Child
        let address: String
        let agents: [Child]
        let dir: String
        let token = "ring-token"

        func results() -> [String] {
            (0..<4).map { ((try? Paths.readText("\(dir)/rank\($0)")) ?? "none").trimming("\n") }
        }

        func stop() {
            for m in members { m.signal(SIGKILL) }
            coordinator.signal(SIGKILL)
            for a in agents { a.signal(SIGKILL) }
            for c in members + [coordinator] + agents { c.wait(timeout: 30) }
            hosts.remove()
        }
    }

    /// Ranks 0 and 1 on host 0 and rank 2 on host 1 join through `wb agent`; rank 3 on host 2
    /// is started by `wb run --join` (it and its descendants are a member).
    static func startRing(_ dir: String, subnet: String, messages: Int, coordinatorArgs: [String] = []) throws -> Ring {
        let hosts = try TestHosts(count: 3, subnet: subnet)
        let coordinator = try Child(Products.wb, ["coordinator", "--listen", "\(hosts.gateway):0", "--token", "ring-token"] + coordinatorArgs)
        let listening = try #require(coordinator.line(startingWith: "wb: coordinator listening on"), "\(coordinator.stderrText)")
        let address = String(listening.split(separator: " ").last ?? "")
        let placement = [0, 0, 1, 2]
        let listen = ["\(hosts.address(0)):7001", "\(hosts.address(0)):7002", "\(hosts.address(1)):7003", "\(hosts.address(2)):7004"]
        var members: [Child] = []
        for r in 0..<4 {
            let ring = [Products.harness("ring"), "--rank", "\(r)", "--listen", listen[r], "--next", listen[(r + 1) % 4],
                        "--messages", "\(messages)", "--out", "\(dir)/rank\(r)"]
            // Each knows its rank as an MPI launcher tells it (PMI_RANK): the set's manifest does.
            if r == 3 {
                members.append(try hosts.start(placement[r], Products.wb, ["run", "--join", address, "--host", "host2", "--"] + ring,
                                               env: ["WB_TOKEN": "ring-token", "PMI_RANK": "\(r)"]))
            } else {
                members.append(try hosts.start(placement[r], ring[0], Array(ring.dropFirst()), env: ["PMI_RANK": "\(r)"]))
            }
        }
        var pids: [Int32] = []
        for m in members {
            let ready = try #require(m.line(startingWith: "READY"), "a ring member did not start: \(m.stderrText)" as Comment)
            pids.append(try #require(Int32(String(ready.split(separator: " ").last ?? ""))))
        }
        var agents: [Child] = []
        for (h, ranks) in [(0, [0, 1]), (1, [2])] {
            let a = try hosts.start(h, Products.wb, ["agent", "--join", address, "--host", "host\(h)"] + ranks.flatMap { ["--pid", "\(pids[$0])"] },
                                    env: ["WB_TOKEN": "ring-token"])
            try #require(a.line(startingWith: "wb: joined") != nil, "agent of host \(h): \(a.stderrText)")
            agents.append(a)
        }
        var log = ""
        let deadline = Clock.monotonic + 30
        while Clock.monotonic < deadline && !log.contains("host host2 joined") {
            usleep(50_000)
            log = coordinator.stderrText
        }
        try #require(log.contains("host host2 joined"), "wb run --join did not join: \(log) \(members[3].stderrText)")
        return Ring(hosts: hosts, members: members, pids: pids, coordinator: coordinator, address: address, agents: agents, dir: dir)
    }

    static func manifest(_ set: String) throws -> [String: Any] {
        let run = try wb("inspect", set, "--json", "--no-verify")
        try #require(run.code == 0, "\(run.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
    }

    /// Checkpointed every 200 ms by the coordinator, then with --kill; the last set, and an
    /// earlier one, each restored on one box: the ring finishes with every message seen once.
    @Test func aRingOverThreeHostsIsCheckpointedConsistentlyAndRestoredOnOneBox() throws {
        let dir = scratchDirectory()
        let ring = try DistributedTests.startRing(dir, subnet: "10.214.0", messages: 1500,
                                                  coordinatorArgs: ["--every", "200ms", "--set-dir", "\(dir)/sets"])
        defer { ring.stop() }
        usleep(1_200_000)
        let final = try wb(["checkpoint", "--coordinator", ring.address, "-o", "\(dir)/final", "--kill", "--json"], env: ["WB_TOKEN": ring.token])
        try #require(final.code == 0, "\(final.stderr)")
        for m in ring.members { #expect(m.exitCode == 128 + SIGKILL, "a member outlived the --kill checkpoint (wb run --join ends as its program)") }
        #expect(ring.results().allSatisfy { $0 == "none" }, "the ring finished before the checkpoint: \(ring.results())")

        // The periodic sets: each a whole job, its four channels found.
        let periodic = ((try? Paths.list("\(dir)/sets")) ?? []).filter { $0.hasPrefix("set-") }.sorted()
        #expect(periodic.count >= 2, "the coordinator took \(periodic.count) sets in 1.2 s at --every 200ms")
        let report = try DistributedTests.manifest("\(dir)/final")
        #expect((report["members"] as? [Any])?.count == 4 && (report["hosts"] as? [Any])?.count == 3, "\(report)")
        #expect((report["channels"] as? [Any])?.count == 4, "\(report)")
        let text = try wb("inspect", "\(dir)/final", "--no-verify")
        #expect(text.stdout.contains("HOSTS (3)") && text.stdout.contains("CHANNELS (4"), "\(text.stdout)")
        // The four members run one program: its files are stored once, in the set's files/,
        // and every image refers to them there.
        let images = try Paths.list("\(dir)/final").filter { $0.hasSuffix(".wbimg") }
        let embedded = try images.flatMap { try Image(path: "\(dir)/final/\($0)").metadata.files }
        #expect(!embedded.isEmpty && embedded.allSatisfy { $0.source?.hasPrefix("files/") == true }, "\(embedded.map(\.source))")
        #expect(try Paths.list("\(dir)/final/files").count == Set(embedded.map(\.hash)).count)
        #expect(Set(embedded.map(\.hash)).count < embedded.count, "no file is shared by two images")
        // Their pages are stored once, in the set's page pack, which every image points into
        // and which holds fewer pages than the images point to.
        let metadata = try images.map { try Image(path: "\(dir)/final/\($0)").metadata }
        #expect(metadata.allSatisfy { $0.pageSources?.map(\.path) == ["pages/pages.pack"] }, "\(metadata.map(\.pageSources))")
        let pointed = metadata.reduce(0) { $0 + $1.processes.reduce(0) { $0 + $1.mappings.reduce(0) { $0 + $1.storedPageCount } } }
        let packed = Int(((try? FileManager.default.attributesOfItem(atPath: "\(dir)/final/pages/pages.pack")[.size] as? Int) ?? 0) / 4096)
        #expect(packed > 0 && packed < pointed, "the pack holds \(packed) pages for \(pointed) pointed to")

        // Restored on one box, twice: from the --kill set, and from an earlier periodic one
        // that holds the whole job (the first ones may have been taken before every host had
        // joined: a set holds the members the coordinator knew).
        let whole = try periodic.map { "\(dir)/sets/\($0)" }.first { set in
            let m = try DistributedTests.manifest(set)
            return (m["members"] as? [Any])?.count == 4 && (m["channels"] as? [Any])?.count == 4
        }
        #expect(whole != nil, "no periodic set holds all four members")
        // The set restores' hosts: network namespaces named wbb...; none of them may stay.
        func setHosts() -> Set<String> {
            Set(((try? TestHosts.ip(["netns", "list"])) ?? "").split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
                .filter { $0.hasPrefix("wbb") })
        }
        let hostsBefore = setHosts()
        for set in ["\(dir)/final"] + (whole.map { [$0] } ?? []) {
            for r in 0..<4 { Paths.remove("\(dir)/rank\(r)") }
            let restore = try wb(["restore", set], timeout: 180)
            #expect(restore.code == 0, "restoring \(set): \(restore.stderr)")
            let results = ring.results()
            for (r, line) in results.enumerated() {
                #expect(line == "OK rank \(r) cw=1500 ccw=1500 bad=0/0", "restored from \(set): \(results)")
            }
        }
        #expect(setHosts().subtracting(hostsBefore).isEmpty, "the restore left its hosts behind: \(setHosts().subtracting(hostsBefore))")

        // One member in gdb while the others run, named by its rank: its threads are where the
        // ring left them. A rank the set does not have is refused, naming those it has.
        let member = "host1:\(ring.pids[2])"
        #expect(text.stdout.contains("\(member)  rank 2"), "\(text.stdout)")
        let noRank = try wb(["restore", "\(dir)/final", "--debug", "--rank", "9"])
        #expect(noRank.code != 0 && noRank.stderr.contains("--rank 9: the set has ranks 0 (") && noRank.stderr.contains("2 (\(member))"), "\(noRank.stderr)")
        let debug = try wb(["restore", "\(dir)/final", "--debug", "--rank", "2", "--", "-batch", "-ex", "thread apply all bt"], timeout: 120)
        #expect(debug.stdout.contains("harness-ring") || debug.stdout.contains("main.c"), "gdb on \(member): \(debug.stdout) \(debug.stderr)")
        #expect(debug.stdout.contains("pass") || debug.stdout.contains("take"), "\(debug.stdout)")
        #expect(setHosts().subtracting(hostsBefore).isEmpty, "the debug restore left its hosts behind: \(setHosts().subtracting(hostsBefore))")
    }

    /// A member that is gone, and a coordinator killed during a checkpoint: the checkpoint
    /// fails (naming the member), and every other member runs on, untraced, with no lock left.
    @Test func failuresDuringASetCheckpointLeaveTheOtherMembersRunning() throws {
        let dir = scratchDirectory()
        let ring = try DistributedTests.startRing(dir, subnet: "10.215.0", messages: 1200)
        defer { ring.stop() }
        // The coordinator killed while a checkpoint runs: the members go on and finish.
        let client = try Child(Products.wb, ["checkpoint", "--coordinator", ring.address, "-o", "\(dir)/never"], env: ["WB_TOKEN": ring.token])
        usleep(60_000)
        ring.coordinator.signal(SIGKILL)
        #expect(client.exitCode != 0)
        for m in ring.members { #expect(m.exitCode == 0, "a member did not finish after the coordinator died: \(m.stderrText)") }
        let results = ring.results()
        for (r, line) in results.enumerated() { #expect(line == "OK rank \(r) cw=1200 ccw=1200 bad=0/0", "\(results)") }
        for h in 0..<3 { #expect(!ring.hosts.tables(h).contains("wb_set"), "host \(h) kept a lock: \(ring.hosts.tables(h))") }
    }

    @Test func aMemberGoneBeforeTheCheckpointIsNamedAndTheOthersAreLeftAlone() throws {
        let dir = scratchDirectory()
        let ring = try DistributedTests.startRing(dir, subnet: "10.216.0", messages: 100_000)
        defer { ring.stop() }
        ring.members[2].signal(SIGKILL)
        ring.members[2].wait()
        let run = try wb(["checkpoint", "--coordinator", ring.address, "-o", "\(dir)/set"], env: ["WB_TOKEN": ring.token])
        #expect(run.code != 0)
        #expect(run.stderr.contains("host1:\(ring.pids[2])"), "the error does not name the member: \(run.stderr)")
        #expect(run.stderr.split(separator: "\n").count <= 2, "\(run.stderr)")
        #expect(!Paths.exists("\(dir)/set/manifest.json"))
        for r in [0, 1, 3] {
            let status = (try? Paths.readText("/proc/\(ring.pids[r])/status")) ?? ""
            #expect(status.contains("TracerPid:\t0") && !status.contains("State:\tT"), "rank \(r) was left traced or stopped")
        }
        for h in 0..<3 { #expect(!ring.hosts.tables(h).contains("wb_set"), "host \(h) kept a lock: \(ring.hosts.tables(h))") }
        // A wrong token is refused.
        let wrong = try wb(["checkpoint", "--coordinator", ring.address, "-o", "\(dir)/set2"], env: ["WB_TOKEN": "other-job"])
        #expect(wrong.code != 0 && wrong.stderr.contains("wrong job token"), "\(wrong.stderr)")
    }

    /// redis-server primary and replica on two hosts with the replication link up, and a
    /// writer on a third: checkpointed with --kill and restored on one box, the writer
    /// finishes, every key is on both, and a new write reaches the replica.
    @Test(.enabled(if: Paths.exists("/usr/bin/redis-server"), "redis-server is not installed (harness/test installs it)"))
    func redisReplicationGoesOnAfterASetRestore() throws {
        let dir = scratchDirectory()
        let hosts = try TestHosts(count: 3, subnet: "10.217.0")
        defer { hosts.remove() }
        let primary = hosts.address(0), replica = hosts.address(1)
        let (p, r) = try hosts.redisPrimaryAndReplica(dir)
        defer { p.signal(SIGKILL); r.signal(SIGKILL); p.wait(timeout: 30); r.wait(timeout: 30) }
        let cli = TestHosts.redisCLI
        // The writer: one connection, SET key:i for i below 3000, 2 ms apart, then DONE in a file.
        let script = """
        import socket, sys, time
        s = socket.create_connection((sys.argv[1], 6379))
        f = s.makefile('rb')
        for i in range(3000):
            k = b'key:%d' % i
            v = b'%d' % i
            s.sendall(b'*3\\r\\n$3\\r\\nSET\\r\\n$%d\\r\\n%s\\r\\n$%d\\r\\n%s\\r\\n' % (len(k), k, len(v), v))
            if f.readline() != b'+OK\\r\\n': sys.exit(1)
            time.sleep(0.002)
        open(sys.argv[2], 'w').write('DONE 3000\\n')
        """
        try Data(script.utf8).write(to: URL(fileURLWithPath: "\(dir)/writer.py"))
        let writer = try hosts.start(2, "/usr/bin/python3", ["\(dir)/writer.py", primary, "\(dir)/writer.done"])
        defer { writer.signal(SIGKILL); writer.wait(timeout: 30) }
        usleep(300_000)

        let (coordinator, address) = try hosts.coordinator(token: "redis-job")
        defer { coordinator.signal(SIGKILL); coordinator.wait(timeout: 30) }
        var agents: [Child] = []
        for (h, child) in [(0, p), (1, r), (2, writer)] {
            let a = try hosts.start(h, Products.wb, ["agent", "--join", address, "--host", "host\(h)", "--pid", "\(child.pid)"], env: ["WB_TOKEN": "redis-job"])
            try #require(a.line(startingWith: "wb: joined") != nil, "\(a.stderrText)")
            agents.append(a)
        }
        defer { for a in agents { a.signal(SIGKILL); a.wait(timeout: 30) } }
        usleep(500_000)
        let set = "\(dir)/set"
        let run = try wb(["checkpoint", "--coordinator", address, "-o", set, "--kill"], env: ["WB_TOKEN": "redis-job"])
        try #require(run.code == 0, "\(run.stderr)")
        #expect(!Paths.exists("\(dir)/writer.done"), "the writer finished before the checkpoint")
        let report = try DistributedTests.manifest(set)
        #expect((report["channels"] as? [Any])?.count == 2, "replication link and writer connection: \(report)")

        // Caught in files: the restored members run on with whatever wb's stdio was.
        let restore = try Subprocess.output(Products.wb, ["restore", set, "--detach", "--json"])
        try #require(restore.status == 0, "\(String(decoding: restore.stderr, as: UTF8.self))")
        let members = try #require(try JSONSerialization.jsonObject(with: Data(restore.stdout)) as? [[String: Any]])
        let namespaces = Dictionary(uniqueKeysWithValues: members.compactMap { m in
            (m["member"] as? String).flatMap { name in (m["namespace"] as? String).map { (String(name.split(separator: ":")[0]), $0) } }
        })
        defer {
            for m in members { if let pid = m["pid"] as? Int { kill(Int32(pid), SIGKILL) } }
            usleep(200_000)
            for ns in Set(namespaces.values) { _ = try? TestHosts.ip(["netns", "delete", ns]) }
            if let ns = namespaces.values.first, let bridge = ns.split(separator: "-").first { _ = try? TestHosts.ip(["link", "delete", String(bridge)]) }
        }
        let done = DistributedTests.waitFor(60) { Paths.exists("\(dir)/writer.done") }
        #expect(done, "the restored writer did not finish")
        let p0 = try #require(namespaces["host0"]), r1 = try #require(namespaces["host1"])
        let replicated = DistributedTests.waitFor(20) { cli(r1, replica, ["DBSIZE"]) == "3000" }
        #expect(cli(p0, primary, ["DBSIZE"]) == "3000" && replicated, "primary \(cli(p0, primary, ["DBSIZE"])), replica \(cli(r1, replica, ["DBSIZE"])) keys")
        #expect(cli(r1, replica, ["GET", "key:2999"]) == "2999" && cli(r1, replica, ["GET", "key:0"]) == "0")
        #expect(cli(p0, primary, ["SET", "after", "restore"]) == "OK")
        #expect(DistributedTests.waitFor(10) { cli(r1, replica, ["GET", "after"]) == "restore" }, "a new write did not replicate")
        #expect(cli(r1, replica, ["INFO", "replication"]).contains("master_link_status:up"))
    }

    static func waitFor(_ seconds: Double, _ what: () -> Bool) -> Bool {
        let deadline = Clock.monotonic + seconds
        while Clock.monotonic < deadline {
            if what() { return true }
            usleep(100_000)
        }
        return what()
    }
}

extension DistributedTests {
    /// A real MPI job: Debian's Open MPI (TCP transport), 4 ranks of harness/mpi/ring.c over 2
    /// hosts. mpirun runs under `wb run --join` on the first host (it and its local ranks are a
    /// member); it starts its daemon on the second through an rsh agent (as it would over ssh),
    /// the daemon detaches, and `wb agent --tree` adds it and its ranks. Checkpointed mid-run
    /// with --kill and restored on one box, the job finishes with its own check passed.
    @Test(.enabled(if: InfiniBandTests.openMPIInstalled, "Open MPI is not installed (harness/test installs openmpi-bin and libopenmpi-dev)"))
    func anOpenMPIJobOverTwoHostsIsCheckpointedAndRestoredOnOneBox() throws {
        let dir = scratchDirectory()
        let root = Paths.directory(of: #filePath) + "/../.."
        let ring = "\(dir)/mpi-ring"
        let build = try Subprocess.output("/usr/bin/mpicc", ["-O2", "-o", ring, "\(root)/harness/mpi/ring.c"])
        try #require(build.status == 0, "mpicc: \(String(decoding: build.stderr, as: UTF8.self))")
        let hosts = try TestHosts(count: 2, subnet: "10.227.0", tag: "m")
        defer { hosts.remove() }
        try Paths.makeDirectories("\(dir)/hosts")
        for i in 0..<2 { try Data(hosts.names[i].utf8).write(to: URL(fileURLWithPath: "\(dir)/hosts/\(hosts.address(i))")) }
        let token = "mpi-job"
        let (coordinator, address) = try hosts.coordinator(token: token)
        defer { coordinator.signal(SIGKILL); coordinator.wait(timeout: 30) }
        let env = ["WB_TOKEN": token, "WB_NETNS_MAP": "\(dir)/hosts"]
        let mpirun = [Products.wb, "run", "--join", address, "--host", "host0", "--",
                      "/usr/bin/mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "4", "--host", "\(hosts.address(0)):2,\(hosts.address(1)):2",
                      "--mca", "plm_rsh_agent", "\(root)/harness/mpi/netns-rsh", "--mca", "plm_rsh_no_tree_spawn", "1",
                      "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "eth0", "--mca", "oob_tcp_if_include", "eth0",
                      ring, "600", "\(dir)/result"]
        let job = try hosts.start(0, "/bin/sh", ["-c", "exec \(mpirun.map { "'\($0)'" }.joined(separator: " ")) > \(dir)/out 2>&1"], env: env)
        // Whatever is left of the job's daemon if the test stops early.
        let daemon = "orte_hnp_uri.*tcp://\(hosts.address(0)):"
        defer {
            job.signal(SIGKILL); job.wait(timeout: 30)
            _ = try? Subprocess.output("/usr/bin/pkill", ["-9", "-f", daemon])
        }
        func text(_ f: String) -> String { (try? Paths.readText("\(dir)/\(f)")) ?? "" }
        try #require(DistributedTests.waitFor(60) { text("out").contains("READY ranks=4") }, "the job did not start:\n\(text("out"))")
        let pgrep = try Subprocess.output("/usr/bin/pgrep", ["-f", daemon])
        let orted = try #require(String(decoding: pgrep.stdout, as: UTF8.self).split(separator: "\n").first.flatMap { Int32($0) },
                                 "no Open MPI daemon on host1")
        let agent = try hosts.start(1, Products.wb, ["agent", "--join", address, "--host", "host1", "--pid", "\(orted)", "--tree"], env: env)
        defer { agent.signal(SIGKILL); agent.wait(timeout: 30) }
        try #require(agent.line(startingWith: "wb: joined") != nil, "\(agent.stderrText)")
        usleep(300_000)

        let set = "\(dir)/set"
        let run = try wb(["checkpoint", "--coordinator", address, "-o", set, "--kill"], env: env)
        try #require(run.code == 0, "\(run.stderr)")
        #expect(!Paths.exists("\(dir)/result"), "the job finished before the checkpoint")
        let report = try DistributedTests.manifest(set)
        #expect((report["members"] as? [Any])?.count == 2 && (report["hosts"] as? [Any])?.count == 2, "\(report)")

        let restore = try wb(["restore", set], timeout: 240)
        #expect(restore.code == 0, "\(restore.stderr)")
        #expect(text("result") == "OK ranks=4 iterations=600\n", "\(text("result"))\n\(text("out"))\n\(restore.stderr)")
    }
}
