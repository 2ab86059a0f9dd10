// The restore stub and the code that starts it.
//
// The stub is the empty vessel a restored process is rebuilt in. It is a minimal static ELF
// executable (one PT_LOAD of a few bytes) generated here rather than linked by the build,
// because the package's linker driver adds the Swift runtime to every executable. Its code is
//
//     1: mov $SYS_pause, %eax
//        syscall
//        jmp 1b
//        int3
//
// so once it is running it sits in pause(2) forever, holds no libc state, and offers the
// controller a `syscall` instruction to inject remote syscalls through until the image's own
// mappings replace it. Everything else the process needs is set up from outside.
#define _GNU_SOURCE
#include "wb_native.h"
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STUB_LOAD 0x10000ULL
#define STUB_CODE_OFFSET (sizeof(Elf64_Ehdr) + 2 * sizeof(Elf64_Phdr))

static const uint8_t stub_code[] = {
    0xb8, SYS_pause, 0x00, 0x00, 0x00,   // mov $SYS_pause, %eax
    0x0f, 0x05,                          // syscall
    0xeb, 0xf7,                          // jmp back to the mov
    0xcc,                                // int3
};
_Static_assert(SYS_pause < 256, "pause fits one byte");

uint64_t wb_stub_syscall_address(void) { return STUB_LOAD + STUB_CODE_OFFSET + 5; }

size_t wb_stub_elf(uint8_t *buf, size_t cap) {
    size_t size = STUB_CODE_OFFSET + sizeof stub_code;
    if (cap < size) return 0;
    memset(buf, 0, size);
    Elf64_Ehdr *eh = (Elf64_Ehdr *)buf;
    memcpy(eh->e_ident, ELFMAG, SELFMAG);
    eh->e_ident[EI_CLASS] = ELFCLASS64;
    eh->e_ident[EI_DATA] = ELFDATA2LSB;
    eh->e_ident[EI_VERSION] = EV_CURRENT;
    eh->e_ident[EI_OSABI] = ELFOSABI_SYSV;
    eh->e_type = ET_EXEC;
    eh->e_machine = EM_X86_64;
    eh->e_version = EV_CURRENT;
    eh->e_entry = STUB_LOAD + STUB_CODE_OFFSET;
    eh->e_phoff = sizeof(Elf64_Ehdr);
    eh->e_ehsize = sizeof(Elf64_Ehdr);
    eh->e_phentsize = sizeof(Elf64_Phdr);
    eh->e_phnum = 2;
    Elf64_Phdr *load = (Elf64_Phdr *)(buf + sizeof(Elf64_Ehdr));
    load->p_type = PT_LOAD;
    load->p_flags = PF_R | PF_X;
    load->p_offset = 0;
    load->p_vaddr = load->p_paddr = STUB_LOAD;
    load->p_filesz = load->p_memsz = size;
    load->p_align = 0x1000;
    Elf64_Phdr *stack = load + 1;
    stack->p_type = PT_GNU_STACK;
    stack->p_flags = PF_R | PF_W;
    memcpy(buf + STUB_CODE_OFFSET, stub_code, sizeof stub_code);
    return size;
}

// MARK: - Spawning (runs in the forked child: raw syscalls only, no locks, no malloc)

static long raw_clone3(struct clone_args *args) {
    return syscall(SYS_clone3, args, sizeof *args);
}

static void report_and_exit(int pipe_w, int err) {
    int e = err;
    if (write(pipe_w, &e, sizeof e) < 0) { /* nothing more to do */ }
    syscall(SYS_exit_group, 127);
    __builtin_unreachable();
}

static int keeps(const wb_spawn_request *req, int fd, int extra1, int extra2) {
    if (fd == extra1 || fd == extra2) return 1;
    for (int i = 0; i < req->keep_count; i++) if (req->keep_fds[i] == fd) return 1;
    return 0;
}

