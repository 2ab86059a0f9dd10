import CWBSymbols
import WBCore

/// What wb needs to know about machine code (capstone): where basic blocks start, and what
/// compare instructions compare.
public enum Disassembler {
    public enum Kind: Sendable { case other, jump, branch, call, ret, compare }

    public enum Operand: Sendable, Equatable {
        case none
        /// Index into struct user_regs_struct, width in bytes, bit shift (ah, bh, ...).
        case register(index: Int, size: Int, shift: Int)
        case immediate(Int64)
        /// base + index * scale + displacement; base -2 is rip-relative, -1 none.
        case memory(base: Int, index: Int, scale: Int, displacement: Int64)
    }

    public struct Instruction: Sendable {
        public var address: UInt64
        public var size: Int
        public var kind: Kind
        public var target: UInt64?
        public var width: Int
        public var operands: [Operand]
        public var next: UInt64 { address + UInt64(size) }
    }

    public static func disassemble(_ code: [UInt8], at address: UInt64) -> [Instruction] {
        guard !code.isEmpty else { return [] }
        var out = [wb_insn](repeating: wb_insn(), count: code.count)
        let n = code.withUnsafeBufferPointer { c in
            out.withUnsafeMutableBufferPointer { wb_disassemble(c.baseAddress, c.count, address, $0.baseAddress, $0.count) }
        }
        guard n > 0 else { return [] }
        return out.prefix(n).map { i in
            let kinds: [Int: Kind] = [WB_INSN_JUMP: .jump, WB_INSN_BRANCH: .branch, WB_INSN_CALL: .call,
                                      WB_INSN_RET: .ret, WB_INSN_CMP: .compare]
            let kind = kinds[Int(i.kind)] ?? .other
            var operands: [Operand] = []
            if kind == .compare { operands = [operand(i.ops.0), operand(i.ops.1)] }
            return Instruction(address: i.address, size: Int(i.size), kind: kind, target: i.target == 0 ? nil : i.target,
                               width: Int(i.width), operands: operands)
        }
    }

    static func operand(_ o: wb_operand) -> Operand {
        switch Int(o.type) {
        case WB_OP_REG: return .register(index: Int(o.reg), size: Int(o.reg_size), shift: Int(o.reg_shift))
        case WB_OP_IMM: return .immediate(o.imm)
        case WB_OP_MEM: return .memory(base: Int(o.base), index: Int(o.index), scale: Int(o.scale), displacement: o.disp)
        default: return .none
        }
    }

    /// Basic-block starts of a stretch of code: branch and call targets inside it, and the
    /// instruction after every jump, branch, call and return (plus `entries`).
    public static func blockStarts(_ instructions: [Instruction], entries: Set<UInt64> = []) -> [UInt64] {
        guard let first = instructions.first, let last = instructions.last else { return [] }
        let range = first.address..<last.next
        var starts = entries.filter { range.contains($0) }
        starts.insert(first.address)
        for i in instructions {
            switch i.kind {
            case .jump, .branch, .call, .ret:
                if let t = i.target, range.contains(t) { starts.insert(t) }
                starts.insert(i.next)
            default: break
            }
        }
        let valid = Set(instructions.map(\.address))
        return starts.filter { valid.contains($0) }.sorted()
    }
}

extension Backtracer {
    /// A symbol's run-time address and size, looked up by name (in `module` when given).
    public func lookup(_ name: String, module: String? = nil) -> (address: UInt64, size: UInt64)? {
        var address: UInt64 = 0, size: UInt64 = 0
        let found = module.map { m in m.withCString { wb_unwinder_lookup(unwinderHandle, name, $0, &address, &size) } }
            ?? wb_unwinder_lookup(unwinderHandle, name, nil, &address, &size)
        return found == 0 ? (address, size) : nil
    }
}
