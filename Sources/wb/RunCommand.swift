import ArgumentParser
import Foundation
import Glibc
import WBCore

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start a program for wb to checkpoint, in the foreground.",
        discussion: """
        wb starts PROGRAM with its arguments, prints its pid on stderr, passes on signals sent \
        to wb, and exits with the program's exit status (128 + N when signal N ended it).

        --portable starts it with glibc tunables that make glibc choose baseline x86-64 code \
        (SSE2) instead of the AVX, AVX2 or AVX-512 variants it would pick for this CPU, so its \
        checkpoints restore on any x86-64 machine. It costs speed in glibc's string and memory \
        functions on large buffers (see docs/benchmarks.md); code the program itself was \
        compiled for a newer CPU (-march) is not changed.

        Example:
          wb run --portable -- ./server --port 8080
        """)

    @Flag(help: "Make glibc choose baseline x86-64 code, so checkpoints restore on any x86-64 CPU.")
    var portable = false

    @Argument(parsing: .postTerminator, help: "The program and its arguments (after --).")
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the program to run after --, e.g. wb run -- ./server") }
    }

    func run() throws {
        try runReportingErrors {
            let argv = command
            guard let program = argv.first else { throw WBError.invalidArgument("give the program to run after --, e.g. wb run -- ./server") }
            guard let path = Subprocess.find(program) else {
                throw WBError.invalidArgument("\(program): command not found (not a file, and not in PATH)")
            }
            var environment = ProcessInfo.processInfo.environment
            if portable {
                let existing = environment["GLIBC_TUNABLES"].map { $0 + ":" } ?? ""
                environment["GLIBC_TUNABLES"] = existing + CPUCompatibility.portableTunables
                let marker = CPUCompatibility.portableMarker.split(separator: "=")
                environment[String(marker[0])] = String(marker[1])
            }
            Signals.block(Signals.forwarded)
            let pid = try Subprocess.spawn(path, Array(argv.dropFirst()), environment: environment, stdin: 0, stdout: 1, stderr: 2)
            FileHandle.standardError.write(Data("wb: started \(program) as pid \(pid)\(portable ? " (portable)" : "")\n".utf8))
            Signals.forward(Signals.forwarded, to: pid)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            throw ExitCode(status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
        }
    }
}
