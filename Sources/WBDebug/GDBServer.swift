import Foundation
import Glibc
import WBCore
import WBTrace

/// A gdb remote-protocol server over a stopped process wb controls: gdb (or an IDE) reads
/// and writes registers and memory, sets software breakpoints and hardware watchpoints, steps
/// and continues threads, and sends `monitor` commands, while wb keeps ownership of the
/// process. All-stop mode: when one thread stops, every thread stops.
public final class GDBServer {
    public private(set) var tracee: Tracee
    let connection: RemoteConnection
    /// The executable's path as the process knew it (gdb maps it through its sysroot).
    public var execFile: String
    /// Handles `monitor` commands: returns the text to show, or throws.
    public var monitor: ((String, GDBServer) throws -> String)?

    private var selected: Int32
    private var breakpoints: [UInt64: UInt8] = [:]
    private var watchpoints: [Int: (address: UInt64, length: Int, kind: Int)] = [:]
    private var debugRegistersSet: Set<Int32> = []
    private var pendingSignals: [Int32: Int32] = [:]
    private var lastStop = "S05"
    private var finished = false

    public enum Ending: Equatable { case detached, killed, exited(Int32), disconnected }

    /// gdb's detach takes wb's breakpoints away but leaves the process under wb's ptrace,
    /// stopped (a check that reads a process wb goes on driving).
    public var detachKeepsTracing = false

    public init(tracee: Tracee, connection: RemoteConnection, execFile: String) {
        self.tracee = tracee
        self.connection = connection
        self.execFile = execFile
        selected = tracee.pid
        lastStop = "T05thread:\(String(tracee.pid, radix: 16));"
    }

    /// Reports `tid` stopped by `signal` (a crash wb ran into): gdb sees the signal, and it is
    /// delivered when the thread goes on.
    public func setStop(tid: Int32, signal: Int32) {
        selected = tid
        if signal != SIGTRAP && signal != 0 { pendingSignals[tid] = signal }
        lastStop = String(format: "T%02x", GDBSignals.gdb(signal == 0 ? SIGTRAP : signal)) + "thread:\(String(tid, radix: 16));"
    }

    /// Replaces the process being debugged (after `monitor restore`).
    public func replace(with tracee: Tracee) {
        self.tracee = tracee
        selected = tracee.pid
        debugRegistersSet = []
        pendingSignals = [:]
        for (address, _) in breakpoints { breakpoints[address] = nil }
        lastStop = "T05thread:\(String(tracee.pid, radix: 16));"
    }

    /// Serves packets until gdb detaches, kills the process, the process exits, or gdb hangs up.
    public func serve() -> Ending {
        while !finished {
            guard let incoming = try? connection.receive() else { return .disconnected }
            switch incoming {
            case .closed: return .disconnected
            case .interrupt: continue
            case .oversized: reply("E01")
            case let .packet(p):
                if let ending = handle(p) { return ending }
            }
        }
        return .disconnected
    }

    // MARK: Dispatch

    private func reply(_ s: String) {
        if GDBServer.logging { FileHandle.standardError.write(Data("wb-rsp: <- \(s.prefix(200))\n".utf8)) }
        connection.send(s)
    }

    /// WB_DEBUG_RSP=1 logs every packet on stderr.
    static let logging = ProcessInfo.processInfo.environment["WB_DEBUG_RSP"] != nil

