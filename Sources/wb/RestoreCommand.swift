import ArgumentParser
import Foundation
import Glibc
import WBCore
import WBSet
import WBDebug
import WBNet
import WBRestore

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Bring a checkpointed process back to life.",
        discussion: """
        The process is rebuilt inside a fresh stub process with its original pid and thread \
        ids, when they are free here; otherwise (or with --new-pidns) in a new pid namespace, \
        where it still sees its original ids.

        By default wb stays in the foreground: it passes signals sent to it on to the process \
        and exits with the process's exit status (128 + N when signal N ended it). Files the \
        process had open on a terminal or on a pipe to another program, on fds 0-2, are \
        attached to wb's own stdin, stdout and stderr.

        An image of a process tree (wb checkpoint --tree) comes back whole: every process \
        with its pid, its parent, session and process group, the pipes, files, shared memory \
        and socket pairs they shared, and children that had exited but were not reaped. wb \
        waits for (and --detach prints) the root process.

        Sockets come back with their addresses, options and queued data. TCP connections are \
        rebuilt in repair mode with their sequence numbers and queues: a peer that is still \
        there (a checkpoint taken with --kill held its packets) sees a pause, then the \
        conversation goes on; --tcp=close resets connections to peers outside the image \
        instead. A port taken here is an error naming it: --new-netns restores the process \
        into a network namespace of its own, with its addresses, beside the original.
        """)

    @Argument(help: "The image to restore.")
    var image: String

    @Flag(help: "Return at once, printing the restored process's pid (as seen from here).")
    var detach = false

    @Flag(help: "Leave the restored process stopped (SIGSTOP); continue it with kill -CONT or a debugger.")
    var stopped = false

    @Flag(name: .customLong("new-pidns"), help: "Restore in a new pid namespace even if the original pids are free.")
    var newPidNamespace = false

    @Option(help: "TCP connections to peers outside the image: restore (rebuild them; the peer sees a pause) or close (the process finds them reset).")
    var tcp: TCPPolicyArgument = .restore

    @Flag(name: .customLong("host-clocks"), help: "Let the process see this machine's CLOCK_MONOTONIC and CLOCK_BOOTTIME instead of its own going on from the checkpoint (in a time namespace of its own).")
    var hostClocks = false

    @Flag(name: .customLong("new-netns"), help: "Restore into a network namespace of its own holding the process's addresses (loopback, and those its sockets were bound to); its connections to peers outside the image are reset.")
    var newNetworkNamespace = false

    @Flag(help: "Skip checking the checksums of the image's page data before restoring.")
    var noVerify = false

    @Flag(help: "Restore even if this CPU lacks instructions or register state the process may use, or the check of what was restored finds a difference (it becomes a note).")
    var force = false

    @Flag(help: "Map memory straight from the image instead of copying it (fast; page checksums are still checked first; keep the image in place, see docs).")
    var map = false

    @Flag(help: "Print the restored pid and notes as JSON (with --detach).")
    var json = false

    @Flag(help: "Restore the process stopped and start gdb on it, with the image's files as its sysroot.")
    var debug = false

    @Option(name: .customLong("debug-dir"), help: "A directory with separate debug info (a .build-id tree) for gdb; repeatable.")
    var debugDirectories: [String] = []

    @Flag(name: .customLong("no-gdb-scripts"), help: "With --debug: gdb loads none of the scripts the image carries (pretty printers, python's py-bt), which run as you.")
    var noGDBScripts = false

    @Option(name: .customLong("gdb-port"), help: "Serve the gdb remote protocol on 127.0.0.1:PORT instead of starting gdb (0: any free port).")
    var gdbPort: UInt16?

    @Option(help: "Where `monitor checkpoint` writes snapshots (default: IMAGE.snapshots beside the image).")
    var snapshots: String?

    @Argument(parsing: .postTerminator, help: "With --debug: arguments for gdb, after -- (e.g. -- -batch -ex 'thread apply all bt').")
    var gdbArguments: [String] = []

    @Flag(name: .shortAndLong, help: "Print nothing but errors.")
    var quiet = false

    func validate() throws {
        if json && !detach { throw ValidationError("--json needs --detach (in the foreground the process owns stdout)") }
        if !gdbArguments.isEmpty && !debug { throw ValidationError("arguments after -- are for gdb: add --debug") }
        if noGDBScripts && !debug { throw ValidationError("--no-gdb-scripts is about the gdb --debug starts: add --debug") }
        if (debug || gdbPort != nil) && (detach || json || (stopped && member == nil && rank == nil)) {
            throw ValidationError("--debug and --gdb-port keep wb in the foreground: they exclude --detach, --json and (but for the other members of a set) --stopped")
        }
    }

    @Option(help: ArgumentHelp("With a set image and --debug or --gdb-port: the member to debug, HOST:PID (the others run, or wait stopped with --stopped).", valueName: "member"))
    var member: String?

    @Option(help: ArgumentHelp("With a set image and --debug or --gdb-port: the member to debug by its MPI rank, as the manifest knows it (wb inspect SET shows the ranks).", valueName: "n"))
    var rank: Int?

    func run() throws {
        if SetManifest.isSet(image) { return try restoreSet() }
        if member != nil || rank != nil { throw ValidationError("--\(member != nil ? "member" : "rank") is for a set image (a directory written by wb checkpoint --coordinator)") }
        try runReportingErrors {
            // Signals for the restored process are blocked before any thread starts, so the
            // forwarding thread can take them.
            if !detach { Signals.block(Signals.forwarded) }
            Output.timing("opening the image")
            let opened = try Image(path: image)
            Output.timing("image opened")
            var options = RestoreOptions()
            options.pidNamespace = newPidNamespace ? .new : .automatic
            options.verify = !noVerify
            options.force = force
            options.mapPages = map
            options.allowTree = !(debug || gdbPort != nil)
            options.tcp = tcp.policy
            options.newNetworkNamespace = newNetworkNamespace
            options.hostClocks = hostClocks
            let restorer = Restorer(image: opened, options: options)
            restorer.progress = Output.progress(quiet: quiet || json)
            if debug {
                // Ctrl-C belongs to gdb while it runs (it interrupts the process through wb).
                signal(SIGINT, SIG_IGN)
                signal(SIGQUIT, SIG_IGN)
            }
            if debug || gdbPort != nil { Signals.unblock(Signals.forwarded) }
            let restored = try restorer.restore()
            if !quiet && !json { for n in restored.notes { Output.note(n) } }
            if debug || gdbPort != nil {
                let launcher = DebugLauncher(startGDB: debug, port: gdbPort, snapshots: snapshots ?? image + ".snapshots",
                                             debugDirectories: debugDirectories, gdbArguments: gdbArguments, quiet: quiet,
                                             gdbScripts: !noGDBScripts)
                let code = try launcher.run(restored, image: opened, files: restorer.files ?? ResolvedFiles(), options: options)
                throw ExitCode(code)
            }
            // With --detach the pid comes first on stdout (scripts read it), before the process
            // runs and can write to the same stdout itself.
            if detach && !json { Output.line("\(restored.pid)") }
            if stopped { restored.releaseStopped() } else { restored.resume() }
            if detach {
                // Said as it is: a process that died as it was let go is not "stopped". One
                // with signals pending may act on them as soon as it runs: give it a moment.
                var state = restored.state
                let pending = opened.metadata.processes.contains { !$0.sharedPending.isEmpty || $0.threads.contains { !$0.pending.isEmpty } }
                let until = Date().addingTimeInterval(pending ? 0.2 : 0)
                while state == "running" && Date() < until { usleep(2000); state = restored.state }
                if state == "exited" && !quiet { Output.note("the restored process \(restored.pid) has already exited") }
                if json {
                    try Output.json(RestoreReport(pid: restored.pid, originalPid: restored.originalPid,
                                                  namespaceInit: restored.initPid, stopped: state == "stopped", state: state,
                                                  notes: restored.notes))
                }
                return
            }
            if stopped && !quiet {
                FileHandle.standardError.write(Data("wb: restored pid \(restored.pid), stopped: kill -CONT \(restored.pid) to run it\n".utf8))
            }
            Signals.forward(Signals.forwarded, to: restored.pid)
            let status = try restored.waitForExit()
            throw ExitCode(status)
        }
    }
}

