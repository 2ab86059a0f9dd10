// wb_native.h — the C floor under wb's Swift modules.
//
// Swift cannot call variadic C functions (ptrace, ioctl, fcntl, prctl, syscall) nor use
// macros (W*, CPU_*), and some calls need raw syscalls glibc does not wrap (clone3,
// get_robust_list, pidfd_*). Each wrapper here pins one call to one signature and returns
// 0 or an errno value, with data through out-parameters, so data and error never collide.
// Only WBSystem and WBTrace import this module.
#ifndef WB_NATIVE_H
#define WB_NATIVE_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

// MARK: - Registers (mirror of struct user_regs_struct from <sys/user.h>, checked in ptrace.c)

typedef struct wb_regs {
    uint64_t r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8;
    uint64_t rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss;
    uint64_t fs_base, gs_base, ds, es, fs, gs;
} wb_regs;

// MARK: - ptrace (variadic in glibc)

/// ptrace(request, pid, addr, data). Returns 0 or errno; `result` (may be NULL) receives the
/// call's return value, which for PTRACE_PEEK* requests is the data word.
int wb_ptrace(long request, pid_t pid, uint64_t addr, uint64_t data, long *result);
int wb_ptrace_getregs(pid_t tid, wb_regs *regs);
int wb_ptrace_setregs(pid_t tid, const wb_regs *regs);
/// PTRACE_GETREGSET/SETREGSET with an iovec; `len` is in/out for GET.
int wb_ptrace_getregset(pid_t tid, int note, void *buf, size_t *len);
int wb_ptrace_setregset(pid_t tid, int note, const void *buf, size_t len);
int wb_ptrace_getsigmask(pid_t tid, uint64_t *mask);
int wb_ptrace_setsigmask(pid_t tid, uint64_t mask);
/// PTRACE_PEEKSIGINFO: copies up to `max` 128-byte siginfo records starting at `offset`.
/// `shared` selects the process-wide queue. `count` receives how many were copied.
int wb_ptrace_peeksiginfo(pid_t tid, int shared, uint64_t offset, void *buf, int max, int *count);
int wb_ptrace_getsiginfo(pid_t tid, void *siginfo128);

typedef struct wb_rseq_config {
    uint64_t rseq_abi_pointer;
    uint32_t rseq_abi_size;
    uint32_t signature;
    uint32_t flags;
    uint32_t pad;
} wb_rseq_config;
int wb_ptrace_get_rseq_config(pid_t tid, wb_rseq_config *config);

// ptrace constants Swift cannot see as macros in every libc header set.
enum {
    WB_PTRACE_CONT = 7,
    WB_PTRACE_SINGLESTEP = 9,
    WB_PTRACE_SYSCALL = 24,
    WB_PTRACE_O_TRACESYSGOOD = 0x00000001,
    WB_PTRACE_O_TRACEFORK = 0x00000002,
    WB_PTRACE_O_TRACEVFORK = 0x00000004,
    WB_PTRACE_O_TRACEEXIT = 0x00000040,
    WB_PTRACE_EVENT_EXIT = 6,
    WB_PTRACE_DETACH = 17,
    WB_PTRACE_GETEVENTMSG = 0x4201,
    WB_PTRACE_GETSIGINFO = 0x4202,
    WB_PTRACE_SETSIGINFO = 0x4203,
    WB_PTRACE_SEIZE = 0x4206,
    WB_PTRACE_INTERRUPT = 0x4207,
    WB_PTRACE_LISTEN = 0x4208,
    WB_PTRACE_O_TRACECLONE = 0x00000008,
    WB_PTRACE_O_TRACEEXEC = 0x00000010,
    WB_PTRACE_O_EXITKILL = 0x00100000,
    WB_PTRACE_EVENT_CLONE = 3,
    WB_PTRACE_EVENT_EXEC = 4,
    WB_PTRACE_EVENT_STOP = 128,
    WB_PTRACE_EVENT_SECCOMP = 7,
    WB_PTRACE_O_TRACESECCOMP = 0x00000080,
    WB_PTRACE_SETOPTIONS = 0x4200,
    WB_PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG = 0x4210,
    WB_PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG = 0x4211,
    WB_NT_PRSTATUS = 1,
    WB_NT_X86_XSTATE = 0x202,
};