    private func handle(_ p: [UInt8]) -> Ending? {
        let text = String(decoding: p, as: UTF8.self)
        if GDBServer.logging { FileHandle.standardError.write(Data("wb-rsp: -> \(text.prefix(200))\n".utf8)) }
        guard let first = text.first else { reply(""); return nil }
        do {
            switch first {
            case "q":
                if text.hasPrefix("qXfer:") { connection.send(try transfer(text)) } else { reply(try query(text)) }
            case "Q":
                if text == "QStartNoAckMode" { reply("OK"); connection.noAck = true } else { reply("") }
            case "?": reply(lastStop)
            case "H":
                guard text.count >= 3, ["g", "c"].contains(text.dropFirst().first!), let id = Int32(text.dropFirst(2), radix: 16) else { reply("E01"); break }
                if id > 0 && tracee.tids.contains(id) { selected = id }
                reply("OK")
            case "T":
                reply(tracee.tids.contains(Int32(text.dropFirst(), radix: 16) ?? -1) ? "OK" : "E01")
            case "g": reply(Hex.encode(try registers(selected).all))
            case "G":
                var file = try registers(selected)
                guard let bytes = Hex.decode(text.dropFirst()), bytes.count == file.all.count else { reply("E01"); break }
                var at = 0
                for n in 0..<RegisterFile.count {
                    let size = file.bytes(n)!.count
                    guard at + size <= bytes.count else { break }
                    _ = file.set(n, Array(bytes[at..<(at + size)]))
                    at += size
                }
                try store(file, selected)
                reply("OK")
            case "p":
                guard let n = Int(text.dropFirst(), radix: 16), let b = try registers(selected).bytes(n) else { reply("E01"); break }
                reply(Hex.encode(b))
            case "P":
                let parts = text.dropFirst().split(separator: "=")
                guard parts.count == 2, let n = Int(parts[0], radix: 16), let b = Hex.decode(parts[1]) else { reply("E01"); break }
                var file = try registers(selected)
                guard file.set(n, b) else { reply("E01"); break }
                try store(file, selected)
                reply("OK")
            case "m", "x":
                // 1 MiB at most: gdb asks for far less (PacketSize), and nothing else should
                // make wb allocate what a packet says.
                guard let (address, length) = addressLength(text.dropFirst()), length <= 1 << 20 else { reply("E01"); break }
                guard let bytes = readMemory(address, length) else { reply("E01"); break }
                if first == "m" { reply(Hex.encode(bytes)) } else { connection.send([UInt8(ascii: "b")] + RemoteConnection.escape(bytes)) }
            case "M":
                guard let colon = text.firstIndex(of: ":"), let (address, length) = addressLength(text[text.index(after: text.startIndex)..<colon]),
                      let bytes = Hex.decode(text[text.index(after: colon)...]), bytes.count == length else { reply("E01"); break }
                reply(writeMemory(address, bytes) ? "OK" : "E01")
            case "X":
                guard let colon = p.firstIndex(of: UInt8(ascii: ":")),
                      let (address, length) = addressLength(Substring(String(decoding: p[1..<colon], as: UTF8.self))) else { reply("E01"); break }
                let bytes = RemoteConnection.unescape(p[(colon + 1)...])
                reply(bytes.count == length && writeMemory(address, bytes) ? "OK" : "E01")
            case "Z", "z": reply(try breakpoint(text, insert: first == "Z"))
            case "v": return try verbose(text)
            case "c", "s", "C", "S":
                // c[ADDR], s[ADDR], Csig[;ADDR], Ssig[;ADDR]; the address (where to resume) is
                // not supported and ignored, but a malformed one is an error, not a resume.
                var signal: Int32 = 0
                var rest = text.dropFirst()
                if first == "C" || first == "S" {
                    guard let n = Hex.number(rest.prefix { $0 != ";" }), let gdb = Int32(exactly: n) else { reply("E01"); break }
                    signal = GDBSignals.linux(gdb)
                    rest = rest.drop { $0 != ";" }.dropFirst()
                }
                guard rest.isEmpty || Hex.number(rest) != nil else { reply("E01"); break }
                return try resume([(first == "s" || first == "S" ? "s" : "c", signal, nil)])
            case "k":
                kill()
                return .killed
            case "D":
                detach()
                reply("OK")
                return .detached
            default:
                reply("")
            }
        } catch let WBError.processGone(pid, _) {
            reply("X09")
            finished = true
            return pid == tracee.pid ? .exited(137) : nil
        } catch {
            if GDBServer.logging { FileHandle.standardError.write(Data("wb-rsp: error: \(error)\n".utf8)) }
            reply("E01")
        }
        return nil
    }

    /// ADDR,LENGTH of m, x, M, X and qXfer: both hex, the length one an Int can hold.
    private func addressLength(_ s: Substring) -> (UInt64, Int)? {
        let parts = s.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = Hex.number(parts[0]), let l = Hex.number(parts[1]).flatMap({ Int(exactly: $0) }) else { return nil }
        return (a, l)
    }

