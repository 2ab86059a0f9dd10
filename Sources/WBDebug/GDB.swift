import Foundation
import Glibc
import WBCore

/// Starting the real gdb on a restored process.
public enum GDB {
    /// The gdb command line: the sysroot and debug directories are set before gdb attaches
    /// (-iex), so that it loads every shared library from the sysroot; `arguments` follow.
    public static func commandLine(pid: Int32, executable: String?, sysroot: String, debugDirectories: [String], arguments: [String]) -> [String] {
        // The process waits with SIGSTOP for gdb to attach; that stop is not the user's.
        // Python scripts that libraries auto-load expect their modules beside the real
        // files, not the sysroot's links.
        var args = ["-q", "-iex", "set sysroot \(sysroot)", "-iex", "set auto-load python-scripts off",
                    "-ex", "handle SIGSTOP nostop noprint nopass"]
        let debugPath = (["/usr/lib/debug"] + debugDirectories).joined(separator: ":")
        args += ["-iex", "set debug-file-directory \(debugPath)"]
        if let executable { args.append(sysroot + executable) }
        args += ["-p", "\(pid)"]
        return args + arguments
    }

    /// Runs gdb in the foreground on this terminal and returns its exit code.
    public static func run(pid: Int32, executable: String?, sysroot: String, debugDirectories: [String], arguments: [String]) throws -> Int32 {
        guard let gdb = Subprocess.find("gdb") else {
            throw WBError.failed("gdb is not installed: apt-get install gdb (or use --gdb-port to debug from another machine)")
        }
        let child = try Subprocess.spawn(gdb, commandLine(pid: pid, executable: executable, sysroot: sysroot, debugDirectories: debugDirectories, arguments: arguments),
                                         stdin: 0, stdout: 1, stderr: 2)
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}