// MARK: - wait (macros in glibc)

/// waitpid with __WALL added; returns 0 or errno, the waited pid in `waited`.
int wb_waitpid(pid_t pid, int *status, int options, pid_t *waited);
int wb_wifexited(int status);
int wb_wexitstatus(int status);
int wb_wifsignaled(int status);
int wb_wtermsig(int status);
int wb_wifstopped(int status);
int wb_wstopsig(int status);
/// The PTRACE_EVENT_* number of a ptrace stop (status >> 16), 0 for none.
int wb_wptrace_event(int status);
/// Waits up to `timeout_ms` for any traced thread or child to change state (waitpid with
/// WNOHANG between sigtimedwait on SIGCHLD, blocked in the calling thread meanwhile; other
/// threads should block it too). Returns 0 with `pid` and `status` set, ETIMEDOUT, or an errno.
int wb_wait_any(int timeout_ms, pid_t *pid, int *status);
/// `wb_wait_any` with a timeout in microseconds.
int wb_wait_any_us(long timeout_us, pid_t *pid, int *status);
/// Waits up to `timeout_ms` for thread `tid` to stop or exit (as `wb_wait_any`): 0, ETIMEDOUT
/// or the errno of waitpid.
int wb_wait_tid(pid_t tid, int timeout_ms, int *status);
/// Pins a thread or process to one CPU (sched_setaffinity).
int wb_pin_cpu(pid_t pid, int cpu);
enum { WB_WNOHANG = 1, WB_WALL = 0x40000000 };

// MARK: - Raw syscalls and variadic calls

int wb_get_robust_list(pid_t tid, uint64_t *head, uint64_t *len);
int wb_prlimit(pid_t pid, int resource, const uint64_t *new_cur_max, uint64_t *old_cur_max);
int wb_tgkill(pid_t tgid, pid_t tid, int sig);
int wb_pipe2(int fds[2], int flags);
/// statfs(2)'s f_type: the magic number of the filesystem holding `path`.
int wb_filesystem_magic(const char *path, uint64_t *magic);
/// keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): the caller's session keyring.
int wb_session_keyring(int32_t *id);
/// prctl(PR_SET_PDEATHSIG, sig): `sig` arrives when the parent dies.
int wb_set_parent_death_signal(int sig);
int wb_fcntl_int(int fd, int cmd, int arg, int *result);
int wb_process_vm_readv(pid_t pid, void *local, uint64_t remote, size_t len, size_t *done);
int wb_process_vm_writev(pid_t pid, const void *local, uint64_t remote, size_t len, size_t *done);
/// Gather/scatter forms for many pages at once: `remote` holds `count` (address, length) pairs.
int wb_process_vm_readv_many(pid_t pid, void *local, const uint64_t *remote, int count, size_t *done);
int wb_process_vm_writev_many(pid_t pid, const void *local, const uint64_t *remote, int count, size_t *done);
int wb_process_vm_writev_scatter(pid_t pid, const uint64_t *triples, int count, size_t *done);
/// pwrite of `count` buffers, `triples` holding (address, length, file offset) for each, on up
/// to `threads` threads (the caller's and helpers) so that they are in flight together.
/// Returns 0 or the first errno.
int wb_pwrite_many(int fd, const uint64_t *triples, int count, int threads);
/// semctl(GETPID): the pid of the last semop on semaphore `semnum` of set `semid`, or -1.
int wb_semctl_getpid(int semid, int semnum);
/// tee(2): duplicate up to `len` bytes from pipe `in` into pipe `out` without consuming them.
int wb_tee(int in, int out, size_t len, unsigned flags, ssize_t *copied);
/// Block (or unblock) signals in the calling thread.
int wb_sigmask_block_all_except(const int *keep, int count, uint64_t *old_mask);
int wb_sigmask_set(uint64_t mask);
/// sigwaitinfo over a mask; returns the signal and the sender's si_code / si_pid.
int wb_sigwaitinfo(uint64_t mask, int *sig, int *code, pid_t *sender);
/// sched_getaffinity (`set` 0) or sched_setaffinity of one thread, `mask` holding `words`
/// 64-bit words (bit n for CPU n); 0 or -errno.
int wb_affinity(pid_t tid, int set, uint64_t *mask, int words);
/// ioprio_get (`set` 0: returns the I/O priority) or ioprio_set (to `value`: returns 0) of
/// one thread; -errno on failure.
int wb_ioprio(pid_t tid, int set, int value);
/// /proc/PID/fdinfo/FD's position and flags (octal, with O_CLOEXEC from the fd table);
/// `more` is set when it holds anything besides them, mnt_id and ino (locks, an epoll's
/// watches, an eventfd's count...), which the caller then reads whole. 0 or -errno.
int wb_fdinfo_basic(pid_t pid, int fd, uint64_t *pos, int *flags, int *more);
/// Reads this CPU's XCR0 (the enabled XSAVE features).
uint64_t wb_xgetbv0(void);
/// CPUID leaf/subleaf.
void wb_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);

