// Stack unwinding and symbolization with libdwfl (elfutils). The thread callbacks let libdwfl
// unwind a process that exists only as an image: registers from the image, memory through
// the caller's reader, CFI and symbols from the ELF files the caller reports.
#define _GNU_SOURCE
#include "wb_symbols.h"
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <gelf.h>
#include <dwarf.h>
#include <stdlib.h>
#include <string.h>

struct wb_unwinder {
    Dwfl *dwfl;
    char *debug_path;
    Dwfl_Callbacks callbacks;
    const pid_t *tids;
    const uint64_t *registers;
    int count;
    wb_read_word_fn read;
    void *context;
    int attached;
};

wb_unwinder *wb_unwinder_new(const char *debug_path) {
    wb_unwinder *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->debug_path = strdup(debug_path ? debug_path : ":.debug:/usr/lib/debug");
    u->callbacks.find_elf = dwfl_build_id_find_elf;
    u->callbacks.find_debuginfo = dwfl_standard_find_debuginfo;
    u->callbacks.debuginfo_path = &u->debug_path;
    u->dwfl = dwfl_begin(&u->callbacks);
    if (!u->dwfl) { free(u->debug_path); free(u); return NULL; }
    dwfl_report_begin(u->dwfl);
    return u;
}

void wb_unwinder_free(wb_unwinder *u) {
    if (!u) return;
    dwfl_end(u->dwfl);
    free(u->debug_path);
    free(u);
}

int wb_unwinder_add_module(wb_unwinder *u, const char *name, const char *path, uint64_t base) {
    return dwfl_report_elf(u->dwfl, name, path, -1, base, false) ? 0 : -1;
}

int wb_unwinder_modules_done(wb_unwinder *u) {
    return dwfl_report_end(u->dwfl, NULL, NULL);
}

static bool memory_read(Dwfl *dwfl, Dwarf_Addr addr, Dwarf_Word *result, void *arg) {
    (void)dwfl;
    wb_unwinder *u = arg;
    uint64_t word;
    if (u->read(u->context, addr, &word) != 0) return false;
    *result = word;
    return true;
}

// libdwfl hands set_initial_registers only the thread argument, so that argument points
// at the thread's 17 registers.
static bool set_initial_registers(Dwfl_Thread *thread, void *thread_arg) {
    const uint64_t *regs = (const uint64_t *)thread_arg;
    Dwarf_Word words[17];
    for (int i = 0; i < 17; i++) words[i] = regs[i];
    if (!dwfl_thread_state_registers(thread, 0, 16, words)) return false;
    dwfl_thread_state_register_pc(thread, words[16]);
    return true;
}

static pid_t next_thread_regs(Dwfl *dwfl, void *arg, void **thread_argp) {
    wb_unwinder *u = arg;
    intptr_t i = 0;
    if (*thread_argp) i = ((const uint64_t *)*thread_argp - u->registers) / 17 + 1;
    (void)dwfl;
    if (i >= u->count) return 0;
    *thread_argp = (void *)(u->registers + i * 17);
    return u->tids[i];
}

static bool get_thread_regs(Dwfl *dwfl, pid_t tid, void *arg, void **thread_argp) {
    (void)dwfl;
    wb_unwinder *u = arg;
    for (int i = 0; i < u->count; i++)
        if (u->tids[i] == tid) { *thread_argp = (void *)(u->registers + i * 17); return true; }
    return false;
}

static const Dwfl_Thread_Callbacks thread_callbacks = {
    .next_thread = next_thread_regs,
    .get_thread = get_thread_regs,
    .memory_read = memory_read,
    .set_initial_registers = set_initial_registers,
};

int wb_unwinder_attach(wb_unwinder *u, pid_t pid, const pid_t *tids, const uint64_t *registers, int count,
                       wb_read_word_fn read, void *context) {
    u->tids = tids;
    u->registers = registers;
    u->count = count;
    u->read = read;
    u->context = context;
    // Attached once per process: later calls only bring new registers (the callbacks read them).
    if (u->attached) return 0;
    if (!dwfl_attach_state(u->dwfl, NULL, pid, &thread_callbacks, u)) return -1;
    u->attached = 1;
    return 0;
}

