import Foundation
import Glibc
import Testing
import WBCore
import WBTrace

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

    /// All of `bytes`, however many writes that takes (a large packet fills the socket buffer).
    func rawAll(_ bytes: [UInt8]) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            done += n
        }
    }

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

    /// Binary data of an x reply, unescaped.
    static func unescape(_ data: ArraySlice<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        var escaped = false
        for b in data {
            if escaped { out.append(b ^ 0x20); escaped = false } else if b == 0x7D { escaped = true } else { out.append(b) }
        }
        return out
    }

    /// The next byte on the wire (an acknowledgement), waiting up to `timeout` seconds.
    func byte(timeout: Double = 10) -> UInt8? {
        if let first = buffer.first { buffer.removeFirst(); return first }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) > 0 else { return nil }
        var b: UInt8 = 0
        return read(fd, &b, 1) == 1 ? b : nil
    }
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

    /// Every address of the 64-bit space, lengths that run past its end, malformed and
    /// oversized packets, bad checksums and noise: each gets an answer (`E`, empty, or the
    /// readable prefix of memory), and afterwards the server still answers correctly and the
    /// restored process is alive, can be continued, interrupted and killed.
    @Test func survivesAnyAddressAndAnyPacket() throws {
        let (server, port, pid) = try serve()
        let c = try RSPClient(port: port)
        let hwmBefore = try memoryPeakKB(server.pid)

        // Bad checksums (wrong, or not hex) are refused with '-' and not acted on, even k and D.
        for bad in ["$g#00", "$g#zz", "$k#00", "$D#00", "$m0,8#6"] {
            c.raw(Array(bad.utf8))
            if bad.hasSuffix("#6") { c.raw(Array("0".utf8)) }    // the checksum's second digit comes late
            #expect(c.byte() == UInt8(ascii: "-"), "no '-' for \(bad)")
        }
        // A 16 MiB packet (with acknowledgements on) is refused, not buffered.
        try sendHuge(c)
        #expect(c.ask("qSupported:swbreak+")?.contains("PacketSize=") == true)
        #expect(c.ask("QStartNoAckMode") == "OK")
        c.noAck = true
        try sendHuge(c)

        let g = try #require(c.ask("g"))
        #expect(g.count == 816 * 2)
        let rip = try #require(c.ask("p10"))
        let ripValue = try #require(UInt64(rip.chunked(2).reversed().joined(), radix: 16))
        let code = try #require(c.ask("m\(hex16(ripValue)),8"))
        #expect(code.count == 16)

        // m and x over the whole address range: nothing is mapped at these addresses (the
        // vsyscall page is execute-only), so each is an error, or at most a readable prefix that
        // stops at 2^64; M, X and Z at them are errors too.
        let addresses: [UInt64] = [0, 1, 0xfff, 0x1000, 1 << 32, (1 << 47) - 8, 1 << 47, 1 << 62, (1 << 63) - 8, (1 << 63) - 1,
                                   1 << 63, (1 << 63) + 8, 0xffff_8000_0000_0000, 0xffff_ffff_8000_0000, 0xffff_ffff_ff60_0000,
                                   0xffff_ffff_ff60_0ff8, 0xffff_ffff_ffff_f000, 0xffff_ffff_ffff_fff0, 0xffff_ffff_ffff_ffff]
        for address in addresses {
            let room = address == 0 ? UInt64.max : (0 &- address)     // bytes left below 2^64
            for length in [1, 8, 0x100, 0x1001, 0x10_0000] {
                let what = "\(hex16(address)),\(String(length, radix: 16))"
                let m = try #require(c.ask("m\(what)"), "no answer to m\(what)")
                #expect(m.hasPrefix("E") || (m.count % 2 == 0 && UInt64(m.count / 2) <= min(UInt64(length), room) && m.allSatisfy(\.isHexDigit)),
                        "m\(what) got \(m.prefix(40))")
                c.send("x\(what)")
                let x = try #require(c.receive(), "no answer to x\(what)")
                #expect(x.first == UInt8(ascii: "E") || (x.first == UInt8(ascii: "b") && UInt64(RSPClient.unescape(x.dropFirst()).count) <= min(UInt64(length), room)),
                        "x\(what) got \(String(decoding: x.prefix(40), as: UTF8.self))")
            }
            #expect(c.ask("M\(hex16(address)),1:00")?.hasPrefix("E") == true)
            #expect(c.ask("M\(hex16(address)),10:\(String(repeating: "00", count: 16))")?.hasPrefix("E") == true)
            c.sendBytes(Array("X\(hex16(address)),4:".utf8) + [0x61, 0x62, 0x63, 0x64])
            #expect(c.receive().map { String(decoding: $0, as: UTF8.self) }?.hasPrefix("E") == true)
            #expect(c.ask("Z0,\(hex16(address)),1")?.hasPrefix("E") == true)
            #expect(c.ask("z0,\(hex16(address)),1") == "OK")
            // A watchpoint there is taken or refused, and goes away again.
            let aligned = address & ~7
            let z2 = try #require(c.ask("Z2,\(hex16(aligned)),8"))
            #expect(z2 == "OK" || z2.hasPrefix("E"), "Z2 at \(hex16(aligned)) got \(z2)")
            #expect(c.ask("z2,\(hex16(aligned)),8") == "OK")
        }

        // Memory that ends inside the range read: the readable prefix, as gdbserver returns.
        let maps = try ProcFS.maps(pid)
        let lastReadable = try #require(maps.first { e in e.perms.hasPrefix("r") && e.end < 1 << 47 && !maps.contains { $0.start == e.end } })
        for length in [0x100, 0x10_0000] {
            let m = try #require(c.ask("m\(hex16(lastReadable.end - 8)),\(String(length, radix: 16))"))
            #expect(m.count == 16, "prefix of \(hex16(lastReadable.end - 8)) got \(m.prefix(40))")
        }

        // Malformed packets: bad hex, missing or extra fields, values past 64 bits, lengths
        // no memory has.
        let ffff = String(repeating: "f", count: 16), wide = String(repeating: "f", count: 20)
        let malformed = [
            "m0,\(ffff)", "m0,10000000000000000", "m10000000000000000,1", "m\(ffff),\(ffff)", "m0,100001", "m0,-1", "m-1,8", "m+0,8",
            "m,8", "m8,", "m8", "m8,8,8", "m 8,8", "mzz", "x0,\(ffff)", "x\(ffff),\(ffff)", "x,",
            "M0,\(ffff):00", "M\(ffff),2:0000", "Mfffffffffffffff0,100:\(String(repeating: "00", count: 0x100))", "M0,1:zz", "M0,1:0",
            "M0,1", "M:00", "M0,2:00", "X0,\(ffff):", "Xzz,1:a", "X0,1", "X\(ffff),2:ab", "X:",
            "Z0,\(ffff),1", "Z0,zz,1", "Z0,0,\(wide)", "Z2,\(ffff),8", "Z2,1,8", "Z2,0,3", "Z\(wide),0,1", "Z", "Z0", "Z0,0", "z", "z0,0",
            "p7fffffffffffffff", "p\(wide)", "p-1", "p", "P-1=00", "P\(wide)=00", "P0=zz", "P=", "G", "Gzz", "G0",
            "Hg\(wide)", "Hc", "Hx1", "H\u{ff}1", "T\(wide)", "T-1", "T", "qThreadExtraInfo,\(wide)",
            "qXfer:features:read:target.xml:0,\(ffff)", "qXfer:features:read:target.xml:\(wide),1", "qXfer:auxv:read::,",
            "qXfer:exec-file:read::0,", "qXfer:", "qXfer:features:read:target.xml", "qRcmd,z",
            "vCont;x", "vCont;c:zz", "vCont;Czz", "vCont;c:\(wide)", "vCont;s:-2", "vCont", "Czz", "Sxyz", "C", "S",
            "\u{7f}", "\u{0}\u{1}\u{2}",
        ]
        for bad in malformed {
            let answer = c.ask(bad)
            #expect(answer == "" || answer?.hasPrefix("E") == true, "\(bad.prefix(60)) got \(answer?.prefix(60) ?? "nothing")")
        }
        // qXfer offsets and lengths past the object (or past 2^63) end the transfer.
        for past in ["qXfer:features:read:target.xml:1,7fffffffffffffff", "qXfer:features:read:target.xml:\(ffff),1",
                     "qXfer:auxv:read::8000000000000000,10", "qXfer:exec-file:read::7fffffffffffffff,7fffffffffffffff"] {
            let answer = try #require(c.ask(past), "no answer to \(past)")
            #expect(answer.hasPrefix("l") || answer.hasPrefix("m"), "\(past) got \(answer.prefix(40))")
        }

        // Noise between packets (no '$' in it, so no packet starts), then packets of random bytes.
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        func random() -> UInt8 {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: seed >> 33)
        }
        c.rawAll((0..<(1 << 20)).map { _ in let b = random(); return b == UInt8(ascii: "$") ? 0 : b })
        #expect(c.ask("qC") == "QC\(String(pid, radix: 16))")
        let readOnly = Array("mxpHTqgz?".utf8)
        for i in 0..<300 {
            var payload = [i % 2 == 0 ? readOnly[i / 2 % readOnly.count] : 0x80 | random()]
            for _ in 0..<(Int(random()) * 3) {
                let b = random()
                if b != UInt8(ascii: "$") && b != UInt8(ascii: "#") { payload.append(b) }
            }
            c.sendBytes(payload)
            #expect(c.receive() != nil, "no answer to random packet \(i)")
        }

        // The server answers as before, its memory did not grow with the large packets, and the
        // process is the same, stopped and held by this wb.
        #expect(c.ask("g") == g)
        #expect(c.ask("m\(hex16(ripValue)),8") == code)
        #expect(c.ask("?")?.hasPrefix("T05") == true)
        #expect(try memoryPeakKB(server.pid) - hwmBefore < 8 << 10, "the server kept a large packet")
        #expect(ProcFS_exists(pid) && ProcFS_exists(server.pid))
        #expect(tracerOf(pid) == "\(server.pid)")
        // A checkpoint meanwhile is refused, naming this wb as the tracer.
        let refused = try wb("checkpoint", "\(pid)", "-o", "\(scratchDirectory("rspcheckpoint"))/x.wbimg")
        #expect(refused.code == 1)
        #expect(refused.stderr.contains("pid \(pid) is being checkpointed (or restored/debugged) by another wb (pid \(server.pid)): wait for it to finish"),
                "\(refused.stderr)")

        // It runs on when continued, stops on an interrupt, and dies on k.
        c.send("vCont;c")
        #expect(c.receive(timeout: 1) == nil, "the continued process stopped at once")
        c.raw([0x03])
        let stop = try #require(c.receive())
        #expect(String(decoding: stop, as: UTF8.self).hasPrefix("T02thread:"), "\(String(decoding: stop, as: UTF8.self))")
        #expect(c.ask("m\(hex16(ripValue)),8")?.count == 16)
        c.send("k")
        #expect(server.exitCode == 128 + SIGKILL)
        #expect(!ProcFS_exists(pid))
    }

    /// A packet of 16 MiB (an M packet as if gdb ignored PacketSize): its answer is empty or an
    /// error, and then the server goes on.
    private func sendHuge(_ c: RSPClient) throws {
        var payload = Array("M0,800000:".utf8)
        payload += [UInt8](repeating: UInt8(ascii: "0"), count: 16 << 20)
        c.sendBytes(payload)
        let answer = try #require(c.receive(timeout: 60).map { String(decoding: $0, as: UTF8.self) }, "no answer to a 16 MiB packet")
        #expect(answer == "" || answer.hasPrefix("E"), "16 MiB packet got \(answer.prefix(40))")
    }

    private func memoryPeakKB(_ pid: Int32) throws -> Int {
        let status = try Paths.readText("/proc/\(pid)/status")
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") })
        return try #require(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]))
    }
}

private func hex16(_ v: UInt64) -> String { String(v, radix: 16) }

extension String {
    func chunked(_ n: Int) -> [String] {
        stride(from: 0, to: count, by: n).map { i in
            let a = index(startIndex, offsetBy: i), b = index(a, offsetBy: min(n, count - i))
            return String(self[a..<b])
        }
    }
}
