import Foundation
import Glibc
import WBCore
import WBDebug
import WBRestore

/// Hands a restored process that wb holds stopped to gdb: wb serves the gdb remote protocol
/// and either starts gdb itself (with the image's files as its sysroot) or waits for one to
/// connect on a port. Shared by `restore --debug` and `replay --debug`.
struct DebugLauncher {
    var startGDB: Bool
    var port: UInt16?
    var snapshots: String
    var debugDirectories: [String]
    var gdbArguments: [String]
    var quiet: Bool
    /// The stop gdb is told about first: a thread and the signal it stopped with.
    var initialStop: (tid: Int32, signal: Int32)?
    /// gdb loads the scripts the image carries (pretty printers, python's py-bt).
    var gdbScripts = true

    /// Serves gdb until it is done; returns gdb's exit status (or the process's, without gdb).
    func run(_ restored: RestoredProcess, image: Image, files: ResolvedFiles, options: RestoreOptions) throws -> Int32 {
        let listener = try GDBListener(port: port ?? 0)
        let session = DebugSession(restored: restored, directory: snapshots, options: options)
        let exe = image.process.exe
        var gdb: Int32?
        if startGDB {
            let sysroot = try Sysroot.build(for: image, files: files, cache: FileCache(directory: options.cacheDirectory))
            if !quiet { for why in sysroot.skipped { Output.note("gdb's sysroot leaves out a path from the image: \(why)") } }
            gdb = try GDB.start(port: listener.port, executable: exe, sysroot: sysroot.directory,
                                debugDirectories: debugDirectories, arguments: gdbArguments, scripts: gdbScripts)
        } else if !quiet {
            FileHandle.standardError.write(Data("wb: restored pid \(restored.pid), stopped; in gdb: target remote 127.0.0.1:\(listener.port)\n".utf8))
        }
        var ending = GDBServer.Ending.disconnected
        var first = true
        serving: while true {
            guard let connection = try acceptOrGDBGone(listener, gdb) else { break }
            let server = GDBServer(tracee: session.restored.tracee, connection: connection, execFile: exe)
            if first, let stop = initialStop { server.setStop(tid: stop.tid, signal: stop.signal) }
            first = false
            server.monitor = { command, server in try session.monitor(command, server: server) }
            ending = server.serve()
            switch ending {
            case .disconnected where gdb == nil: continue serving
            default: break serving
            }
        }
        let process = session.restored
        var status: Int32 = 0
        if startGDB || ending != .detached {
            // The restored copy lives for the debugging session.
            status = process.terminate()
        } else {
            status = try process.waitForExit()
        }
        guard let gdb else { return status }
        var gdbStatus: Int32 = 0
        while waitpid(gdb, &gdbStatus, 0) < 0 && errno == EINTR {}
        return Subprocess.exitCode(waitStatus: gdbStatus)
    }

    /// The next connection; nil once the gdb wb started has exited without connecting.
    private func acceptOrGDBGone(_ listener: GDBListener, _ gdb: Int32?) throws -> RemoteConnection? {
        while true {
            if let c = try listener.accept(timeout: 200) { return c }
            if let gdb, kill(gdb, 0) != 0 || isZombie(gdb) { return nil }
        }
    }

    private func isZombie(_ pid: Int32) -> Bool {
        ((try? Paths.readText("/proc/\(pid)/stat")) ?? "").contains(") Z")
    }
}