/// openat2(2), which glibc does not wrap: `how` is struct open_how {flags, mode, resolve}
/// (checked against <linux/openat2.h> in sys.c). The new fd goes to `fd`.
int wb_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve, int *fd);
// RESOLVE_* from <linux/openat2.h>, and O_PATH, which Swift's Glibc does not show (_GNU_SOURCE).
enum {
    WB_RESOLVE_NO_XDEV = 0x01,
    WB_RESOLVE_NO_MAGICLINKS = 0x02,
    WB_RESOLVE_NO_SYMLINKS = 0x04,
    WB_RESOLVE_BENEATH = 0x08,
    WB_O_PATH = 010000000,
};

// MARK: - Dirty-page tracking (userfaultfd write-protect in async mode, PAGEMAP_SCAN)

// MARK: - Process trees

/// kcmp(KCMP_FILE): 0 when the two fds share an open file description, 1 or 2 when not
/// (an order), -errno on failure.
int wb_kcmp_file(pid_t pid1, pid_t pid2, int fd1, int fd2);
/// kcmp(KCMP_EPOLL_TFD): 0 when fd `fd` of `pid` is the open file description epoll fd
/// `epfd` watches as its fd number `tfd` (the watch may outlive that fd), else 1, 2 or -errno.
int wb_kcmp_epoll_target(pid_t pid, int fd, int epfd, int tfd);
/// kcmp(KCMP_VM): 0 when the two processes share one address space (a vfork child and its
/// parent), 1 or 2 when not, -errno on failure.
int wb_kcmp_vm(pid_t pid1, pid_t pid2);

/// 0 when the two processes share one fd table (`files` true: KCMP_FILES) or one working
/// directory, root and umask (`files` false: KCMP_FS); 1 or 2 when not; -errno on failure.
int wb_kcmp_tables(pid_t pid1, pid_t pid2, int files);

// MARK: - Pseudo-terminals

typedef struct {
    int32_t index;          // the pair's number: /dev/pts/INDEX
    int32_t locked;         // TIOCGPTLCK: the terminal side may not be opened yet
    int32_t packet;         // TIOCGPKT
    int32_t readable;       // bytes the terminal side wrote that the master has not read
    uint8_t termios[36];    // the terminal side's struct termios as the kernel keeps it (TCGETS)
    uint16_t winsize[4];    // rows, columns, x and y pixels
} wb_pty_state;

/// The state of a pseudo-terminal pair, read through a copy of its master's fd; -errno
/// when it is not one.
int wb_pty_read(int master, wb_pty_state *out);
/// Gives a pair (through a copy of its master) the terminal settings, window size and
/// packet mode of `state`, locked or not as `lock` says; -errno on failure.
int wb_pty_apply(int master, const wb_pty_state *state, int lock);
/// Locks or unlocks the terminal side of a pair (TIOCSPTLCK); -errno on failure.
int wb_pty_lock(int master, int lock);
/// Bytes waiting to be read on a terminal fd (FIONREAD), or -errno.
int wb_tty_readable(int fd);

typedef struct {
    uint64_t inode;
    uint64_t peer;
    uint32_t queued;        // listener: connections waiting to be accepted; else bytes to read
    uint32_t backlog;       // listener: its backlog
    uint8_t type;
    uint8_t state;
    uint8_t shutdown;       // 1 reading, 2 writing
} wb_unix_socket;

