import Foundation
import Glibc
import Testing
import WBCore
import WBTrace

/// Where `swift build` put wb and the harness programs: next to this test bundle.
enum Products {
    static let directory: String = {
        if let d = ProcessInfo.processInfo.environment["WB_PRODUCTS"] { return d }
        let exe = (try? Paths.readLink("/proc/self/exe")) ?? ""
        return Paths.directory(of: exe)
    }()
    static var wb: String { "\(directory)/wb" }
    static func harness(_ name: String) -> String { "\(directory)/harness-\(name)" }
}

/// A child process with its stdout (and stderr) on pipes we read line by line.
final class Child {
    let pid: Int32
    private let out: Int32
    private let err: Int32
    private var buffer: [UInt8] = []
    private var errBuffer: [UInt8] = []
    private(set) var reaped = false
    private(set) var status: Int32 = 0

    init(_ path: String, _ args: [String], env: [String: String] = [:], stdin: Int32? = nil) throws {
        var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else { throw WBError.failed("pipe failed") }
        var environment = ProcessInfo.processInfo.environment
        environment["COLUMNS"] = "100"
        for (k, v) in env { environment[k] = v }
        let pid: Int32
        do {
            pid = try Subprocess.spawn(path, args, environment: environment, stdin: stdin, stdout: outPipe[1], stderr: errPipe[1])
        } catch {
            close(outPipe[0]); close(errPipe[0]); close(outPipe[1]); close(errPipe[1])
            throw error
        }
        close(outPipe[1]); close(errPipe[1])
        self.pid = pid
        out = outPipe[0]
        err = errPipe[0]
        _ = fcntl(out, F_SETFL, O_NONBLOCK)
        _ = fcntl(err, F_SETFL, O_NONBLOCK)
    }

    deinit {
        if !reaped { kill(pid, SIGKILL); _ = wait() }
        close(out); close(err)
    }

    /// The next line on stdout, waiting up to `timeout` seconds; nil at end of file or timeout.
    func line(timeout: Double = 30) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let text = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return text
            }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            var fds = [pollfd(fd: out, events: Int16(POLLIN), revents: 0), pollfd(fd: err, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 2, Int32(min(left, 1) * 1000))
            drainErr()
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(out, &chunk, chunk.count)
            if n > 0 { buffer += chunk[0..<n] } else if n == 0 { return nil }
        }
    }

    /// Waits for a line starting with `prefix`, skipping others.
    func line(startingWith prefix: String, timeout: Double = 30) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while deadline.timeIntervalSinceNow > 0 {
            guard let l = line(timeout: deadline.timeIntervalSinceNow) else { return nil }
            if l.hasPrefix(prefix) { return l }
        }
        return nil
    }

    private func drainErr() {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(err, &chunk, chunk.count)
            if n > 0 { errBuffer += chunk[0..<n] } else { break }
        }
    }

    var stderrText: String { drainErr(); return String(decoding: errBuffer, as: UTF8.self) }

    /// Reads stdout to end of file.
    func rest(timeout: Double = 120) -> String {
        var lines: [String] = []
        while let l = line(timeout: timeout) { lines.append(l) }
        return lines.joined(separator: "\n")
    }

    /// Waits for the child to end (killing it after `timeout` seconds, so that a failed
    /// step never hangs the suite); returns the raw wait status.
    @discardableResult
    func wait(timeout: Double = 120) -> Int32 {
        if reaped { return status }
        var st: Int32 = 0
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let r = waitpid(pid, &st, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { break }
            if Date() > deadline {
                Issue.record("pid \(pid) did not end within \(timeout) s; killing it")
                kill(pid, SIGKILL)
                while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
                break
            }
            usleep(10_000)
        }
        reaped = true
        status = st
        return st
    }

    /// Exit code, or 128 + signal.
    var exitCode: Int32 {
        let st = wait()
        return st & 0x7f == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
    }

    func signal(_ sig: Int32) { kill(pid, sig) }
}

/// The result of running wb to completion.
struct Run {
    var code: Int32
    var stdout: String
    var stderr: String
}

func wb(_ args: String..., timeout: Double = 300) throws -> Run {
    try wb(args, timeout: timeout)
}

func wb(_ args: [String], env: [String: String] = [:], timeout: Double = 300) throws -> Run {
    let child = try Child(Products.wb, args, env: env)
    let out = child.rest(timeout: timeout)
    let code = child.exitCode
    return Run(code: code, stdout: out, stderr: child.stderrText)
}

