// wb_symbols.h — stack unwinding and symbolization with elfutils' libdwfl, for processes
// that need not exist: registers and memory come from the caller (an image, or a live
// process), ELF files from paths the caller reports. Used by WBSymbols only.
#ifndef WB_SYMBOLS_H
#define WB_SYMBOLS_H

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct wb_unwinder wb_unwinder;

typedef struct wb_frame {
    uint64_t pc;
    /// 1 when pc is the exact instruction (the innermost frame or a signal frame), 0 when it
    /// is a return address.
    int exact;
    char function[256];
    uint64_t function_offset;
    char module[512];
    char file[512];
    int line;
} wb_frame;

/// Reads one 64-bit word of the target's memory; returns 0 on success.
typedef int (*wb_read_word_fn)(void *context, uint64_t address, uint64_t *word);

/// An unwinder; `debug_path` is a colon-separated list of places for separate debug info
/// (build-id trees), or NULL for the default.
wb_unwinder *wb_unwinder_new(const char *debug_path);
void wb_unwinder_free(wb_unwinder *u);
/// Reports an ELF file mapped so that its file offset 0 is at `base`. Returns 0 or -1.
int wb_unwinder_add_module(wb_unwinder *u, const char *name, const char *path, uint64_t base);
/// Ends reporting modules.
int wb_unwinder_modules_done(wb_unwinder *u);
/// Sets the threads to unwind (17 DWARF registers each: rax rdx rcx rbx rsi rdi rbp rsp
/// r8-r15 rip) and how to read memory. Call once, after the modules.
int wb_unwinder_attach(wb_unwinder *u, pid_t pid, const pid_t *tids, const uint64_t *registers, int count,
                       wb_read_word_fn read, void *context);
/// Unwinds thread `tid` into `frames` (up to `max`); returns how many, or -1.
int wb_unwinder_backtrace(wb_unwinder *u, pid_t tid, wb_frame *frames, int max);
/// Names one address (function, module, file:line); `exact` as in wb_frame.
void wb_unwinder_symbolize(wb_unwinder *u, uint64_t pc, int exact, wb_frame *frame);
/// Finds a symbol by name in the reported modules (the first module with it, or only
/// `module` when given): its run-time address and size. Returns 0 or -1.
int wb_unwinder_lookup(wb_unwinder *u, const char *name, const char *module, uint64_t *address, uint64_t *size);

/// The last libdwfl error.
const char *wb_unwinder_error(void);

#ifdef __cplusplus
}
#endif
#endif
