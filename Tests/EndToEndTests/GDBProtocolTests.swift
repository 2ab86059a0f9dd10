import Foundation
import Glibc
import Testing
import WBCore

/// A raw gdb remote-protocol client: it speaks packets to wb's server without gdb.
final class RSPClient {
    let fd: Int32
    var noAck = false
    private var buffer: [UInt8] = []

    init(port: UInt16) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(16)) } }
        guard r == 0 else { throw WBError.failed("connect to port \(port) failed") }
    }

    deinit { close(fd) }

    func raw(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }

    func send(_ payload: String) { sendBytes(Array(payload.utf8)) }

    func sendBytes(_ payload: [UInt8]) {
        let sum = payload.reduce(UInt8(0)) { $0 &+ $1 }
        raw([UInt8(ascii: "$")] + payload + [UInt8(ascii: "#")] + Array(String(format: "%02x", sum).utf8))
    }

    /// The next packet's payload (acks skipped); nil on timeout or close.
    func receive(timeout: Double = 10) -> [UInt8]? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            while let first = buffer.first, first != UInt8(ascii: "$") { buffer.removeFirst() }
            if let hash = buffer.firstIndex(of: UInt8(ascii: "#")), buffer.count >= hash + 3 {
                let payload = Array(buffer[1..<hash])
                buffer.removeSubrange(0...(hash + 2))
                if !noAck { raw([UInt8(ascii: "+")]) }
                return payload
            }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(left * 1000)) <= 0 { return nil }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return nil }
            buffer += chunk[0..<n]
        }
    }

    func ask(_ payload: String) -> String? { send(payload); return receive().map { String(decoding: $0, as: UTF8.self) } }
}

@Suite(.serialized) struct GDBProtocolTests {
    /// An image of a running program restored under `wb restore --gdb-port 0`; returns the
    /// server process and its port.
    func serve() throws -> (Child, UInt16, Int32) {
        let dir = scratchDirectory("rsp")
        let program = try Child(Products.harness("service"), ["--accounts", "100", "--interval-ms", "50"])
        _ = try #require(program.line(startingWith: "READY"))
        let image = "\(dir)/rsp.wbimg"
        try #require(try wb("checkpoint", "\(program.pid)", "-o", image, "--kill").code == 0)
        program.wait()
        let server = try Child(Products.wb, ["restore", image, "--gdb-port", "0"])
        var port: UInt16 = 0
        for _ in 0..<200 where port == 0 {
            let text = server.stderrText
            if let range = text.range(of: "target remote 127.0.0.1:") {
                port = UInt16(text[range.upperBound...].prefix { $0.isNumber }) ?? 0
            }
            if port == 0 { usleep(50_000) }
        }
        try #require(port != 0, "no port in: \(server.stderrText)")
        return (server, port, program.pid)
    }

    @Test func answersWhatGdbNeedsAndSurvivesMalformedPackets() throws {
        let (server, port, pid) = try serve()
        let c = try RSPClient(port: port)
        // A packet with a bad checksum is refused with '-' while acknowledgements are on.
        c.raw(Array("$g#00".utf8))
        var nak = [UInt8](repeating: 0, count: 1)
        #expect(read(c.fd, &nak, 1) == 1 && nak[0] == UInt8(ascii: "-"))
        let supported = try #require(c.ask("qSupported:swbreak+;hwbreak+;xmlRegisters=i386"))
        #expect(supported.contains("PacketSize=") && supported.contains("qXfer:features:read+") && supported.contains("QStartNoAckMode+"))
        #expect(c.ask("QStartNoAckMode") == "OK")
        c.noAck = true
        #expect(c.ask("?") == "T05thread:\(String(pid, radix: 16));")
        #expect(c.ask("qfThreadInfo") == "m\(String(pid, radix: 16))")
        #expect(c.ask("qsThreadInfo") == "l")
        #expect(c.ask("qC") == "QC\(String(pid, radix: 16))")
        let xml = try #require(c.ask("qXfer:features:read:target.xml:0,ffff"))
        #expect(xml.hasPrefix("l<?xml") && xml.contains("org.gnu.gdb.i386.avx") && xml.contains("orig_rax") && xml.contains("fs_base"))
        // g: 816 bytes of registers; p10 is rip and agrees with g.
        let g = try #require(c.ask("g"))
        #expect(g.count == 816 * 2)
        let rip = try #require(c.ask("p10"))
        #expect(rip.count == 16 && g.dropFirst(16 * 16).prefix(16) == rip.prefix(16))
        let ripValue = UInt64(rip.chunked(2).reversed().joined(), radix: 16)!
        // Memory around rip, a breakpoint that stays invisible to reads, and its removal.
        let code = try #require(c.ask("m\(String(ripValue, radix: 16)),8"))
        #expect(code.count == 16)
        #expect(c.ask("Z0,\(String(ripValue, radix: 16)),1") == "OK")
        #expect(c.ask("m\(String(ripValue, radix: 16)),8") == code)
        #expect(c.ask("z0,\(String(ripValue, radix: 16)),1") == "OK")
        // Writing memory (the same bytes back) and binary reads.
        #expect(c.ask("M\(String(ripValue, radix: 16)),8:\(code)") == "OK")
        let binary = try #require({ c.send("x\(String(ripValue, radix: 16)),8"); return c.receive() }())
        #expect(binary.first == UInt8(ascii: "b"))
        // Registers written and read back (rax is put back before the step below).
        let rax = try #require(c.ask("p0"))
        #expect(c.ask("P0=1122334455667788") == "OK")
        #expect(c.ask("p0") == "1122334455667788")
        // Unmapped memory and malformed packets get errors, never a crash.
        #expect(c.ask("m0,8") == "E01")
        for bad in ["m", "mzz,8", "M10", "Zx,1,1", "z0", "pzz", "P1", "Pzz=00", "G12", "H", "vCont;", "qXfer:features:read:nope.xml:0,10",
                    "qXfer:auxv:read::zz", "X0,4:", "qRcmd,zz", "\u{1}\u{2}\u{3}", ""] {
            let answer = c.ask(bad)
            #expect(answer != nil, "no answer to \(bad)")
            #expect(answer == "" || answer?.hasPrefix("E") == true, "\(bad) got \(answer ?? "nothing")")
        }
        #expect(c.ask("?")?.hasPrefix("T05") == true)
        // auxv, monitor help, a single step with a stop reply, then kill.
        let auxv = try #require({ c.send("qXfer:auxv:read::0,1000"); return c.receive() }())
        #expect(auxv.first == UInt8(ascii: "l") && auxv.count > 100)
        c.send("qRcmd," + Array("help".utf8).map { String(format: "%02x", $0) }.joined())
        let output = try #require(c.receive())
        #expect(output.first == UInt8(ascii: "O"))
        #expect(c.receive().map { String(decoding: $0, as: UTF8.self) } == "OK")
        #expect(c.ask("P0=\(rax)") == "OK")
        let step = try #require(c.ask("vCont;s:\(String(pid, radix: 16))"))
        #expect(step.hasPrefix("T05thread:\(String(pid, radix: 16));"), "\(step)")
        // Kill ends the process, and wb with its status.
        c.send("k")
        #expect(server.exitCode == 128 + SIGKILL)
        #expect(!ProcFS_exists(pid))
    }
}

extension String {
    func chunked(_ n: Int) -> [String] {
        stride(from: 0, to: count, by: n).map { i in
            let a = index(startIndex, offsetBy: i), b = index(a, offsetBy: min(n, count - i))
            return String(self[a..<b])
        }
    }
}