void wb_unwinder_symbolize(wb_unwinder *u, uint64_t pc, int exact, wb_frame *f) {
    memset(f, 0, sizeof *f);
    f->pc = pc;
    f->exact = exact;
    // A return address points after the call; the call itself is one byte back.
    Dwarf_Addr at = exact ? pc : pc - 1;
    Dwfl_Module *mod = dwfl_addrmodule(u->dwfl, at);
    if (!mod) return;
    // The name it was reported by (the path in the process), not the copy's file name.
    const char *mname = dwfl_module_info(mod, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    snprintf(f->module, sizeof f->module, "%s", mname ? mname : "");
    GElf_Off offset = 0;
    GElf_Sym sym;
    const char *name = dwfl_module_addrinfo(mod, at, &offset, &sym, NULL, NULL, NULL);
    if (name) {
        snprintf(f->function, sizeof f->function, "%s", name);
        f->function_offset = offset + (exact ? 0 : 1);
    } else {
        // No symbol covers it (a static function of a stripped file, whose .dynsym names
        // only the exported ones, and no .gnu_debugdata): the offset in the module instead,
        // which addr2line or objdump of the file (or its debug info) turns into a place.
        Dwarf_Addr start = 0;
        dwfl_module_info(mod, NULL, &start, NULL, NULL, NULL, NULL, NULL);
        f->function_offset = pc - start;
    }
    Dwfl_Line *line = dwfl_module_getsrc(mod, at);
    if (line) {
        int lineno = 0;
        const char *file = dwfl_lineinfo(line, NULL, &lineno, NULL, NULL, NULL);
        if (file) { snprintf(f->file, sizeof f->file, "%s", file); f->line = lineno; }
        return;
    }
    // Without .debug_aranges (clang omits it) libdwfl finds no compilation unit for the
    // address: look through the units' ranges directly.
    Dwarf_Addr bias = 0;
    Dwarf *dw = dwfl_module_getdwarf(mod, &bias);
    if (!dw) return;
    Dwarf_Off off = 0, next;
    size_t header;
    while (dwarf_nextcu(dw, off, &next, &header, NULL, NULL, NULL) == 0) {
        Dwarf_Die cu;
        if (dwarf_offdie(dw, off + header, &cu) && dwarf_haspc(&cu, at - bias) > 0) {
            Dwarf_Line *l = dwarf_getsrc_die(&cu, at - bias);
            int lineno = 0;
            const char *file = l ? dwarf_linesrc(l, NULL, NULL) : NULL;
            if (file && dwarf_lineno(l, &lineno) == 0) { snprintf(f->file, sizeof f->file, "%s", file); f->line = lineno; }
            return;
        }
        off = next;
    }
}

struct frames_arg { wb_unwinder *u; wb_frame *frames; int max; int count; };

static int frame_callback(Dwfl_Frame *state, void *arg) {
    struct frames_arg *a = arg;
    Dwarf_Addr pc;
    bool activation = false;
    if (!dwfl_frame_pc(state, &pc, &activation)) return DWARF_CB_ABORT;
    wb_unwinder_symbolize(a->u, pc, activation ? 1 : 0, &a->frames[a->count]);
    a->count++;
    return a->count < a->max ? DWARF_CB_OK : DWARF_CB_ABORT;
}

int wb_unwinder_backtrace(wb_unwinder *u, pid_t tid, wb_frame *frames, int max) {
    if (!u->attached || max <= 0) return -1;
    struct frames_arg a = { u, frames, max, 0 };
    int r = dwfl_getthread_frames(u->dwfl, tid, frame_callback, &a);
    if (r != 0 && a.count == 0) return -1;
    return a.count;
}

const char *wb_unwinder_error(void) { return dwfl_errmsg(-1); }

struct lookup_arg { const char *name; const char *module; uint64_t address, size; int found; };

static int lookup_module(Dwfl_Module *mod, void **userdata, const char *mname, Dwarf_Addr start, void *arg) {
    (void)userdata; (void)start;
    struct lookup_arg *a = arg;
    if (a->module && (!mname || !strstr(mname, a->module))) return DWARF_CB_OK;
    int n = dwfl_module_getsymtab(mod);
    for (int i = 0; i < n; i++) {
        GElf_Sym sym;
        GElf_Addr addr;
        const char *name = dwfl_module_getsym_info(mod, i, &sym, &addr, NULL, NULL, NULL);
        if (!name || sym.st_shndx == SHN_UNDEF) continue;
        int type = GELF_ST_TYPE(sym.st_info);
        if (type != STT_FUNC && type != STT_OBJECT && type != STT_GNU_IFUNC) continue;
        // Versioned names (memcmp@@GLIBC_2.2.5) match their plain name.
        size_t len = strlen(a->name);
        if (strncmp(name, a->name, len) == 0 && (name[len] == 0 || name[len] == '@')) {
            a->address = addr;
            a->size = sym.st_size;
            a->found = 1;
            return DWARF_CB_ABORT;
        }
    }
    return DWARF_CB_OK;
}

int wb_unwinder_lookup(wb_unwinder *u, const char *name, const char *module, uint64_t *address, uint64_t *size) {
    struct lookup_arg a = { name, module, 0, 0, 0 };
    dwfl_getmodules(u->dwfl, lookup_module, &a, 0);
    if (!a.found) return -1;
    *address = a.address;
    *size = a.size;
    return 0;
}