/// In the stub-to-be: empty signal mask, default handlers, only the kept fds, then exec.
/// A new time namespace for the stub (unshare(CLONE_NEWTIME) moves the children, and since
/// Linux 5.16 the process itself at execve) whose offsets make CLOCK_MONOTONIC and
/// CLOCK_BOOTTIME read the image's values now. Where that fails (no CONFIG_TIME_NS, no
/// CAP_SYS_TIME) the stub goes on in this one: wb sees it and says so.
static void enter_time_namespace(const wb_spawn_request *req) {
    if (syscall(SYS_unshare, 0x80 /* CLONE_NEWTIME */) != 0) return;
    struct timespec mono, boot;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_BOOTTIME, &boot);
    int64_t dm = req->monotonic_ns - ((int64_t)mono.tv_sec * 1000000000 + mono.tv_nsec);
    int64_t db = req->boottime_ns - ((int64_t)boot.tv_sec * 1000000000 + boot.tv_nsec);
    // Seconds round down, nanoseconds 0-999999999.
    int64_t ms = dm >= 0 ? dm / 1000000000 : -((-dm + 999999999) / 1000000000);
    int64_t bs = db >= 0 ? db / 1000000000 : -((-db + 999999999) / 1000000000);
    char text[160];
    snprintf(text, sizeof text, "monotonic %lld %lld\nboottime %lld %lld\n", (long long)ms, (long long)(dm - ms * 1000000000),
             (long long)bs, (long long)(db - bs * 1000000000));
    int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    if (write(fd, text, strlen(text)) < 0) { /* wb reads the offsets back */ }
    close(fd);
}

static void become_stub(const wb_spawn_request *req, int pipe_w) {
    uint64_t empty = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, sizeof empty);
    int max = 0;
    for (int i = 0; i < req->keep_count; i++) if (req->keep_fds[i] > max) max = req->keep_fds[i];
    if (pipe_w > max) max = pipe_w;
    if (req->stub_fd > max) max = req->stub_fd;
    for (int fd = 0; fd <= max; fd++)
        if (!keeps(req, fd, pipe_w, req->stub_fd)) close(fd);
    syscall(SYS_close_range, max + 1, ~0U, 0);
    if (req->time_ns) enter_time_namespace(req);
    char *argv[] = { "wb-stub", NULL };
    char *envp[] = { NULL };
    syscall(SYS_execveat, req->stub_fd, "", argv, envp, AT_EMPTY_PATH);
    report_and_exit(pipe_w, errno);
}

/// The pid namespace's init: starts the stub with the wanted pid, then reaps until the stub
/// is gone and exits with its status (exit code, or 128 + signal).
static void become_init(const wb_spawn_request *req, int pipe_w, int sync_r) {
    if (req->new_userns) {
        char b;
        if (read(sync_r, &b, 1) != 1) report_and_exit(pipe_w, EPIPE);
    }
    close(sync_r);
    pid_t tid = req->set_tid;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    args.flags = CLONE_CLEAR_SIGHAND;
    if (tid > 1) { args.set_tid = (uint64_t)(uintptr_t)&tid; args.set_tid_size = 1; }
    long child = raw_clone3(&args);
    if (child < 0) report_and_exit(pipe_w, errno);
    if (child == 0) become_stub(req, pipe_w);
    syscall(SYS_close_range, 0, ~0U, 0);
    for (;;) {
        int status = 0;
        long r = syscall(SYS_wait4, -1, &status, __WALL, NULL);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) syscall(SYS_exit_group, 0);
        if (r == child) {
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            syscall(SYS_exit_group, code);
        }
    }
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    ssize_t n = write(fd, text, strlen(text));
    int e = n < 0 ? errno : 0;
    close(fd);
    return e;
}

