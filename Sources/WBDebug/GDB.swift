import Foundation
import Glibc
import WBCore

/// Starting the real gdb on a restored process.
public enum GDB {
    /// The gdb command line: the sysroot and debug directories are set before gdb attaches
    /// (-iex), so that it loads every shared library from the sysroot; `arguments` follow.
    public static func commandLine(pid: Int32, sysroot: String, debugDirectories: [String], arguments: [String]) -> [String] {
        var args = ["-q", "-iex", "set sysroot \(sysroot)", "-iex", "set auto-load safe-path /"]
        let debugPath = (["/usr/lib/debug"] + debugDirectories).joined(separator: ":")
        args += ["-iex", "set debug-file-directory \(debugPath)"]
        args += ["-p", "\(pid)"]
        return args + arguments
    }

    /// Runs gdb in the foreground on this terminal and returns its exit code.
    public static func run(pid: Int32, sysroot: String, debugDirectories: [String], arguments: [String]) throws -> Int32 {
        guard let gdb = Subprocess.find("gdb") else {
            throw WBError.failed("gdb is not installed: apt-get install gdb (or use --gdb-port to debug from another machine)")
        }
        let child = try Subprocess.spawn(gdb, commandLine(pid: pid, sysroot: sysroot, debugDirectories: debugDirectories, arguments: arguments),
                                         stdin: 0, stdout: 1, stderr: 2)
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}
