import ArgumentParser
import Foundation
import Glibc
import WBCoordinator
import WBCore

/// The job token: --token, else WB_TOKEN.
func jobToken(_ option: String?) -> String? {
    option ?? ProcessInfo.processInfo.environment["WB_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
}

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Coordinate a distributed job's checkpoints: one per job, its members join it.",
        discussion: """
        The coordinator knows the job's members through the agents of their hosts (wb agent \\
        --join, wb run --join) and takes consistent set checkpoints of all of them (wb \\
        checkpoint --coordinator, or every --every): each agent first holds the packets of its \\
        members' TCP connections, then every member is captured, then all are let go (or ended, \\
        with --kill, once every image is on disk). Members of another job are refused: every \\
        command of the job gives the same token (--token or WB_TOKEN); without one the \\
        coordinator makes one and prints it. It listens on loopback unless told otherwise. \\
        The protocol is in docs/distributed.md.

        Examples:
          wb coordinator --listen 10.0.0.1:7717 --token s3cret
          WB_TOKEN=s3cret wb agent --join 10.0.0.1:7717 --pid 4242
          WB_TOKEN=s3cret wb checkpoint --coordinator 10.0.0.1:7717 -o /shared/set1
        """)

    @Option(help: ArgumentHelp("The address to listen on, HOST:PORT (port 0: any free port).", valueName: "address"))
    var listen = "127.0.0.1:\(CoordinatorProtocol.defaultPort)"

    @Option(help: "The job token (default: WB_TOKEN, else a new one, printed).")
    var token: String?

    @Option(help: ArgumentHelp("Take a set checkpoint this often (seconds, or a number with ms, s, m or h) into --set-dir.", valueName: "interval"))
    var every: String?

    @Option(help: ArgumentHelp("Where --every writes its sets (set-000000, set-000001, ...).", valueName: "dir"))
    var setDir: String?

    @Flag(help: "Run in the background; the last line printed is its pid.")
    var detach = false

    @Flag(name: .shortAndLong, help: "Print nothing but errors (and, with --detach, the pid).")
    var quiet = false

    func validate() throws {
        if let e = every, RunCommand.seconds(e) == nil { throw ValidationError("--every \(e): expected seconds, or a number with ms, s, m or h (200ms, 30s, 5m)") }
        if (every == nil) != (setDir == nil) { throw ValidationError("--every and --set-dir go together") }
    }

    func run() throws {
        try runReportingErrors {
            var token = jobToken(self.token)
            let generated = token == nil
            if token == nil { token = Coordinator.newToken() }
            let coordinator = try Coordinator(listen: listen, token: token!)
            let setDirectory = setDir.map(Paths.absolute)
            if let setDirectory { try Paths.makeDirectories(setDirectory) }
            if generated { Output.line("wb: job token \(token!) (give it to every command of the job: --token or WB_TOKEN)") }
            if !quiet { Output.line("wb: coordinator listening on \(coordinator.address)") }
            if detach {
                guard let child = try ThisProcess.forkIfSingleThreaded() else {
                    throw WBError.failed("--detach: cannot fork here")
                }
                if child > 0 {
                    Output.line("\(child)")
                    return
                }
                setsid()
                let null = open("/dev/null", O_RDWR)
                if null >= 0 { dup2(null, 0); dup2(null, 1); dup2(null, 2); if null > 2 { close(null) } }
            } else if !quiet {
                coordinator.log = { FileHandle.standardError.write(Data("wb: \($0)\n".utf8)) }
            }
            signal(SIGPIPE, SIG_IGN)
            try coordinator.serve(every: every.flatMap(RunCommand.seconds), setDirectory: setDirectory)
        }
    }
}

struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Add running processes of this host to a distributed job's coordinator.",
        discussion: """
        The agent joins the coordinator at --join with the processes given (attached from \\
        outside at each checkpoint, as wb checkpoint does) and stays, serving the job's \\
        checkpoints, until the coordinator goes away or a checkpoint with --kill ends the \\
        members. It must run on the members' host (in their network namespace): it holds \\
        their connections during a set checkpoint with nftables rules there.
        """)

    @Option(help: ArgumentHelp("The coordinator, HOST:PORT.", valueName: "address"))
    var join: String

    @Option(name: .customLong("pid"), help: "A process to add; repeatable.")
    var pids: [Int32] = []

    @Flag(help: "Each process comes with its descendants (one image per process tree).")
    var tree = false

    @Option(help: "The job token (default: WB_TOKEN).")
    var token: String?

    @Option(help: "This host's name in the job (default: the hostname).")
    var host: String?

    @Flag(name: .shortAndLong, help: "Print nothing but errors.")
    var quiet = false

    func validate() throws {
        if pids.isEmpty { throw ValidationError("give the processes to add with --pid PID (repeatable)") }
        if pids.contains(where: { $0 <= 0 }) { throw ValidationError("--pid must be a positive process id") }
    }

    func run() throws {
        try runReportingErrors {
            guard let token = jobToken(token) else {
                throw WBError.invalidArgument("no job token: give the coordinator's with --token or WB_TOKEN")
            }
            let name = host ?? HostName.short
            let agent = Agent(coordinator: join, token: token, host: name, members: try Agent.describe(pids, tree: tree))
            if !quiet { agent.progress = { Output.line("wb: \($0)") } }
            signal(SIGPIPE, SIG_IGN)
            try agent.run()
        }
    }
}

enum HostName {
    static var short: String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        let full = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return full.split(separator: ".").first.map(String.init) ?? "localhost"
    }
}