/// Every Unix socket of this network namespace with its peer (sock_diag). Writes up to
/// `cap` entries, and the number there are to `count`.
int wb_unix_sockets(wb_unix_socket *out, int cap, int *count);
/// The bytes queued for reading on a socket, copied without taking them (MSG_PEEK).
int wb_socket_peek(int fd, void *buf, size_t cap, size_t *got);

/// pidfd_open + pidfd_getfd: a copy of fd `target_fd` of process `pid`.
int wb_take_fd(pid_t pid, int target_fd, int *fd);
/// open_by_handle_at(mount_fd, handle, O_PATH): the file a handle (of `type`, `len` bytes at
/// `bytes`, as fdinfo shows an inotify watch's) names, on the filesystem `mount_fd` is on.
/// Needs CAP_DAC_READ_SEARCH. 0 or an errno.
int wb_open_by_handle(int mount_fd, int type, const uint8_t *bytes, unsigned len, int *fd);
/* Sends fd over the Unix socket sock (SCM_RIGHTS, one byte of data); 0 or an errno. */
int wb_send_fd(int sock, int fd);
/// pidfd_open(pid) with close-on-exec; 0 or an errno.
int wb_pidfd_open(pid_t pid, int *fd);
/// pidfd_getfd(pidfd, target_fd): a copy of another process's fd (close-on-exec); 0 or an errno.
int wb_pidfd_getfd(int pidfd, int target_fd, int *fd);
/// UFFDIO_API asking for async write-protect and remove events; returns the features granted.
int wb_uffd_api_wp_async(int uffd, uint64_t *features);
/// Starts a thread that reads the userfaultfd's events as they come (a process's
/// MADV_DONTNEED waits until its event is read) and keeps the removed ranges.
void *wb_uffd_events_start(int uffd);
/// Takes up to `max` removed ranges (start, end pairs into `ranges`); returns how many.
int wb_uffd_events_take(void *events, uint64_t *ranges, int max);
/// Stops the event thread.
void wb_uffd_events_stop(void *events);
int wb_uffd_register_wp(int uffd, uint64_t start, uint64_t len);
int wb_uffd_unregister(int uffd, uint64_t start, uint64_t len);
/// UFFDIO_WRITEPROTECT: protect (1) or unprotect (0) a range.
int wb_uffd_writeprotect(int uffd, uint64_t start, uint64_t len, int protect);

typedef struct wb_page_region { uint64_t start, end, categories; } wb_page_region;
enum {
    WB_PAGE_IS_WPALLOWED = 1 << 0, WB_PAGE_IS_WRITTEN = 1 << 1, WB_PAGE_IS_FILE = 1 << 2,
    WB_PAGE_IS_PRESENT = 1 << 3, WB_PAGE_IS_SWAPPED = 1 << 4, WB_PAGE_IS_PFNZERO = 1 << 5,
    // A guard marker (madvise MADV_GUARD_INSTALL): no page, a read or write faults. The
    // kernel reports it SWAPPED as well; Linux 6.14+ knows the bit, older kernels refuse it
    // with EINVAL.
    WB_PAGE_IS_GUARD = 1 << 8,
    WB_PM_SCAN_WP_MATCHING = 1 << 0, WB_PM_SCAN_CHECK_WPASYNC = 1 << 1,
};
/// PAGEMAP_SCAN on an open /proc/PID/pagemap (Linux 6.7+; the ioctl is defined here because
/// Debian's headers predate it). Fills up to `capacity` regions; `walk_end` tells where the
/// scan stopped (the end of the range when it covered it all).
int wb_pagemap_scan(int pagemap_fd, uint64_t start, uint64_t end, uint64_t flags,
                    uint64_t category_mask, uint64_t anyof_mask, uint64_t return_mask,
                    wb_page_region *regions, uint64_t capacity, uint64_t *count, uint64_t *walk_end);

// MARK: - Starting ordinary programs

/// fork + execve with stdin/stdout/stderr taken from `fd0..fd2` (-1: /dev/null), every
/// other fd closed, signal mask empty and dispositions default. Returns 0 or errno.
// Starts a program held before exec: the child waits until `wb_spawn_release`, so that it can
// be seized first; then installs the seccomp filter (`filter_len` sock_filter entries, none
// if 0) and execs. `release_fd` and `status_fd` are for wb_spawn_release.
int wb_spawn_held(const char *path, char *const argv[], char *const envp[], int fd0, int fd1, int fd2,
                  const void *filter, int filter_len, pid_t *pid, int *release_fd, int *status_fd);
