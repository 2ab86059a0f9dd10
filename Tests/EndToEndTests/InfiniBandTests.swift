import Foundation
import Glibc
import Testing
import WBCore
import WBSystem

// Inside DistributedTests: their set restores make hosts (network namespaces) that the ring
// test checks are all gone after its own, so they do not run beside it.
extension DistributedTests {
    /// Verbs programs from Debian's packages (rdma-core's pingpongs, perftest) run under
    /// `wb run --ib --join` on two hosts (network namespaces) over the emulated device wbsoft0,
    /// are checkpointed mid-run as a set with --kill, restored on one box, and finish with their
    /// own checks.
    @Suite(.serialized) struct InfiniBandTests {
        struct Case: Sendable, CustomStringConvertible {
            let program: String
            let args: [String]
            /// What the client prints once it has finished the whole run.
            let finished: String
            var description: String { program }
        }

        static let cases: [Case] = [
            Case(program: "ibv_rc_pingpong", args: ["-n", "40000", "-c"], finished: "40000 iters in"),
            Case(program: "ibv_uc_pingpong", args: ["-n", "40000", "-c"], finished: "40000 iters in"),
            // UD has no acknowledgements and runs faster: more iterations keep it running
            // until the checkpoint under load.
            Case(program: "ibv_ud_pingpong", args: ["-n", "100000", "-c"], finished: "100000 iters in"),
            Case(program: "ibv_srq_pingpong", args: ["-n", "100000", "-c"], finished: "100000 iters in"),
            Case(program: "ib_send_bw", args: ["-n", "200000"], finished: " 65536      200000"),
            Case(program: "ib_write_bw", args: ["-n", "200000"], finished: " 65536      200000"),
            Case(program: "ib_read_bw", args: ["-n", "200000"], finished: " 65536      200000"),
            Case(program: "ib_atomic_bw", args: ["-n", "200000"], finished: " 8          200000"),
            Case(program: "ib_write_lat", args: ["-n", "100000"], finished: " 2       100000"),
        ]

        static var toolsInstalled: Bool { Paths.exists("/usr/bin/ibv_rc_pingpong") && Paths.exists("/usr/bin/ib_write_bw") }

        @Test(.enabled(if: InfiniBandTests.toolsInstalled, "ibverbs-utils and perftest are not installed (harness/test installs them)"),
              arguments: cases)
        func aVerbsJobOnTheEmulatedDeviceIsCheckpointedMidRunAndFinishesAfterRestore(_ c: Case) throws {
            let dir = scratchDirectory("ib-\(c.program)")
            let index = InfiniBandTests.cases.firstIndex { $0.program == c.program } ?? 0
            let hosts = try TestHosts(count: 2, subnet: "10.223.\(index)", tag: "i\(index)")
            defer { hosts.remove() }
            let token = "ib-job"
            let env = ["WB_TOKEN": token, "WB_IB_FABRIC": "\(dir)/fabric"]
            let (coordinator, address) = try hosts.coordinator(token: token)
            defer { coordinator.signal(SIGKILL); coordinator.wait(timeout: 30) }
            // Each side writes to a file of its own, which the restored processes write on to
            // (line by line, so that the test sees when they have connected).
            func side(_ h: Int, _ peer: [String]) throws -> Child {
                let command = ([Products.wb, "run", "--ib", "--join", address, "--host", "host\(h)", "--", "/usr/bin/stdbuf", "-oL", c.program] + c.args + peer)
                    .map { "'\($0)'" }.joined(separator: " ")
                return try hosts.start(h, "/bin/sh", ["-c", "exec \(command) > \(dir)/out\(h) 2>&1"], env: env)
            }
            let server = try side(0, [])
            defer { server.signal(SIGKILL); server.wait(timeout: 30) }
            #expect(DistributedTests.waitFor(20) { ((try? Paths.readText("\(dir)/out0")) ?? "").contains("wb: joined") })
            let client = try side(1, [hosts.address(0)])
            defer { client.signal(SIGKILL); client.wait(timeout: 30) }
            func output(_ h: Int) -> String { (try? Paths.readText("\(dir)/out\(h)")) ?? "" }
            // Mid-run: both have exchanged their QP numbers and LIDs and are moving data.
            let running = DistributedTests.waitFor(30) { output(0).contains("remote address") && output(1).contains("remote address") }
            try #require(running, "the two sides did not connect:\n\(output(0))\n\(output(1))")
            usleep(600_000)
            let set = "\(dir)/set"
            let checkpoint = try wb(["checkpoint", "--coordinator", address, "-o", set, "--kill"], env: env)
            try #require(checkpoint.code == 0, "\(checkpoint.stderr)")
            #expect(!output(1).contains(c.finished), "the run ended before the checkpoint: \(output(1))")
            #expect(server.wait(timeout: 30) != 0 && client.wait(timeout: 30) != 0, "the checkpointed processes were not ended")

            let inspect = try wb("inspect", set)
            #expect(inspect.code == 0 && inspect.stdout.contains("verbs: pid ") && inspect.stdout.contains(" wbsoft0 LID ") && inspect.stdout.contains(" QP"),
                    "wb inspect shows no verbs state: \(inspect.stdout)")
            // A member's image: its verbs objects (the QP with its state and peer, the MRs).
            let images = try FileManager.default.contentsOfDirectory(atPath: set).filter { $0.hasSuffix(".wbimg") }.sorted()
            let member = try wb("inspect", "\(set)/\(try #require(images.first))", "--no-backtrace")
            #expect(member.code == 0 && member.stdout.contains(": wbsoft0 (emulated") && member.stdout.contains("  QP 0x") && member.stdout.contains("MR lkey"),
                    "\(member.stdout)")
            let restore = try wb(["restore", set], env: env, timeout: 180)
            #expect(restore.code == 0, "\(restore.stderr)")
            for h in 0..<2 {
                let out = output(h)
                #expect(out.contains(c.finished), "host\(h) did not finish its run after the restore:\n\(out)\n\(restore.stderr)")
                #expect(!out.contains("invalid data") && !out.contains("Failed status") && !out.contains("Couldn't"), "host\(h):\n\(out)")
            }
            #expect(restore.stderr.components(separatedBy: "ended with status 0").count == 3, "\(restore.stderr)")
        }
    }
}

