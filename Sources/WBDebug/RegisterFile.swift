import Foundation
import WBCore
import WBTrace

/// The registers gdb sees for one thread, in target.xml order: general registers from
/// PTRACE_GETREGS, x87/SSE state from the XSAVE area's legacy region, the upper halves of the
/// ymm registers from its AVX component, orig_rax and the segment bases.
public struct RegisterFile {
    enum Source {
        case general(WritableKeyPath<Registers, UInt64>)
        case xsave(offset: Int)
        case fpu(String)
    }
    struct Register { var name: String; var bits: Int; var type: String; var group: String?; var source: Source; var feature: String }

    nonisolated(unsafe) static let registers: [Register] = {
        var r: [Register] = []
        let core = "org.gnu.gdb.i386.core", sse = "org.gnu.gdb.i386.sse"
        let gp: [(String, WritableKeyPath<Registers, UInt64>)] = [
            ("rax", \.rax), ("rbx", \.rbx), ("rcx", \.rcx), ("rdx", \.rdx), ("rsi", \.rsi), ("rdi", \.rdi),
            ("rbp", \.rbp), ("rsp", \.rsp), ("r8", \.r8), ("r9", \.r9), ("r10", \.r10), ("r11", \.r11),
            ("r12", \.r12), ("r13", \.r13), ("r14", \.r14), ("r15", \.r15)]
        for (name, key) in gp {
            r.append(Register(name: name, bits: 64, type: name == "rbp" || name == "rsp" ? "data_ptr" : "int64", group: nil, source: .general(key), feature: core))
        }
        r.append(Register(name: "rip", bits: 64, type: "code_ptr", group: nil, source: .general(\.rip), feature: core))
        r.append(Register(name: "eflags", bits: 32, type: "int32", group: nil, source: .general(\.eflags), feature: core))
        for (name, key) in [("cs", \Registers.cs), ("ss", \.ss), ("ds", \.ds), ("es", \.es), ("fs", \.fs), ("gs", \.gs)] {
            r.append(Register(name: name, bits: 32, type: "int32", group: nil, source: .general(key), feature: core))
        }
        for i in 0..<8 { r.append(Register(name: "st\(i)", bits: 80, type: "i387_ext", group: nil, source: .xsave(offset: 32 + 16 * i), feature: core)) }
        for name in ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"] {
            r.append(Register(name: name, bits: 32, type: "int", group: "float", source: .fpu(name), feature: core))
        }
        for i in 0..<16 { r.append(Register(name: "xmm\(i)", bits: 128, type: "vec128", group: nil, source: .xsave(offset: 160 + 16 * i), feature: sse)) }
        r.append(Register(name: "mxcsr", bits: 32, type: "int", group: "vector", source: .xsave(offset: 24), feature: sse))
        r.append(Register(name: "orig_rax", bits: 64, type: "int", group: "system", source: .general(\.origRax), feature: "org.gnu.gdb.i386.linux"))
        r.append(Register(name: "fs_base", bits: 64, type: "int", group: nil, source: .general(\.fsBase), feature: "org.gnu.gdb.i386.segments"))
        r.append(Register(name: "gs_base", bits: 64, type: "int", group: nil, source: .general(\.gsBase), feature: "org.gnu.gdb.i386.segments"))
        for i in 0..<16 { r.append(Register(name: "ymm\(i)h", bits: 128, type: "uint128", group: nil, source: .xsave(offset: 576 + 16 * i), feature: "org.gnu.gdb.i386.avx")) }
        return r
    }()

    /// target.xml describing `registers`.
    public static let targetXML: String = {
        var xml = """
        <?xml version="1.0"?>
        <!DOCTYPE target SYSTEM "gdb-target.dtd">
        <target version="1.0">
        <architecture>i386:x86-64</architecture>
        <osabi>GNU/Linux</osabi>

        """
        var feature = ""
        for (n, reg) in registers.enumerated() {
            if reg.feature != feature {
                if !feature.isEmpty { xml += "</feature>\n" }
                feature = reg.feature
                xml += "<feature name=\"\(feature)\">\n"
                if feature == "org.gnu.gdb.i386.sse" {
                    xml += """
                    <vector id="v4f" type="ieee_single" count="4"/>
                    <vector id="v2d" type="ieee_double" count="2"/>
                    <vector id="v16i8" type="int8" count="16"/>
                    <vector id="v8i16" type="int16" count="8"/>
                    <vector id="v4i32" type="int32" count="4"/>
                    <vector id="v2i64" type="int64" count="2"/>
                    <union id="vec128">
                    <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
                    <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
                    <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
                    <field name="uint128" type="uint128"/>
                    </union>

                    """
                }
            }
            xml += "<reg name=\"\(reg.name)\" bitsize=\"\(reg.bits)\" type=\"\(reg.type)\" regnum=\"\(n)\"" + (reg.group.map { " group=\"\($0)\"" } ?? "") + "/>\n"
        }
        xml += "</feature>\n</target>\n"
        return xml
    }()

    public var general: Registers
    public var xstate: [UInt8]

    public init(general: Registers, xstate: [UInt8]) {
        self.general = general
        self.xstate = xstate.count >= 832 ? xstate : xstate + [UInt8](repeating: 0, count: 832 - xstate.count)
    }

    public static var count: Int { registers.count }

    /// Register `n`'s bytes, little-endian; nil for an unknown number.
    public func bytes(_ n: Int) -> [UInt8]? {
        guard n >= 0 && n < RegisterFile.registers.count else { return nil }
        let reg = RegisterFile.registers[n]
        let size = reg.bits / 8
        switch reg.source {
        case let .general(key):
            let v = general[keyPath: key]
            return (0..<size).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) }
        case let .xsave(offset):
            if offset >= 576 && !avxLive { return [UInt8](repeating: 0, count: size) }
            return Array(xstate[offset..<(offset + size)])
        case let .fpu(name):
            let v = fpu(name)
            return (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) }
        }
    }

    /// Sets register `n` from little-endian bytes; false for an unknown number or size.
    public mutating func set(_ n: Int, _ value: [UInt8]) -> Bool {
        guard n >= 0 && n < RegisterFile.registers.count else { return false }
        let reg = RegisterFile.registers[n]
        guard value.count == reg.bits / 8 else { return false }
        switch reg.source {
        case let .general(key):
            var v: UInt64 = 0
            for (i, b) in value.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
            general[keyPath: key] = v
        case let .xsave(offset):
            xstate.replaceSubrange(offset..<(offset + value.count), with: value)
            if offset >= 576 { setAvxLive() }
        case let .fpu(name):
            let v = value.enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
            setFPU(name, v)
        }
        return true
    }

    /// All registers, for the `g` packet.
    public var all: [UInt8] { (0..<RegisterFile.count).flatMap { bytes($0)! } }

    private var avxLive: Bool { xstate.count >= 832 && xstate[512] & 4 != 0 }
    private mutating func setAvxLive() { if xstate.count >= 520 { xstate[512] |= 4 } }

    private func u16(_ at: Int) -> UInt32 { UInt32(xstate[at]) | UInt32(xstate[at + 1]) << 8 }
    private func u32(_ at: Int) -> UInt32 { u16(at) | u16(at + 2) << 16 }

    /// x87 control registers as gdb wants them (a full tag word, 32-bit offsets).
    private func fpu(_ name: String) -> UInt32 {
        switch name {
        case "fctrl": return u16(0)
        case "fstat": return u16(2)
        case "ftag":
            // The XSAVE area keeps an abridged tag (a bit per register, 1 = in use).
            let abridged = xstate[4]
            var full: UInt32 = 0
            for i in 0..<8 where abridged & (1 << i) == 0 { full |= 3 << (2 * UInt32(i)) }
            return full
        case "fiseg", "foseg": return 0
        case "fioff": return u32(8)
        case "fooff": return u32(16)
        case "fop": return u16(6)
        default: return 0
        }
    }

    private mutating func setFPU(_ name: String, _ v: UInt32) {
        func put16(_ at: Int, _ x: UInt32) { xstate[at] = UInt8(x & 0xFF); xstate[at + 1] = UInt8((x >> 8) & 0xFF) }
        switch name {
        case "fctrl": put16(0, v)
        case "fstat": put16(2, v)
        case "ftag":
            var abridged: UInt8 = 0
            for i in 0..<8 where (v >> (2 * UInt32(i))) & 3 != 3 { abridged |= 1 << i }
            xstate[4] = abridged
        case "fioff": put16(8, v); put16(10, v >> 16)
        case "fooff": put16(16, v); put16(18, v >> 16)
        case "fop": put16(6, v)
        default: break
        }
    }
}
