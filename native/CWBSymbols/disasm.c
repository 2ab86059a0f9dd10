// Basic blocks and compare operands with capstone. Register operands are translated to
// offsets in struct user_regs_struct (wb_regs) so the controller can read them from a stopped
// thread.
#include "wb_disasm.h"
#include <capstone/capstone.h>
#include <string.h>

// wb_regs field order: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip ...
static int gpr(x86_reg r, int *size, int *shift) {
    *shift = 0;
    switch (r) {
#define R(full, d, w, b, idx) \
    case X86_REG_##full: *size = 8; return idx; \
    case X86_REG_##d: *size = 4; return idx; \
    case X86_REG_##w: *size = 2; return idx; \
    case X86_REG_##b: *size = 1; return idx;
    R(RAX, EAX, AX, AL, 10) R(RCX, ECX, CX, CL, 11) R(RDX, EDX, DX, DL, 12) R(RBX, EBX, BX, BL, 5)
    R(RSI, ESI, SI, SIL, 13) R(RDI, EDI, DI, DIL, 14) R(RBP, EBP, BP, BPL, 4) R(RSP, ESP, SP, SPL, 19)
    R(R8, R8D, R8W, R8B, 9) R(R9, R9D, R9W, R9B, 8) R(R10, R10D, R10W, R10B, 7) R(R11, R11D, R11W, R11B, 6)
    R(R12, R12D, R12W, R12B, 3) R(R13, R13D, R13W, R13B, 2) R(R14, R14D, R14W, R14B, 1) R(R15, R15D, R15W, R15B, 0)
#undef R
    case X86_REG_AH: *size = 1; *shift = 8; return 10;
    case X86_REG_CH: *size = 1; *shift = 8; return 11;
    case X86_REG_DH: *size = 1; *shift = 8; return 12;
    case X86_REG_BH: *size = 1; *shift = 8; return 5;
    case X86_REG_RIP: *size = 8; return -2;
    default: *size = 0; return -1;
    }
}

static void operand(const cs_x86_op *op, wb_operand *out) {
    memset(out, 0, sizeof *out);
    out->base = out->index = -1;
    int size, shift;
    switch (op->type) {
    case X86_OP_REG:
        out->reg = gpr(op->reg, &size, &shift);
        out->type = out->reg >= 0 ? WB_OP_REG : WB_OP_NONE;
        out->reg_size = size;
        out->reg_shift = shift;
        break;
    case X86_OP_IMM:
        out->type = WB_OP_IMM;
        out->imm = op->imm;
        break;
    case X86_OP_MEM:
        out->type = WB_OP_MEM;
        out->base = op->mem.base == X86_REG_INVALID ? -1 : gpr(op->mem.base, &size, &shift);
        out->index = op->mem.index == X86_REG_INVALID ? -1 : gpr(op->mem.index, &size, &shift);
        out->scale = op->mem.scale;
        out->disp = op->mem.disp;
        if (op->mem.segment != X86_REG_INVALID) out->type = WB_OP_NONE;   // fs:/gs: not followed
        break;
    default:
        out->type = WB_OP_NONE;
    }
}

long wb_disassemble(const uint8_t *code, size_t size, uint64_t address, wb_insn *out, size_t max) {
    csh h;
    if (cs_open(CS_ARCH_X86, CS_MODE_64, &h) != CS_ERR_OK) return -1;
    cs_option(h, CS_OPT_DETAIL, CS_OPT_ON);
    cs_option(h, CS_OPT_SKIPDATA, CS_OPT_ON);
    cs_insn *insn = cs_malloc(h);
    const uint8_t *p = code;
    size_t left = size;
    uint64_t at = address;
    size_t n = 0;
    while (n < max && cs_disasm_iter(h, &p, &left, &at, insn)) {
        wb_insn *o = &out[n];
        memset(o, 0, sizeof *o);
        o->address = insn->address;
        o->size = insn->size;
        if (insn->id == 0 || !insn->detail) { n++; continue; }   // skipped data
        const cs_detail *d = insn->detail;
        int jump = 0, call = 0, ret = 0;
        for (int g = 0; g < d->groups_count; g++) {
            if (d->groups[g] == X86_GRP_JUMP) jump = 1;
            if (d->groups[g] == X86_GRP_CALL) call = 1;
            if (d->groups[g] == X86_GRP_RET) ret = 1;
        }
        if (jump) o->kind = insn->id == X86_INS_JMP ? WB_INSN_JUMP : WB_INSN_BRANCH;
        else if (call) o->kind = WB_INSN_CALL;
        else if (ret) o->kind = WB_INSN_RET;
        else if (insn->id == X86_INS_CMP && d->x86.op_count == 2) {
            o->kind = WB_INSN_CMP;
            o->width = d->x86.operands[0].size;
            operand(&d->x86.operands[0], &o->ops[0]);
            operand(&d->x86.operands[1], &o->ops[1]);
        }
        if ((jump || call) && d->x86.op_count == 1 && d->x86.operands[0].type == X86_OP_IMM)
            o->target = (uint64_t)d->x86.operands[0].imm;
        n++;
    }
    cs_free(insn, 1);
    cs_close(&h);
    return (long)n;
}