extension RestoreCommand {
    /// A set image: every member in a network namespace of its host's, on one box.
    func restoreSet() throws {
        try runReportingErrors {
            if newNetworkNamespace || map { throw WBError.invalidArgument("--new-netns and --map are for a single image; a set's hosts get namespaces of their own") }
            if member != nil && rank != nil { throw WBError.invalidArgument("--member and --rank name the same thing: give one") }
            if (debug || gdbPort != nil) && member == nil && rank == nil { throw WBError.invalidArgument("--debug on a set: name the member with --member HOST:PID or --rank N") }
            if !detach && !(debug || gdbPort != nil) { Signals.block(Signals.forwarded) }
            let set = try SetRestorer(dir: image)
            var member = self.member
            if let rank {
                let ranked = set.manifest.members.filter { $0.rank != nil }.sorted { $0.rank! < $1.rank! }
                guard let m = ranked.first(where: { $0.rank == rank }) else {
                    throw WBError.invalidArgument(ranked.isEmpty
                        ? "--rank \(rank): the set's manifest knows no ranks (its members had no OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK or SLURM_PROCID); name the member with --member HOST:PID (\(set.manifest.members.map(\.name).joined(separator: ", ")))"
                        : "--rank \(rank): the set has ranks \(ranked.map { "\($0.rank!) (\($0.name))" }.joined(separator: ", "))")
                }
                member = m.name
            }
            if let member, !set.manifest.members.contains(where: { $0.name == member }) {
                throw WBError.invalidArgument("--member \(member): the set has \(set.manifest.members.map(\.name).joined(separator: ", "))")
            }
            set.options.pidNamespace = newPidNamespace ? .new : .automatic
            set.options.verify = !noVerify
            set.options.hostClocks = hostClocks
            set.options.force = force
            set.options.tcp = tcp.policy
            if !quiet && !json { set.progress = { FileHandle.standardError.write(Data("wb: \($0)\n".utf8)) } }
            let restored = try set.restore()
            if !quiet && !json {
                for r in restored { for n in r.notes { Output.note("\(r.member.name): \(n)") } }
            }
            let debugged = restored.first { $0.member.name == member }
            var held = stopped ? Set(restored.map(\.member.name)) : []
            if let debugged { held.remove(debugged.member.name) }
            // With --detach the pids come first on stdout, before the members run and can write
            // to the same stdout themselves.
            if detach && !json { for r in restored { Output.line("\(r.process.pid)") } }
            do {
                try set.resume(restored.filter { $0.member.name != debugged?.member.name }, stopped: held)
            } catch {
                for r in restored { r.process.terminate() }
                set.removeHosts()
                throw error
            }
            if let debugged {
                signal(SIGINT, SIG_IGN)
                signal(SIGQUIT, SIG_IGN)
                let launcher = DebugLauncher(startGDB: debug, port: gdbPort, snapshots: snapshots ?? "\(image)/\(debugged.member.image).snapshots",
                                             debugDirectories: debugDirectories, gdbArguments: gdbArguments, quiet: quiet,
                                             gdbScripts: !noGDBScripts)
                var options = set.options
                options.networkNamespace = "/run/netns/\(debugged.namespace)"
                let code = try launcher.run(debugged.process, image: debugged.image, files: debugged.files, options: options)
                for r in restored where r.member.name != debugged.member.name { r.process.terminate() }
                set.removeHosts()
                throw ExitCode(code)
            }
            if detach {
                set.keepHosts()
                if json {
                    try Output.json(restored.map { SetMemberReport(member: $0.member.name, pid: $0.process.pid, namespace: $0.namespace, state: $0.process.state) })
                } else if !quiet {
                    Output.note("the hosts are network namespaces \(restored.map(\.namespace).sorted().joined(separator: ", ")) on bridge \(set.bridge); remove them with ip netns delete NAME and ip link delete \(set.bridge) once the members are done")
                }
                return
            }
            // In the foreground: until every member has ended; the first failure is the exit status.
            var status: Int32 = 0
            for r in restored {
                let s = (try? r.process.waitForExit()) ?? 1
                if !quiet { FileHandle.standardError.write(Data("wb: \(r.member.name) (\(r.member.command)) ended with status \(s)\n".utf8)) }
                if status == 0 { status = s }
            }
            set.removeHosts()
            throw ExitCode(status)
        }
    }
}

struct SetMemberReport: Encodable {
    var member: String
    var pid: Int32
    var namespace: String
    var state: String
}

struct RestoreReport: Encodable {
    var pid: Int32
    var originalPid: Int32
    var namespaceInit: Int32?
    var stopped: Bool
    /// "running", "stopped" or "exited", read after the process was let go.
    var state: String
    var notes: [String]
}

/// --tcp's values.
enum TCPPolicyArgument: String, ExpressibleByArgument, CaseIterable {
    case restore, close
    var policy: TCPPolicy { self == .restore ? .restore : .close }
}
