import CWBNative
import Foundation
import Glibc

/// Blocking signals and forwarding them to another process.
public enum Signals {
    /// Signals a foreground wrapper passes on to the process it runs.
    /// Signals whose default action stops the process (a group-stop).
    public static let stopping: [Int32] = [SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU]
    public static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGALRM]

    static func bits(_ signals: [Int32]) -> UInt64 { signals.reduce(0) { $0 | (1 << UInt64($1 - 1)) } }

    /// Blocks `signals` in the calling thread (and threads it starts later).
    public static func block(_ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    public static func unblock(_ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// Whether any of `signals` is pending for this process (blocked and arrived).
    public static func pending(_ signals: [Int32]) -> Int32? {
        var set = sigset_t()
        sigpending(&set)
        return signals.first { sigismember(&set, $0) == 1 }
    }

    /// Starts a thread that forwards `signals` (which must be blocked) to `pid`. Signals a
    /// terminal generated are not forwarded: the process, in the same process group, gets
    /// them from the terminal itself.
    /// With `includingTerminal`, signals from the terminal are passed on as well (for a
    /// process in another session).
    public static func forward(_ signals: [Int32], to pid: Int32, includingTerminal: Bool = false) {
        let mask = bits(signals)
        let thread = Thread {
            while true {
                var sig: Int32 = 0, code: Int32 = 0, sender: pid_t = 0
                if wb_sigwaitinfo(mask, &sig, &code, &sender) != 0 { return }
                if code == 0x80 /* SI_KERNEL: from the terminal */ && !includingTerminal { continue }
                _ = kill(pid, sig)
            }
        }
        thread.start()
    }
}