    private func query(_ text: String) throws -> String {
        if text.hasPrefix("qSupported") {
            return "PacketSize=20000;QStartNoAckMode+;qXfer:features:read+;qXfer:auxv:read+;qXfer:exec-file:read+;qXfer:libraries-svr4:read+;swbreak+;hwbreak+;vContSupported+"
        }
        if text == "qC" { return "QC\(String(selected, radix: 16))" }
        if text == "qfThreadInfo" { return "m" + tracee.tids.map { String($0, radix: 16) }.joined(separator: ",") }
        if text == "qsThreadInfo" { return "l" }
        if text == "qAttached" { return "1" }
        if text.hasPrefix("qThreadExtraInfo,") {
            let tid = Int32(text.dropFirst(17), radix: 16) ?? 0
            let name = ((try? Paths.readText("/proc/\(tracee.pid)/task/\(tid)/comm")) ?? "").trimming("\n")
            return Hex.encode(Array(name.utf8))
        }
        if text.hasPrefix("qRcmd,") {
            guard let bytes = Hex.decode(text.dropFirst(6)) else { return "E01" }
            let command = String(decoding: bytes, as: UTF8.self)
            guard let monitor else { return "E01" }
            do {
                let out = try monitor(command, self)
                if !out.isEmpty { connection.send("O" + Hex.encode(Array((out.hasSuffix("\n") ? out : out + "\n").utf8))) }
                return "OK"
            } catch {
                connection.send("O" + Hex.encode(Array("wb: \(error)\n".utf8)))
                return "E01"
            }
        }
        return ""
    }

    /// qXfer:OBJECT:read:ANNEX:OFFSET,LENGTH (binary reply)
    private func transfer(_ text: String) throws -> [UInt8] {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[2] == "read", let (offset, length) = addressLength(parts[4]) else { return Array("E00".utf8) }
        let data: [UInt8]
        switch parts[1] {
        case "features":
            guard parts[3] == "target.xml" else { return Array("E00".utf8) }
            data = Array(RegisterFile.targetXML.utf8)
        case "auxv":
            data = try Paths.readBytes("/proc/\(tracee.pid)/auxv")
        case "exec-file":
            data = Array(execFile.utf8)
        case "libraries-svr4":
            data = Array(librariesXML().utf8)
        default:
            return []
        }
        guard offset <= UInt64(data.count) else { return Array("l".utf8) }
        let start = Int(offset)
        let end = start + min(length, data.count - start)     // length may be up to Int.max
        let chunk = Array(data[start..<end])
        return [UInt8(ascii: end >= data.count ? "l" : "m")] + RemoteConnection.escape(chunk)
    }