extension DistributedTests.InfiniBandTests {
    /// What applications rely on, on wbsoft0: SEND/RECV with immediate data, RDMA WRITE (with
    /// immediate) and READ, fetch-add and compare-swap, inline data, UC, an SRQ shared by an
    /// RC and a UC QP, UD through an address handle, receiver-not-ready waits (in order) and
    /// finite RNR retries that run out, remote access and local protection errors, flushes,
    /// completion channels; what it does not offer failing cleanly, with a line saying so; and
    /// a forged request that would have the device read another process's memory refused.
    /// Both ways large payloads travel: between the processes' memory on one host, and
    /// over TCP (WB_IB_NO_SHM=1, as between hosts).
    @Test(arguments: ["shared memory", "TCP"])
    func theEmulatedDeviceKeepsTheSemanticsApplicationsRelyOn(_ path: String) throws {
        let dir = scratchDirectory()
        let run = try Child(Products.wb, ["run", "--ib", "--", Products.harness("ibcheck")],
                            env: ["WB_IB_FABRIC": "\(dir)/fabric", "WB_IB_NO_SHM": path == "TCP" ? "1" : "0"])
        let out = run.rest(timeout: 120)
        #expect(run.wait(timeout: 30) == 0, "\(out)\n\(run.stderrText)")
        #expect(out.contains("DONE passed=11 failed=0"), "\(out)")
        // What the layer does not offer fails with a line that says so.
        #expect(run.stderrText.contains("wbsoft0: ibv_qp_to_qp_ex (the extended post-send builders) is not offered"), "\(run.stderrText)")
    }

    /// harness-ibring: 4 ranks on 2 hosts RDMA-write checksummed blocks round a ring with
    /// SEND credits and a shared receive queue. Checkpointed twice while it runs on, then with
    /// --kill; the last set restored on one box finishes with every block intact, once each.
    @Test func aVerbsRingIsCheckpointedSeveralTimesAndFinishesAfterASetRestore() throws {
        let dir = scratchDirectory()
        let hosts = try TestHosts(count: 2, subnet: "10.224.0", tag: "r")
        defer { hosts.remove() }
        let token = "ibring-job"
        let env = ["WB_TOKEN": token, "WB_IB_FABRIC": "\(dir)/fabric"]
        let (coordinator, address) = try hosts.coordinator(token: token)
        defer { coordinator.signal(SIGKILL); coordinator.wait(timeout: 30) }
        let placement = [0, 0, 1, 1]
        let listen = (0..<4).map { "\(hosts.address(placement[$0])):\(7200 + $0)" }
        var ranks: [Child] = []
        defer { for r in ranks { r.signal(SIGKILL); r.wait(timeout: 30) } }
        for r in 0..<4 {
            ranks.append(try hosts.start(placement[r], Products.wb, [
                "run", "--ib", "--join", address, "--host", "host\(placement[r])", "--", Products.harness("ibring"),
                "--rank", "\(r)", "--listen", listen[r], "--next", listen[(r + 1) % 4], "--blocks", "5000", "--gap-us", "1000",
                "--out", "\(dir)/rank\(r)"], env: env))
        }
        var pids: [String] = []
        for r in ranks {
            let ready = try #require(r.line(startingWith: "READY"), "a rank did not start: \(r.stderrText)")
            pids.append(String(ready.split(separator: " ").last ?? ""))
        }
        for n in 1...2 {
            usleep(500_000)
            let run = try wb(["checkpoint", "--coordinator", address, "-o", "\(dir)/set\(n)"], env: env)
            try #require(run.code == 0, "checkpoint \(n): \(run.stderr)")
        }
        usleep(500_000)
        let last = try wb(["checkpoint", "--coordinator", address, "-o", "\(dir)/set3", "--kill"], env: env)
        try #require(last.code == 0, "\(last.stderr)")
        let results = { (0..<4).map { ((try? Paths.readText("\(dir)/rank\($0)")) ?? "none").trimming("\n") } }
        #expect(results().allSatisfy { $0 == "none" }, "the ring finished before the last checkpoint: \(results())")
        let inspect = try wb("inspect", "\(dir)/set3")
        #expect(inspect.stdout.components(separatedBy: "verbs: pid ").count == 5 && inspect.stdout.contains("1 SRQ, 2 QP"), "\(inspect.stdout)")

        // Rank 0 in gdb (the other ranks restored and waiting, stopped): the application's own
        // verbs objects, with the IDs it was given.
        let debug = try wb(["restore", "\(dir)/set3", "--debug", "--member", "host0:\(pids[0])", "--stopped", "--", "-batch",
                            "-ex", "print to_next->qp_num", "-ex", "print to_next->context->device->name", "-ex", "print from_prev->state"],
                           env: env, timeout: 120)
        #expect(debug.stdout.contains("= 17") && debug.stdout.contains("\"wbsoft0\"") && debug.stdout.contains("IBV_QPS_RTS"),
                "gdb on rank 0: \(debug.stdout) \(debug.stderr)")