/// A fresh directory for one test, under $WB_TEST_DIR (which harness/test makes and removes
/// afterwards) or /tmp.
func scratchDirectory(_ name: String = #function) -> String {
    let clean = name.filter { $0.isLetter || $0.isNumber }
    let root = ProcessInfo.processInfo.environment["WB_TEST_DIR"] ?? "/tmp"
    var template = Array("\(root)/wb-e2e-\(clean)-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
}

/// "key=value" fields of a harness line.
func field(_ line: String?, _ key: String) -> String? {
    guard let line else { return nil }
    for part in line.split(separator: " ") where part.hasPrefix("\(key)=") {
        return String(part.dropFirst(key.count + 1))
    }
    return nil
}

/// harness-holder KIND (vfork, clonevm) started, with the second process its READY line
/// names (fd=N).
func holderWithChild(_ kind: String) throws -> (program: Child, child: Int32) {
    let program = try Child(Products.harness("holder"), [kind])
    let ready = try #require(program.line(startingWith: "READY"))
    return (program, try #require(field(ready, "fd").flatMap { Int32($0) }))
}

/// A process a test made but is not the parent of (a restore with --detach prints its pid),
/// signalled only while it is still that process: by the time a test kills it, it may have
/// ended and its pid been reused (pid_max is 32768 here and the suite makes tens of thousands
/// of processes), and a signal to a reused pid would hit another test's process (a fuzz
/// campaign's target died of such a kill).
struct OwnedProcess {
    let pid: Int32
    /// Its start time (field 22 of /proc/PID/stat), read when the pid is first known.
    private let started: String?

    init(_ pid: Int32) {
        self.pid = pid
        started = OwnedProcess.startTime(pid)
    }

    static func startTime(_ pid: Int32) -> String? { (try? ProcFS.stat(pid))?[22] }

    /// Sends `sig` if the pid still names the process it named at first.
    func signal(_ sig: Int32) {
        guard let started, OwnedProcess.startTime(pid) == started else { return }
        Glibc.kill(pid, sig)
    }

    func kill() { signal(SIGKILL) }

    /// Kills `pid` only if it runs `executable`: for a pid learnt after the fact (the
    /// process may be gone and the pid another's by then).
    static func kill(_ pid: Int32, ifRunning executable: String) {
        guard let exe = try? Paths.readLink("/proc/\(pid)/exe"), exe == executable else { return }
        Glibc.kill(pid, SIGKILL)
    }
}

/// A restore run with --detach: its first stdout line is the pid; after that, the restored
/// process writes to the same pipe (it inherited wb's stdout).
struct Restored {
    let wb: Child
    let process: OwnedProcess
    var pid: Int32 { process.pid }

    init(wb: Child, pid: Int32) {
        self.wb = wb
        process = OwnedProcess(pid)
    }

    static func detach(_ image: String, _ extra: [String] = [], env: [String: String] = [:]) throws -> Restored {
        let child = try Child(Products.wb, ["restore", image, "--detach"] + extra, env: env)
        guard let first = child.line(timeout: 120), let pid = Int32(first) else {
            throw WBError.failed("wb restore printed no pid: \(child.stderrText)")
        }
        #expect(child.exitCode == 0)
        return Restored(wb: child, pid: pid)
    }

    func line(startingWith prefix: String, timeout: Double = 60) -> String? { wb.line(startingWith: prefix, timeout: timeout) }

    func kill() { process.kill() }

    /// Asks the restored harness program to check itself (SIGUSR1), `rounds` times; its
    /// answers ("VERIFY OK", "VERIFY FAIL ...", or "no answer").
    func verify(rounds: Int = 1) -> [String] {
        (0..<rounds).map { _ in
            process.signal(SIGUSR1)
            return line(startingWith: "VERIFY") ?? "no answer"
        }
    }
}

/// `wb checkpoint PID -o IMAGE --kill` of a harness program, waiting for it to be gone.
func checkpointKilled(_ program: Child, to image: String, _ extra: [String] = []) throws {
    let run = try wb(["checkpoint", "\(program.pid)", "-o", image, "--kill"] + extra)
    guard run.code == 0 else { throw WBError.failed("checkpoint of pid \(program.pid) failed: \(run.stderr)") }
    program.wait()
}

/// Whether `pid` is currently traced by anyone.
func tracerOf(_ pid: Int32) -> String? {
    guard let text = try? Paths.readText("/proc/\(pid)/status") else { return nil }
    return text.split(separator: "\n").first { $0.hasPrefix("TracerPid:") }.map { $0.split(separator: "\t").last.map(String.init) ?? "" }
}
