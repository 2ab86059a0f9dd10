import CWBNative
import Foundation
import Glibc

/// Pseudo-terminal pairs seen from outside the processes holding them: which fd is a
/// master, which pair a terminal side belongs to, and a pair's state.
public enum PseudoTerminals {
    public struct Pair: Sendable {
        public var index: Int32
        public var locked: Bool
        public var packet: Bool
        /// Bytes the terminal side wrote that the master has not read.
        public var readable: Int
        /// The terminal side's struct termios as the kernel keeps it (36 bytes).
        public var termios: [UInt8]
        /// Rows, columns, x and y pixels.
        public var winsize: [UInt16]
    }

    /// A master's link: /dev/ptmx, or the ptmx of a devpts instance.
    public static func isMaster(_ link: String) -> Bool { link == "/dev/ptmx" || link == "/dev/pts/ptmx" }

    /// N for "/dev/pts/N".
    public static func index(of path: String) -> Int32? {
        path.hasPrefix("/dev/pts/") ? Int32(path.dropFirst("/dev/pts/".count)) : nil
    }

    /// The pair of a master fd (wb's copy of it).
    public static func read(master fd: Int32) throws -> Pair {
        var s = wb_pty_state()
        let r = wb_pty_read(fd, &s)
        if r < 0 { throw WBError.system(call: "ioctl(TIOCGPTN)", errno: -r, what: "reading a pseudo-terminal master") }
        let termios = withUnsafeBytes(of: s.termios) { Array($0) }
        let winsize = withUnsafeBytes(of: s.winsize) { Array($0.bindMemory(to: UInt16.self)) }
        return Pair(index: s.index, locked: s.locked != 0, packet: s.packet != 0, readable: Int(s.readable),
                    termios: termios, winsize: winsize)
    }

    /// Bytes waiting to be read on a terminal fd (wb's copy of it); 0 when unknown.
    public static func readable(_ fd: Int32) -> Int { max(0, Int(wb_tty_readable(fd))) }

    /// The numbers of the pairs whose master one of `pids` holds (from fdinfo's tty-index).
    public static func masters(heldBy pids: some Sequence<Int32>) -> Set<Int32> {
        var out = Set<Int32>()
        for pid in pids {
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { continue }
            for fd in fds {
                guard let link = try? Paths.readLink("/proc/\(pid)/fd/\(fd)"), isMaster(link),
                      let info = try? Paths.readText("/proc/\(pid)/fdinfo/\(fd)") else { continue }
                for line in info.split(separator: "\n") where line.hasPrefix("tty-index:") {
                    if let n = Int32(String(line.dropFirst("tty-index:".count)).trimming(" \t")) { out.insert(n) }
                }
            }
        }
        return out
    }

    /// The pts number of a controlling terminal as /proc/PID/stat's tty_nr encodes it, or
    /// nil when it is none or not a pseudo-terminal (majors 136-143).
    public static func ptsIndex(ttyNr: Int) -> Int32? {
        let major = (ttyNr >> 8) & 0xfff, minor = (ttyNr & 0xff) | ((ttyNr >> 12) & 0xfff00)
        guard ttyNr != 0, (136...143).contains(major) else { return nil }
        return Int32((major - 136) * 256 + minor)
    }
}

extension PseudoTerminals {
    /// Gives the pair of master `fd` (wb's copy) the settings of `pair`, and its lock when
    /// `locked` (unlocked otherwise, so its terminal side can be opened).
    public static func apply(_ pair: Pair, master fd: Int32, locked: Bool) throws {
        var s = wb_pty_state()
        s.packet = pair.packet ? 1 : 0
        withUnsafeMutableBytes(of: &s.termios) { out in
            for (i, b) in pair.termios.prefix(out.count).enumerated() { out[i] = b }
        }
        let w = pair.winsize + [0, 0, 0, 0]
        s.winsize = (w[0], w[1], w[2], w[3])
        let r = wb_pty_apply(fd, &s, locked ? 1 : 0)
        if r < 0 { throw WBError.system(call: "ioctl(TCSETS)", errno: -r, what: "setting up pseudo-terminal /dev/pts/\(pair.index)") }
    }

    /// Locks or unlocks the terminal side of master `fd` (wb's copy).
    public static func lock(master fd: Int32, _ locked: Bool) throws {
        let r = wb_pty_lock(fd, locked ? 1 : 0)
        if r < 0 { throw WBError.system(call: "ioctl(TIOCSPTLCK)", errno: -r, what: "locking a pseudo-terminal") }
    }
}
