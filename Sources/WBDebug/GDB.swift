import Foundation
import Glibc
import WBCore

/// Starting the real gdb on a restored process.
public enum GDB {
    /// The gdb command line: the sysroot and debug directories are set before gdb attaches
    /// (-iex), so that it loads every shared library from the sysroot; `arguments` follow.
    /// gdb connected to wb's remote-protocol server on `port`.
    /// `scripts`: gdb auto-loads the scripts the image carries (from the sysroot only).
    public static func commandLine(port: UInt16, executable: String?, sysroot: String, debugDirectories: [String], arguments: [String],
                                   scripts: Bool = true) -> [String] {
        // gdb loads the scripts the image's programs come with (Sysroot puts them in its
        // auto-load directory) and no others: the image's, not this machine's, and nothing
        // from outside the sysroot.
        var args = ["-q", "-iex", "set sysroot \(sysroot)"]
        if scripts {
            args += ["-iex", "set auto-load safe-path \(sysroot)", "-iex", "set auto-load scripts-directory \(Sysroot.autoLoadDirectory(sysroot))"]
        } else {
            args += ["-iex", "set auto-load python-scripts off"]
        }
        let debugPath = (["/usr/lib/debug"] + debugDirectories).joined(separator: ":")
        args += ["-iex", "set debug-file-directory \(debugPath)"]
        if let executable { args.append(sysroot + executable) }
        args += ["-ex", "target remote 127.0.0.1:\(port)"]
        return args + arguments
    }

    /// Starts gdb in the foreground on this terminal, connecting to `port`; returns its pid.
    public static func start(port: UInt16, executable: String?, sysroot: String, debugDirectories: [String], arguments: [String],
                             scripts: Bool = true) throws -> Int32 {
        guard let gdb = Subprocess.find("gdb") else {
            throw WBError.failed("gdb is not installed: apt-get install gdb (or use --gdb-port to debug from another machine)")
        }
        return try Subprocess.spawn(gdb, commandLine(port: port, executable: executable, sysroot: sysroot,
                                                     debugDirectories: debugDirectories, arguments: arguments, scripts: scripts),
                                    stdin: 0, stdout: 1, stderr: 2)
    }

}
