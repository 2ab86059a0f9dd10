import Foundation
import Glibc
import WBCore
import WBRestore

/// Asks gdb whether an expression holds in a restored, stopped process: gdb connects to
/// wb's remote-protocol server, evaluates the expression as C and prints the answer, and the
/// process is ended afterwards.
public enum GDBCheck {
    /// With `keepTracing`, the process stays under wb's control, stopped, after gdb is done.
    public static func evaluate(_ expression: String, in restored: RestoredProcess, image: Image, files: ResolvedFiles,
                                cache: FileCache, keepTracing: Bool = false) throws -> Bool {
        guard let gdb = Subprocess.find("gdb") else {
            throw WBError.failed("gdb is not installed: apt-get install gdb (or check with --predicate instead)")
        }
        let listener = try GDBListener(port: 0)
        // Paths the sysroot leaves out cost gdb some symbols at most; the answer is all a
        // check reports.
        let sysroot = try Sysroot.build(for: image, files: files, cache: cache).directory
        let marker = "WB-CHECK"
        let args = GDB.commandLine(port: listener.port, executable: image.process.exe, sysroot: sysroot, debugDirectories: [],
                                   arguments: ["-batch", "-ex", "printf \"\(marker) %d\\n\", (\(expression)) ? 1 : 0"])
        var out: [Int32] = [0, 0]
        guard pipe(&out) == 0 else { throw WBError.system(call: "pipe", errno: errno, what: "starting gdb") }
        let pid: Int32
        do {
            pid = try Subprocess.spawn(gdb, args, stdout: out[1], stderr: out[1])
        } catch {
            close(out[0]); close(out[1])
            throw error
        }
        close(out[1])
        let reader = FileDescriptor(owning: out[0])
        // gdb's output is read as it comes, so it never blocks on a full pipe.
        nonisolated(unsafe) var text: [UInt8] = []
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            text = (try? reader.readAll(limit: 1 << 20)) ?? []
            done.signal()
        }
        while true {
            if let connection = try listener.accept(timeout: 200) {
                let server = GDBServer(tracee: restored.tracee, connection: connection, execFile: image.process.exe)
                server.detachKeepsTracing = keepTracing
                _ = server.serve()
                break
            }
            var st: Int32 = 0
            if waitpid(pid, &st, WNOHANG) == pid { break }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        done.wait()
        let output = String(decoding: text, as: UTF8.self)
        for line in output.split(separator: "\n") where line.hasPrefix(marker + " ") {
            return line.dropFirst(marker.count + 1).trimming(" ") != "0"
        }
        let why = output.split(separator: "\n").last { !$0.hasPrefix("warning:") && !$0.isEmpty && !$0.contains("Remote target") }
        throw WBError.invalidArgument("gdb could not evaluate \(expression): \(why.map(String.init) ?? "no answer")")
    }
}