        let restore = try wb(["restore", "\(dir)/set3"], env: env, timeout: 180)
        #expect(restore.code == 0, "\(restore.stderr)")
        let done = results()
        for r in 0..<4 {
            #expect(done[r].hasPrefix("OK rank \(r) blocks=5000 sum="), "rank \(r): \(done[r])\n\(restore.stderr)")
        }
    }
}

extension DistributedTests.InfiniBandTests {
    static var openMPIInstalled: Bool { Paths.exists("/usr/bin/mpicc") && Paths.exists("/usr/bin/mpirun") }

    /// A 4-rank Open MPI job over its openib transport on wbsoft0, started under
    /// `wb run --ib`: mpirun and its ranks are one process tree, checkpointed with --kill in
    /// the middle of the run and restored; every block of the ring arrives intact.
    @Test(.enabled(if: DistributedTests.InfiniBandTests.openMPIInstalled, "Open MPI is not installed (harness/test installs openmpi-bin and libopenmpi-dev)"))
    func anOpenMPIJobOverTheEmulatedDeviceIsCheckpointedAndRestored() throws {
        let dir = scratchDirectory()
        let ring = "\(dir)/mpi-ring"
        let build = try Subprocess.output("/usr/bin/mpicc", ["-O2", "-o", ring, "\(Paths.directory(of: #filePath))/../../harness/mpi/ring.c"])
        try #require(build.status == 0, "mpicc: \(String(decoding: build.stderr, as: UTF8.self))")
        let command = [Products.wb, "run", "--ib", "--", "/usr/bin/mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "4",
                       "--mca", "pml", "ob1", "--mca", "btl", "openib,self", "--mca", "btl_openib_allow_ib", "true", ring, "3000", "\(dir)/result"]
        let job = try Child("/bin/sh", ["-c", "exec \(command.map { "'\($0)'" }.joined(separator: " ")) > \(dir)/out 2> \(dir)/err"],
                            env: ["WB_IB_FABRIC": "\(dir)/fabric"])
        defer { job.signal(SIGKILL); job.wait(timeout: 30) }
        func text(_ f: String) -> String { (try? Paths.readText("\(dir)/\(f)")) ?? "" }
        let ready = DistributedTests.waitFor(60) { text("out").contains("READY ranks=4") }
        try #require(ready, "the job did not start:\n\(text("out"))\n\(text("err"))")
        let started = try #require(text("err").split(separator: "\n").first { $0.hasPrefix("wb: started /usr/bin/mpirun as pid ") })
        let mpirun = try #require(Int32(String(started.split(separator: " ").last ?? "")))
        usleep(500_000)
        let image = "\(dir)/job.wbimg"
        let run = try wb(["checkpoint", "\(mpirun)", "--tree", "-o", image, "--kill"])
        try #require(run.code == 0, "\(run.stderr)")
        #expect(!Paths.exists("\(dir)/result"), "the job finished before the checkpoint")
        let inspect = try wb("inspect", image, "--no-backtrace")
        #expect(inspect.stdout.components(separatedBy: ": wbsoft0 (emulated").count == 5, "four ranks with verbs state: \(inspect.stdout)")

        let restore = try wb(["restore", image], env: ["WB_IB_FABRIC": "\(dir)/fabric"], timeout: 240)
        #expect(restore.code == 0, "\(restore.stderr)")
        #expect(text("result") == "OK ranks=4 iterations=3000\n", "\(text("result"))\n\(text("err"))\n\(restore.stderr)")
    }
}