// Lets a held child go on to exec; returns the errno its exec failed with, 0 if it ran.
int wb_spawn_release(int release_fd, int status_fd);
int wb_spawn_process(const char *path, char *const argv[], char *const envp[], int fd0, int fd1, int fd2, pid_t *pid);

// MARK: - Memory helpers

/// True when `len` bytes at `p` are all zero.
int wb_is_zero(const void *p, size_t len);
/// mmap of a file for reading (PROT_READ, MAP_SHARED); returns 0 or errno.
int wb_map_file(int fd, uint64_t offset, size_t len, int writable, void **out);
int wb_unmap(void *p, size_t len);
/// madvise wrapper (MADV_SEQUENTIAL etc. by number).
int wb_madvise(void *p, size_t len, int advice);

// MARK: - Hashing (xxHash, compiled in from the system's xxhash.h)

uint64_t wb_hash64(const void *p, size_t len, uint64_t seed);
/// XXH3-64 of each 4096-byte page of `p` into `out[pages]`.
void wb_page_hashes(const void *p, size_t pages, uint64_t *out);
typedef struct wb_hash128 { uint64_t low, high; } wb_hash128;
wb_hash128 wb_hash128_of(const void *p, size_t len);
/// Streaming 64-bit hash: an opaque state allocated by wb_hash_stream_new.
void *wb_hash_stream_new(void);
void wb_hash_stream_update(void *state, const void *p, size_t len);
uint64_t wb_hash_stream_digest(void *state);
void wb_hash_stream_free(void *state);
/// Streaming 128-bit hash (content addresses of embedded files).
void *wb_hash128_stream_new(void);
void wb_hash128_stream_update(void *state, const void *p, size_t len);
wb_hash128 wb_hash128_stream_digest(void *state);
void wb_hash128_stream_free(void *state);

// MARK: - The restore stub and spawning it

/// The restore stub is a minimal static ELF executable made of one page of code that loops
/// on pause(2). `wb restore` execs it in a fresh task with the pid the image needs, seizes it
/// and builds the process inside it with remote syscalls. Its code offers the controller a
/// `syscall` instruction to inject through until the image's own mappings are in place.
/// Writes the ELF into `buf` (capacity `cap`), returns its size or 0 if `cap` is too small.
size_t wb_stub_elf(uint8_t *buf, size_t cap);
/// Creates an executable fd (a memfd) holding the stub ELF.
int wb_stub_fd(int *fd);
/// The address of the stub's `syscall` instruction once it runs.
uint64_t wb_stub_syscall_address(void);

typedef struct wb_spawn_request {
    int stub_fd;            // an fd holding the stub ELF (memfd or file), executed with execveat
    pid_t set_tid;          // the pid the stub must get (0: any)
    int new_pidns;          // 1: the stub runs in a new pid namespace under a small init
    int new_userns;         // 1: also a new user namespace (unprivileged restore)
    uid_t outer_uid;        // with new_userns: the ids to map to 0 inside
    gid_t outer_gid;
    const int *keep_fds;    // fds the stub keeps (at the same numbers); all others are closed
    int keep_count;
    int time_ns;            // 1: the stub runs in a new time namespace whose CLOCK_MONOTONIC
    int64_t monotonic_ns;   // and CLOCK_BOOTTIME read these values (nanoseconds) as it starts
    int64_t boottime_ns;
} wb_spawn_request;

typedef struct wb_spawn_result {
    pid_t stub;             // the stub's pid as seen from the caller's pid namespace
    pid_t init_pid;         // the namespace init (new_pidns), else 0
} wb_spawn_result;

/// Starts the stub. Returns 0 or an errno; `stage` names the step that failed
/// ("clone3", "execveat", ...).
int wb_spawn_stub(const wb_spawn_request *req, wb_spawn_result *res, const char **stage);

/// The pid namespace init's wait status for the stub, encoded as exit code 0-255 or
/// 128+signal, is also its own exit code.

#ifdef __cplusplus
}
#endif
#endif