    private func librariesXML() -> String {
        let memory = tracee.memory
        let auxv = (try? ProcFS.auxv(tracee.pid)) ?? []
        let map = LinkMap.read(auxv: auxv, word: { try? memory.readWord($0) }, string: { address in
            guard let bytes = try? memory.read(address, count: 512) else { return nil }
            return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        })
        guard let map, let main = map.entries.first else { return "<library-list-svr4 version=\"1.0\"/>" }
        var xml = "<library-list-svr4 version=\"1.0\" main-lm=\"\(hex(main.address))\">"
        for e in map.entries.dropFirst() where !e.name.isEmpty {
            let name = e.name.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "\"", with: "&quot;")
            xml += "<library name=\"\(name)\" lm=\"\(hex(e.address))\" l_addr=\"\(hex(e.base))\" l_ld=\"\(hex(e.dynamic))\" lmid=\"0x0\"/>"
        }
        return xml + "</library-list-svr4>"
    }

    // MARK: Registers and memory

    private func registers(_ tid: Int32) throws -> RegisterFile {
        RegisterFile(general: try tracee.registers(tid), xstate: [UInt8](try tracee.xstate(tid)))
    }

    private func store(_ file: RegisterFile, _ tid: Int32) throws {
        try tracee.setRegisters(tid, file.general)
        try tracee.setXstate(tid, Data(file.xstate))
    }

    /// Memory as gdb should see it: with the original bytes where breakpoints sit. When only
    /// the start of the range is readable, that start (gdb accepts short reads, and gdbserver
    /// answers so); nil when none of it is.
    private func readMemory(_ address: UInt64, _ length: Int) -> [UInt8]? {
        // Nothing lies past 2^64: a range that runs beyond it ends there.
        let room = 0 &- address                                   // 0: all of 2^64 (address 0)
        let count = room == 0 ? length : Int(min(UInt64(length), room))
        guard count > 0 else { return [] }
        var bytes: [UInt8]
        if let all = try? tracee.read(address, count: count) {
            bytes = all
        } else {
            // What can be read changes only at page boundaries: read page by page up to the
            // first page that fails.
            bytes = []
            var at = address
            while bytes.count < count {
                let chunk = min(count - bytes.count, GDBServer.pageSize - Int(at % UInt64(GDBServer.pageSize)))
                guard let b = try? tracee.read(at, count: chunk) else { break }
                bytes += b
                at &+= UInt64(chunk)
            }
            if bytes.isEmpty { return nil }
        }
        for (a, original) in breakpoints where a >= address && a - address < UInt64(bytes.count) { bytes[Int(a - address)] = original }
        return bytes
    }

    /// x86-64 base pages; larger pages are made of them, so their boundaries are these too.
    static let pageSize = 4096

    /// Writes `bytes` at `address`; a range past 2^64 is refused whole. Where breakpoints sit,
    /// memory keeps int3 and their saved bytes take the new values, once the write succeeded.
    private func writeMemory(_ address: UInt64, _ bytes: [UInt8]) -> Bool {
        guard !bytes.isEmpty else { return true }                 // gdb's probe for X support
        guard !address.addingReportingOverflow(UInt64(bytes.count - 1)).overflow else { return false }
        var out = bytes
        var originals: [UInt64: UInt8] = [:]
        for (a, _) in breakpoints where a >= address && a - address < UInt64(bytes.count) {
            originals[a] = bytes[Int(a - address)]
            out[Int(a - address)] = 0xCC
        }
        guard (try? tracee.write(out, to: address)) != nil else { return false }
        breakpoints.merge(originals) { $1 }
        return true
    }

    // MARK: Breakpoints and watchpoints

    private func breakpoint(_ text: String, insert: Bool) throws -> String {
        let parts = text.dropFirst().split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[0].count == 1, let type = Int(parts[0]), let address = Hex.number(parts[1]),
              let kind = Hex.number(parts[2].prefix { $0 != ";" }).flatMap({ Int(exactly: $0) }) else { return "E01" }
        switch type {
        case 0:
            if insert {
                if breakpoints[address] != nil { return "OK" }
                guard let original = try? tracee.read(address, count: 1) else { return "E01" }
                guard (try? tracee.write([0xCC], to: address)) != nil else { return "E01" }
                breakpoints[address] = original[0]
            } else {
                guard let original = breakpoints[address] else { return "OK" }
                guard (try? tracee.write([original], to: address)) != nil else { return "E01" }
                breakpoints[address] = nil
            }
            return "OK"
        case 2, 3, 4:
            if insert {
                guard [1, 2, 4, 8].contains(kind), address % UInt64(kind) == 0 else { return "E01" }
                if watchpoints.values.contains(where: { $0 == (address, kind, type) }) { return "OK" }
                guard let slot = (0..<4).first(where: { watchpoints[$0] == nil }) else { return "E01" }
                watchpoints[slot] = (address, kind, type)
                // Set at once (all threads are stopped), so that an address the kernel refuses
                // (kernel space) is refused here rather than failing every later continue.
                debugRegistersSet = []
                do {
                    try applyDebugRegisters()
                } catch {
                    watchpoints[slot] = nil
                    debugRegistersSet = []
                    if case WBError.processGone = error { throw error }
                    try? applyDebugRegisters()
                    return "E01"
                }
                return "OK"
            } else {
                guard let slot = watchpoints.first(where: { $0.value.address == address && $0.value.kind == type })?.key else { return "OK" }
                watchpoints[slot] = nil
            }
            debugRegistersSet = []
            return "OK"
        default:
            return ""
        }
    }

    /// DR0-DR3 and DR7 of every thread as `watchpoints` say.
    private func applyDebugRegisters() throws {
        var dr7: UInt64 = 0
        for (slot, w) in watchpoints {
            let rw: UInt64 = w.kind == 2 ? 1 : 3                            // write, or read/write
            let len: UInt64 = [1: 0, 2: 1, 4: 3, 8: 2][w.length]!
            dr7 |= 1 << UInt64(2 * slot)
            dr7 |= (rw | len << 2) << UInt64(16 + 4 * slot)
        }
        for tid in tracee.tids where !debugRegistersSet.contains(tid) {
            try tracee.setDebugRegister(tid, 7, 0)
            for (slot, w) in watchpoints { try tracee.setDebugRegister(tid, slot, w.address) }
            try tracee.setDebugRegister(tid, 7, dr7)
            debugRegistersSet.insert(tid)
        }
    }

    // MARK: Running

    private func verbose(_ text: String) throws -> Ending? {
        if text == "vCont?" { reply("vCont;c;C;s;S;t"); return nil }
        if text.hasPrefix("vCont;") {
            // ACTION[:THREAD] items; one that does not parse, or names no thread of ours, makes
            // the whole packet an error, and nothing runs.
            var actions: [(Character, Int32, Int32?)] = []
            for item in text.dropFirst(6).split(separator: ";", omittingEmptySubsequences: false) {
                let parts = item.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count <= 2, let kind = parts[0].first, "cCsSt".contains(kind) else { reply("E01"); return nil }
                var signal: Int32 = 0
                if kind == "C" || kind == "S" {
                    guard let n = Hex.number(parts[0].dropFirst()), let gdb = Int32(exactly: n) else { reply("E01"); return nil }
                    signal = GDBSignals.linux(gdb)
                } else if parts[0].count != 1 {
                    reply("E01"); return nil
                }
                var thread: Int32?
                if parts.count == 2 && parts[1] != "-1" {
                    guard let n = Hex.number(parts[1]), let tid = Int32(exactly: n), tid == 0 || tracee.tids.contains(tid) else { reply("E01"); return nil }
                    thread = tid == 0 ? selected : tid                   // 0: any thread
                }
                let k: Character = kind == "S" ? "s" : kind == "C" ? "c" : kind
                actions.append((k, signal, thread))
            }
            if actions.isEmpty { reply("E01"); return nil }
            return try resume(actions)
        }
        if text.hasPrefix("vKill") { kill(); reply("OK"); return .killed }
        if text == "vMustReplyEmpty" { reply(""); return nil }
        reply("")
        return nil
    }

    /// Lets threads run as `actions` say (c: continue, s: step, t: stop; per thread or for
    /// all), waits for the first stop, stops every other thread, and reports it.
    private func resume(_ actions: [(Character, Int32, Int32?)]) throws -> Ending? {
        try applyDebugRegisters()
        var running = Set<Int32>()
        var stepping = Set<Int32>()
        for tid in tracee.tids {
            guard let action = actions.first(where: { $0.2 == nil || $0.2 == tid }), action.0 != "t" else { continue }
            let signal = action.1 != 0 ? action.1 : (pendingSignals.removeValue(forKey: tid) ?? 0)
            try tracee.resume(tid, action.0 == "s" ? .singleStep : .continue, signal: signal)
            running.insert(tid)
            if action.0 == "s" { stepping.insert(tid) }
        }
        guard !running.isEmpty else { reply(lastStop); return nil }
        var interrupted = false
        while true {
            if let (tid, stop) = try tracee.waitAny(block: false) {
                switch stop {
                case let .exited(code) where tid == tracee.pid:
                    reply(String(format: "W%02x", code)); finished = true; return .exited(code)
                case let .killed(sig) where tid == tracee.pid:
                    reply(String(format: "X%02x", GDBSignals.gdb(sig))); finished = true; return .exited(128 + sig)
                case .exited, .killed:
                    running.remove(tid)
                    continue
                case .event:
                    // A new thread (auto-attached, stopped) or another event: both run on.
                    try tracee.resume(tid, stepping.contains(tid) ? .singleStep : .continue)
                    for t in tracee.tids where !running.contains(t) && !stepping.contains(t) && actions.contains(where: { $0.2 == nil && $0.0 == "c" }) {
                        try? tracee.resume(t, .continue)
                        running.insert(t)
                    }
                    continue
                case .interrupted:
                    if !interrupted { try tracee.resume(tid, .continue); continue }
                    running.remove(tid)
                    try stopOthers(&running)
                    return report(tid, signal: SIGINT, stepped: false)
                case let .signal(sig):
                    running.remove(tid)
                    try stopOthers(&running)
                    return report(tid, signal: sig, stepped: stepping.contains(tid))
                }
            }
            if let incoming = try connection.receive(timeout: 5) {
                if incoming == .closed { finished = true; kill(); return .disconnected }
                if incoming == .interrupt && !interrupted {
                    interrupted = true
                    for t in running { try? tracee.interrupt(t) }
                }
            }
        }
    }

    /// Stops every thread still running and waits until each is stopped.
    private func stopOthers(_ running: inout Set<Int32>) throws {
        for t in running { try tracee.interrupt(t) }
        for t in running {
            loop: while true {
                switch try tracee.wait(t) {
                case .interrupted: break loop
                case let .signal(sig):
                    if sig != SIGTRAP && sig != SIGSTOP { pendingSignals[t] = sig }
                    try tracee.resume(t, .continue)
                case .event: try tracee.resume(t, .continue)
                case .exited, .killed: break loop
                }
            }
        }
        running.removeAll()
    }

    private func report(_ tid: Int32, signal: Int32, stepped: Bool) -> Ending? {
        selected = tid
        var extra = ""
        if signal == SIGTRAP {
            let dr6 = (try? tracee.debugRegister(tid, 6)) ?? 0
            if let slot = (0..<4).first(where: { dr6 & (1 << UInt64($0)) != 0 }), let w = watchpoints[slot] {
                extra = "\(w.kind == 2 ? "watch" : w.kind == 3 ? "rwatch" : "awatch"):\(String(w.address, radix: 16));"
                try? tracee.setDebugRegister(tid, 6, 0)
            } else if var regs = try? tracee.registers(tid), breakpoints[regs.rip &- 1] != nil, !stepped || breakpoints[regs.rip &- 1] != nil {
                // The int3 has run: the thread stands at the breakpoint's address.
                regs.rip -= 1
                try? tracee.setRegisters(tid, regs)
                extra = "swbreak:;"
            }
        } else if signal != SIGINT {
            pendingSignals[tid] = signal
        }
        lastStop = String(format: "T%02x", GDBSignals.gdb(signal)) + "thread:\(String(tid, radix: 16));" + extra
        reply(lastStop)
        return nil
    }

    private func kill() {
        finished = true
        _ = Glibc.kill(tracee.pid, SIGKILL)
    }

    private func detach() {
        for (address, original) in breakpoints { try? tracee.write([original], to: address) }
        breakpoints = [:]
        for tid in tracee.tids { try? tracee.setDebugRegister(tid, 7, 0) }
        finished = true
        if !detachKeepsTracing { tracee.detach() }
    }
}

/// A listening TCP socket on 127.0.0.1 for gdb to connect to.
public final class GDBListener {
    public let fd: Int32
    public let port: UInt16

    public init(port: UInt16) throws {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw WBError.system(call: "socket", errno: errno, what: "opening the gdb port") }
        var one: Int32 = 1
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(s, 1) == 0 else {
            let e = errno
            close(s)
            throw WBError.system(call: "bind(127.0.0.1:\(port))", errno: e, what: "opening the gdb port (is it in use?)")
        }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
        fd = s
        self.port = UInt16(bigEndian: addr.sin_port)
    }

    deinit { close(fd) }

    /// Waits for gdb to connect (up to `timeout` ms; -1: forever); nil on timeout.
    public func accept(timeout: Int32 = -1) throws -> RemoteConnection? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&p, 1, timeout) < 0 { if errno != EINTR { break } }
        if p.revents & Int16(POLLIN) == 0 { return nil }
        while true {
            let c = Glibc.accept(fd, nil, nil)
            if c >= 0 {
                var one: Int32 = 1
                setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                return RemoteConnection(fd: c)
            }
            if errno == EINTR { continue }
            throw WBError.system(call: "accept", errno: errno, what: "waiting for gdb to connect")
        }
    }
}
