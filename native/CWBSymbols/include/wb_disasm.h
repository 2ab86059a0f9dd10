// wb_disasm.h — x86-64 disassembly with capstone, reduced to what coverage and comparison
// solving need: where basic blocks start, and what compare instructions compare.
#ifndef WB_DISASM_H
#define WB_DISASM_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { WB_INSN_OTHER = 0, WB_INSN_JUMP = 1, WB_INSN_BRANCH = 2, WB_INSN_CALL = 3, WB_INSN_RET = 4, WB_INSN_CMP = 5 };
enum { WB_OP_NONE = 0, WB_OP_REG = 1, WB_OP_IMM = 2, WB_OP_MEM = 3 };

typedef struct wb_operand {
    int type;
    /// For WB_OP_REG: index into wb_regs (0..26) and the register's width and bit shift.
    int reg, reg_size, reg_shift;
    int64_t imm;
    /// For WB_OP_MEM: base and index as wb_regs indexes (-1: none; -2: rip-relative).
    int base, index, scale;
    int64_t disp;
} wb_operand;

typedef struct wb_insn {
    uint64_t address;
    int size;
    int kind;
    /// Direct jump or call target (0 when indirect).
    uint64_t target;
    /// For WB_INSN_CMP: operand width in bytes and both operands.
    int width;
    wb_operand ops[2];
} wb_insn;

/// Disassembles `size` bytes of code loaded at `address` into `out` (at most `max`);
/// returns how many instructions, or -1 when capstone cannot start. Bytes that do not
/// decode are skipped.
long wb_disassemble(const uint8_t *code, size_t size, uint64_t address, wb_insn *out, size_t max);

#ifdef __cplusplus
}
#endif
#endif
