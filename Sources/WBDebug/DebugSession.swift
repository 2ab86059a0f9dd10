import Foundation
import Glibc
import WBCheckpoint
import WBCore
import WBRestore
import WBTrace

/// A debugging session on a restored process, with snapshots taken and returned to from
/// inside gdb: `monitor checkpoint [NAME]`, `monitor snapshots`, `monitor restore NAME`.
/// Snapshots are ordinary images in `directory`.
public final class DebugSession {
    public private(set) var restored: RestoredProcess
    public let directory: String
    let options: RestoreOptions
    private var counter = 0

    public init(restored: RestoredProcess, directory: String, options: RestoreOptions) {
        self.restored = restored
        self.directory = directory
        self.options = options
    }

    public static let help = """
    wb monitor commands:
      monitor checkpoint [NAME]   write an image of the process as it is now (NAME.wbimg in the snapshot directory)
      monitor snapshots           list the snapshots of this session
      monitor restore NAME        put the process back to a snapshot (then 'flushregs' so gdb re-reads registers)
      monitor help                this text
    """

    public func monitor(_ command: String, server: GDBServer) throws -> String {
        let words = command.split(separator: " ").map(String.init)
        switch words.first ?? "help" {
        case "checkpoint":
            counter += 1
            let name = words.count > 1 ? words[1] : "snapshot-\(counter)"
            guard !name.contains("/" as Character) else { throw WBError.invalidArgument("a snapshot name cannot contain '/'") }
            try Paths.makeDirectories(directory)
            let path = "\(directory)/\(name).wbimg"
            let checkpointer = Checkpointer(pid: server.tracee.pid)
            let result = try checkpointer.checkpoint(to: path, stopped: server.tracee)
            return "checkpoint \(name): \(path) (\(result.imageBytes >> 20) MiB)"
        case "snapshots":
            let names = ((try? Paths.list(directory)) ?? []).filter { $0.hasSuffix(".wbimg") }.sorted()
            if names.isEmpty { return "no snapshots yet (monitor checkpoint [NAME] takes one)" }
            return names.map { n in
                let size = (try? Paths.stat("\(directory)/\(n)").size) ?? 0
                return "  \(n.dropLast(6))  \(size >> 20) MiB  \(directory)/\(n)"
            }.joined(separator: "\n")
        case "restore":
            guard words.count > 1 else { throw WBError.invalidArgument("monitor restore NAME: which snapshot? (monitor snapshots lists them)") }
            let path = "\(directory)/\(words[1]).wbimg"
            guard Paths.exists(path) else { throw WBError.invalidArgument("no snapshot \(words[1]) in \(directory)") }
            let image = try Image(path: path)
            // The process is replaced: the old one goes, the snapshot comes back with its pid.
            restored.terminate()
            let restorer = Restorer(image: image, options: options)
            restored = try restorer.restore()
            server.replace(with: restored.tracee)
            return "restored \(words[1]): pid \(restored.pid) is back at that state; run 'flushregs' so gdb re-reads the registers"
        default:
            return DebugSession.help
        }
    }
}