int wb_spawn_stub(const wb_spawn_request *req, wb_spawn_result *res, const char **stage) {
    int status_pipe[2], sync_pipe[2] = { -1, -1 };
    res->stub = res->init_pid = 0;
    *stage = "pipe2";
    if (pipe2(status_pipe, O_CLOEXEC) != 0) return errno;
    if (req->new_userns && pipe2(sync_pipe, O_CLOEXEC) != 0) {
        int e = errno; close(status_pipe[0]); close(status_pipe[1]); return e;
    }

    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    args.flags = CLONE_CLEAR_SIGHAND;
    pid_t tid = req->set_tid;
    if (req->new_pidns) {
        args.flags |= CLONE_NEWPID | (req->new_userns ? CLONE_NEWUSER : 0);
    } else if (tid > 0) {
        args.set_tid = (uint64_t)(uintptr_t)&tid;
        args.set_tid_size = 1;
    }
    *stage = req->new_pidns ? "clone3(CLONE_NEWPID)" : (tid > 0 ? "clone3(set_tid)" : "clone3");
    long child = raw_clone3(&args);
    if (child < 0) {
        int e = errno;
        close(status_pipe[0]); close(status_pipe[1]);
        if (sync_pipe[0] >= 0) { close(sync_pipe[0]); close(sync_pipe[1]); }
        return e;
    }
    if (child == 0) {
        close(status_pipe[0]);
        if (req->new_pidns) {
            if (sync_pipe[1] >= 0) close(sync_pipe[1]);
            become_init(req, status_pipe[1], sync_pipe[0]);
        }
        become_stub(req, status_pipe[1]);
    }
    close(status_pipe[1]);
    if (req->new_userns) {
        char path[64], map[64];
        close(sync_pipe[0]);
        snprintf(path, sizeof path, "/proc/%ld/setgroups", child);
        write_file(path, "deny");
        snprintf(path, sizeof path, "/proc/%ld/uid_map", child);
        snprintf(map, sizeof map, "0 %u 1", (unsigned)req->outer_uid);
        int e1 = write_file(path, map);
        snprintf(path, sizeof path, "/proc/%ld/gid_map", child);
        snprintf(map, sizeof map, "0 %u 1", (unsigned)req->outer_gid);
        int e2 = write_file(path, map);
        char go = 1;
        if (write(sync_pipe[1], &go, 1) != 1) { /* init reports EPIPE */ }
        close(sync_pipe[1]);
        if (e1 || e2) { *stage = "writing uid_map/gid_map"; }
    }

    int err = 0;
    ssize_t n;
    do { n = read(status_pipe[0], &err, sizeof err); } while (n < 0 && errno == EINTR);
    close(status_pipe[0]);
    if (n == (ssize_t)sizeof err) {
        int st;
        waitpid((pid_t)child, &st, 0);
        *stage = req->new_pidns ? "starting the stub in the new pid namespace (clone3 set_tid or execveat)" : "execveat(stub)";
        return err ? err : EIO;
    }
    if (!req->new_pidns) {
        res->stub = (pid_t)child;
        return 0;
    }
    // The init's only child is the stub.
    res->init_pid = (pid_t)child;
    char path[96], buf[64];
    snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", child, child);
    *stage = "reading the stub's pid";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    close(fd);
    if (n <= 0) return n < 0 ? e : ESRCH;
    buf[n] = 0;
    long stub = 0;
    for (char *c = buf; *c >= '0' && *c <= '9'; c++) stub = stub * 10 + (*c - '0');
    if (stub <= 0) return ESRCH;
    res->stub = (pid_t)stub;
    return 0;
}

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

int wb_stub_fd(int *out) {
    uint8_t elf[512];
    size_t size = wb_stub_elf(elf, sizeof elf);
    int fd = memfd_create("wb-stub", MFD_CLOEXEC | MFD_EXEC);
    if (fd < 0 && errno == EINVAL) fd = memfd_create("wb-stub", MFD_CLOEXEC);
    if (fd < 0) {
        // No memfd exec here: an unlinked file in /tmp serves as well.
        char path[] = "/tmp/wb-stub-XXXXXX";
        fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0) return errno;
        unlink(path);
        fchmod(fd, 0700);
    }
    if (write(fd, elf, size) != (ssize_t)size) { int e = errno ? errno : EIO; close(fd); return e; }
    *out = fd;
    return 0;
}
