// harness-security MODE [ARG]
//
// Sets up one kind of security state (run as root), prints "READY pid=N ..." and answers each
// SIGUSR1 with "VERIFY OK pid=N" or "VERIFY BAD <what differs>; <...>" after reading all of it
// back. Raw syscalls and prctl only: no libcap.
//
//   caps      One worker thread. Both threads drop CAP_SYS_MODULE and CAP_SYS_BOOT from the
//             bounding set (the worker also CAP_SYS_RAWIO) and set securebits
//             NO_SETUID_FIXUP | KEEP_CAPS (the worker also NO_CAP_AMBIENT_RAISE) while root;
//             then setgroups {0,4,27,1234}, setresgid 1001/1001/1003, setresuid
//             1001/1001/1002, setfsgid 1003 and setfsuid 1002 (in each thread: glibc does not
//             broadcast the fs ids), and capset: permitted {CHOWN, NET_BIND_SERVICE},
//             inheritable {NET_BIND_SERVICE}, effective {NET_BIND_SERVICE} in the main thread
//             and {} in the worker; the main thread raises NET_BIND_SERVICE ambient. Capability
//             sets and securebits are per thread in the kernel, so the two threads differ on
//             purpose. Verify reads, in each thread, capget, PR_CAPBSET_READ,
//             PR_CAP_AMBIENT_IS_SET, PR_GET_SECUREBITS, getresuid/getresgid, the fs ids and
//             getgroups, plus /proc/self/task/TID/status (CapInh/CapPrm/CapEff/CapBnd/CapAmb,
//             Uid, Gid, Groups, NoNewPrivs, Seccomp) and PR_GET_DUMPABLE (0 after the switch,
//             as the kernel leaves it: a restored process must not be dumpable either).
//             READY: worker=TID dumpable=D.
//   seccomp   Two worker threads; no_new_privs set in the main thread; filter A installed with
//             SECCOMP_FILTER_FLAG_TSYNC (every thread; it also carries no_new_privs to the
//             workers): getcpu fails with ENOTBLK. Then filter B in worker 1 only: getcpu fails
//             with EXDEV, sysinfo with ETXTBSY. For one syscall and equal actions the newest
//             filter's errno wins, so worker 1's getcpu tells whether the two filters came back
//             in their order. Verify, in each thread: getcpu's and sysinfo's errnos (sysinfo
//             works in the main thread and worker 0), getpid works, PR_GET_SECCOMP == 2 and
//             PR_GET_NO_NEW_PRIVS == 1; and /proc/self/task/TID/status NoNewPrivs 1,
//             Seccomp 2, Seccomp_filters 1, 1, 2. READY: workers=T0,T1.
//             The syscalls: neither glibc (on the paths this program takes) nor wb (checkpoint
//             or restore, in the target) makes getcpu or sysinfo. glibc's sched_getcpu reads
//             the rseq area or calls the vDSO (no syscall, so no filter) and only
//             sysconf(_SC_PHYS_PAGES) and the like call sysinfo; the program calls both
//             through syscall(2) directly.
//   chroot DIR  chroot(DIR), chdir("/"), an fd open on /marker (a file the caller put in DIR;
//             nothing is loaded after the chroot). Verify: stat("/") and stat("/..") are
//             DIR's device and inode as recorded before the chroot, getcwd is "/", /marker
//             reads the bytes read at set-up, and the fd is that same file at offset 0.
//             READY: root=DEV:INO fd=F.
//   loginuid  Writes 4242 to /proc/self/loginuid (needs CAP_AUDIT_CONTROL); verify reads it
//             back. If the write is refused: "READY pid=N skip=loginuid reason=..." and every
//             verify answers "VERIFY OK skipped".
//   strict    A worker thread, all signals blocked, enters seccomp strict mode and then only
//             read()s one byte at a time from a pipe and write()s it back plus one on another.
//             Verify: the byte comes back within 5 s and its status says Seccomp 1.
//             READY: strict=TID.
//   file PATH  Opens PATH O_RDWR and holds it (run it as another user, e.g. under setpriv).
//             Verify: the fd is still that file (device, inode), O_RDWR, with the same first
//             bytes, and the user and group ids are as they were. READY: fd=F uid=U gid=G.
#define _GNU_SOURCE
#include "harness.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static char failures[8192];
static int failures_dropped;

static void failed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void failed(const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (strlen(failures) + strlen(what) + 3 < sizeof failures) {
        if (failures[0]) strcat(failures, "; ");
        strcat(failures, what);
    } else {
        failures_dropped++;
    }
}

static void report(void) {
    if (failures_dropped) harness_say("VERIFY BAD %s; and %d more", failures, failures_dropped);
    else if (failures[0]) harness_say("VERIFY BAD %s", failures);
    else harness_say("VERIFY OK pid=%d", getpid());
}

// MARK: Worker threads

// A worker runs jobs the main thread hands it, one at a time, through a pair of pipes, so
// that per-thread state (capabilities, securebits, seccomp filters) is set and read by the
// thread it belongs to. All signals are blocked in workers; glibc's setxid broadcast signal
// cannot be blocked and restarts the read.
struct worker {
    int index;
    pid_t tid;
    int cmd[2], done[2];
    void (*job)(struct worker *);
    // Results a job leaves for the main thread.
    char result[512];
};

#define WORKERS 2
static struct worker workers[WORKERS];
static int nworkers;

static void *worker_main(void *arg) {
    struct worker *w = arg;
    w->tid = (pid_t)syscall(SYS_gettid);
    if (write(w->done[1], "r", 1) != 1) return NULL;
    for (;;) {
        char c;
        ssize_t n = read(w->cmd[0], &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n != 1) return NULL;
        w->job(w);
        if (write(w->done[1], "d", 1) != 1) return NULL;
    }
}

// Reads one byte from `fd` within `ms` milliseconds.
static int await_byte(int fd, int ms, char *out) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r;
    do r = poll(&p, 1, ms); while (r < 0 && errno == EINTR);
    if (r != 1) return -1;
    ssize_t n;
    do n = read(fd, out, 1); while (n < 0 && errno == EINTR);
    return n == 1 ? 0 : -1;
}

static void start_workers(int n) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (int i = 0; i < n; i++) {
        struct worker *w = &workers[i];
        w->index = i;
        harness_require(pipe(w->cmd) == 0 && pipe(w->done) == 0, "pipe");
        pthread_t th;
        harness_require(pthread_create(&th, NULL, worker_main, w) == 0, "pthread_create");
        char c;
        harness_require(await_byte(w->done[0], 10000, &c) == 0, "worker start");
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    nworkers = n;
}

// Runs `job` in worker `w` and waits for it (5 s; a worker that does not answer is reported).
static int run_in(struct worker *w, void (*job)(struct worker *)) {
    w->job = job;
    w->result[0] = 0;
    if (write(w->cmd[1], "j", 1) != 1) return -1;
    char c;
    return await_byte(w->done[0], 5000, &c);
}

// MARK: /proc

// The value of `key` in /proc/self/task/TID/status (tabs between fields kept), or "".
static void task_status(pid_t tid, const char *key, char *out, size_t size) {
    out[0] = 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
    FILE *f = fopen(path, "r");
    if (!f) { snprintf(out, size, "(no %s)", path); return; }
    char line[512];
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) != 0 || line[klen] != ':') continue;
        char *v = line + klen + 1;
        while (*v == '\t' || *v == ' ') v++;
        size_t len = strcspn(v, "\n");
        while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t')) len--;
        v[len] = 0;
        snprintf(out, size, "%s", v);
        break;
    }
    fclose(f);
}

static void expect_status(const char *who, pid_t tid, const char *key, const char *want) {
    char got[256];
    task_status(tid, key, got, sizeof got);
    if (strcmp(got, want) != 0) failed("%s status %s is '%s', want '%s'", who, key, got, want);
}

// The tasks of this process, sorted; returns how many (-1 without /proc).
static int tasks(pid_t *out, int max) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max)
        if (e->d_name[0] != '.') out[n++] = atoi(e->d_name);
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && out[k - 1] > out[k]; k--) { pid_t t = out[k]; out[k] = out[k - 1]; out[k - 1] = t; }
    return n;
}

static void expect_tasks(void) {
    pid_t t[64];
    int n = tasks(t, 64);
    if (n != 1 + nworkers) failed("%d threads, want %d", n, 1 + nworkers);
}

// MARK: caps

#define BIT(c) (1ULL << (c))
static int last_cap;

struct creds {
    uint64_t inh, prm, eff, bnd, amb;
    int securebits;
    uid_t uid[4];
    gid_t gid[4];
    int ngroups;
    gid_t groups[16];
};

static struct creds want_caps[1 + WORKERS];
static int want_dumpable;
static const gid_t caps_groups[] = { 0, 4, 27, 1234 };

static void cap_get(pid_t tid, uint64_t *inh, uint64_t *prm, uint64_t *eff) {
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, tid };
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capget, &h, d) != 0) { *inh = *prm = *eff = ~0ULL; return; }
    *inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
    *prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
    *eff = d[0].effective | (uint64_t)d[1].effective << 32;
}

static int cap_set(uint64_t inh, uint64_t prm, uint64_t eff) {
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2] = {
        { (uint32_t)eff, (uint32_t)prm, (uint32_t)inh },
        { (uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32) },
    };
    return (int)syscall(SYS_capset, &h, d);
}

// This thread's credentials as it sees them itself.
static void read_own_creds(struct creds *c) {
    memset(c, 0, sizeof *c);
    cap_get(0, &c->inh, &c->prm, &c->eff);
    for (int cap = 0; cap <= last_cap; cap++) {
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1) c->bnd |= BIT(cap);
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1) c->amb |= BIT(cap);
    }
    c->securebits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
    getresuid(&c->uid[0], &c->uid[1], &c->uid[2]);
    getresgid(&c->gid[0], &c->gid[1], &c->gid[2]);
    // An invalid id changes nothing and returns the current one.
    c->uid[3] = (uid_t)setfsuid((uid_t)-1);
    c->gid[3] = (gid_t)setfsgid((gid_t)-1);
    c->ngroups = getgroups(16, c->groups);
}

static void compare_creds(const char *who, const struct creds *got, const struct creds *want) {
    const struct { const char *name; uint64_t got, want; } sets[] = {
        { "inheritable", got->inh, want->inh }, { "permitted", got->prm, want->prm },
        { "effective", got->eff, want->eff }, { "bounding", got->bnd, want->bnd },
        { "ambient", got->amb, want->amb },
    };
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        if (sets[i].got != sets[i].want)
            failed("%s %s capabilities %016llx, want %016llx", who, sets[i].name,
                   (unsigned long long)sets[i].got, (unsigned long long)sets[i].want);
    if (got->securebits != want->securebits) failed("%s securebits 0x%x, want 0x%x", who, got->securebits, want->securebits);
    if (memcmp(got->uid, want->uid, sizeof got->uid) != 0)
        failed("%s uids (r/e/s/fs) %u/%u/%u/%u, want %u/%u/%u/%u", who, got->uid[0], got->uid[1], got->uid[2], got->uid[3],
               want->uid[0], want->uid[1], want->uid[2], want->uid[3]);
    if (memcmp(got->gid, want->gid, sizeof got->gid) != 0)
        failed("%s gids (r/e/s/fs) %u/%u/%u/%u, want %u/%u/%u/%u", who, got->gid[0], got->gid[1], got->gid[2], got->gid[3],
               want->gid[0], want->gid[1], want->gid[2], want->gid[3]);
    if (got->ngroups != want->ngroups || memcmp(got->groups, want->groups, sizeof(gid_t) * (size_t)(want->ngroups > 0 ? want->ngroups : 0)) != 0) {
        char list[128] = "";
        for (int i = 0; i < got->ngroups && i < 16; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%u", i ? "," : "", got->groups[i]);
        failed("%s groups {%s}, want {0,4,27,1234}", who, got->ngroups < 0 ? "error" : list);
    }
}

// The same values as /proc/self/task/TID/status shows them.
static void compare_status(const char *who, pid_t tid, const struct creds *want) {
    char v[128];
    const struct { const char *key; uint64_t want; } sets[] = {
        { "CapInh", want->inh }, { "CapPrm", want->prm }, { "CapEff", want->eff },
        { "CapBnd", want->bnd }, { "CapAmb", want->amb },
    };
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        snprintf(v, sizeof v, "%016llx", (unsigned long long)sets[i].want);
        expect_status(who, tid, sets[i].key, v);
    }
    snprintf(v, sizeof v, "%u\t%u\t%u\t%u", want->uid[0], want->uid[1], want->uid[2], want->uid[3]);
    expect_status(who, tid, "Uid", v);
    snprintf(v, sizeof v, "%u\t%u\t%u\t%u", want->gid[0], want->gid[1], want->gid[2], want->gid[3]);
    expect_status(who, tid, "Gid", v);
    expect_status(who, tid, "Groups", "0 4 27 1234");
    expect_status(who, tid, "NoNewPrivs", "0");
    expect_status(who, tid, "Seccomp", "0");
}

static void job_read_creds(struct worker *w) { read_own_creds((struct creds *)w->result); }

// While root: the worker's own bounding set, securebits and keep-caps.
static void job_caps_prepare(struct worker *w) {
    int ok = prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE, 0, 0, 0) == 0 && prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) == 0 &&
             prctl(PR_CAPBSET_DROP, CAP_SYS_RAWIO, 0, 0, 0) == 0 &&
             prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP | SECBIT_NO_CAP_AMBIENT_RAISE, 0, 0, 0) == 0 &&
             prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0;
    snprintf(w->result, sizeof w->result, "%s", ok ? "ok" : strerror(errno));
}

// After the uid switch: the worker's fs ids (not broadcast by glibc) and capabilities.
static void job_caps_finish(struct worker *w) {
    setfsgid(1003);
    setfsuid(1002);
    int ok = cap_set(BIT(CAP_NET_BIND_SERVICE), BIT(CAP_CHOWN) | BIT(CAP_NET_BIND_SERVICE), 0) == 0;
    // Refused: the worker's securebits forbid raising ambient capabilities.
    int refused = prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) == -1 && errno == EPERM;
    snprintf(w->result, sizeof w->result, "%s", ok && refused ? "ok" : "capset or the refused ambient raise misbehaved");
}

static void setup_caps(void) {
    FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "r");
    harness_require(f && fscanf(f, "%d", &last_cap) == 1 && last_cap < 64, "cap_last_cap");
    fclose(f);
    harness_require(getuid() == 0, "caps mode runs as root");
    uint64_t inh, prm, eff;
    cap_get(0, &inh, &prm, &eff);
    uint64_t bounding = 0;
    for (int cap = 0; cap <= last_cap; cap++)
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1) bounding |= BIT(cap);
    harness_require((bounding & (BIT(CAP_SYS_MODULE) | BIT(CAP_SYS_BOOT) | BIT(CAP_SYS_RAWIO))) ==
                        (BIT(CAP_SYS_MODULE) | BIT(CAP_SYS_BOOT) | BIT(CAP_SYS_RAWIO)),
                    "CAP_SYS_MODULE, CAP_SYS_BOOT and CAP_SYS_RAWIO in the bounding set");

    start_workers(1);
    struct worker *w = &workers[0];
    harness_require(prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE, 0, 0, 0) == 0, "PR_CAPBSET_DROP CAP_SYS_MODULE");
    harness_require(prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) == 0, "PR_CAPBSET_DROP CAP_SYS_BOOT");
    harness_require(prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) == 0, "PR_SET_SECUREBITS");
    harness_require(prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0, "PR_SET_KEEPCAPS");
    harness_require(run_in(w, job_caps_prepare) == 0 && !strcmp(w->result, "ok"), "worker: bounding set and securebits");

    // glibc runs these in every thread.
    harness_require(setgroups(4, caps_groups) == 0, "setgroups");
    harness_require(setresgid(1001, 1001, 1003) == 0, "setresgid");
    harness_require(setresuid(1001, 1001, 1002) == 0, "setresuid");
    // These only in the calling thread.
    setfsgid(1003);
    setfsuid(1002);
    harness_require(cap_set(BIT(CAP_NET_BIND_SERVICE), BIT(CAP_CHOWN) | BIT(CAP_NET_BIND_SERVICE), BIT(CAP_NET_BIND_SERVICE)) == 0, "capset");
    harness_require(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) == 0, "PR_CAP_AMBIENT_RAISE");
    harness_require(run_in(w, job_caps_finish) == 0 && !strcmp(w->result, "ok"), "worker: fs ids and capabilities");

    struct creds common = {
        .inh = BIT(CAP_NET_BIND_SERVICE), .prm = BIT(CAP_CHOWN) | BIT(CAP_NET_BIND_SERVICE),
        .uid = { 1001, 1001, 1002, 1002 }, .gid = { 1001, 1001, 1003, 1003 }, .ngroups = 4,
        .groups = { 0, 4, 27, 1234 },
    };
    want_caps[0] = common;
    want_caps[0].eff = BIT(CAP_NET_BIND_SERVICE);
    want_caps[0].amb = BIT(CAP_NET_BIND_SERVICE);
    want_caps[0].bnd = bounding & ~(BIT(CAP_SYS_MODULE) | BIT(CAP_SYS_BOOT));
    want_caps[0].securebits = SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS;
    want_caps[1] = common;
    want_caps[1].bnd = bounding & ~(BIT(CAP_SYS_MODULE) | BIT(CAP_SYS_BOOT) | BIT(CAP_SYS_RAWIO));
    want_caps[1].securebits = SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS | SECBIT_NO_CAP_AMBIENT_RAISE;
    want_dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    harness_say("READY pid=%d worker=%d dumpable=%d", getpid(), w->tid, want_dumpable);
}

static void verify_caps(void) {
    expect_tasks();
    struct creds got;
    read_own_creds(&got);
    compare_creds("main thread", &got, &want_caps[0]);
    compare_status("main thread", getpid(), &want_caps[0]);
    struct worker *w = &workers[0];
    if (run_in(w, job_read_creds) != 0) failed("worker did not answer");
    else compare_creds("worker", (struct creds *)w->result, &want_caps[1]);
    compare_status("worker", w->tid, &want_caps[1]);
    // capget of another thread, from outside it.
    uint64_t inh, prm, eff;
    cap_get(w->tid, &inh, &prm, &eff);
    if (inh != want_caps[1].inh || prm != want_caps[1].prm || eff != want_caps[1].eff)
        failed("capget(worker) from the main thread %016llx/%016llx/%016llx, want %016llx/%016llx/%016llx",
               (unsigned long long)inh, (unsigned long long)prm, (unsigned long long)eff,
               (unsigned long long)want_caps[1].inh, (unsigned long long)want_caps[1].prm, (unsigned long long)want_caps[1].eff);
    int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    if (dumpable != want_dumpable) failed("dumpable %d, want %d", dumpable, want_dumpable);
}

// MARK: seccomp

#define FILTERED_WORKER 1
#define ERRNO_A ENOTBLK     // filter A (all threads): getcpu
#define ERRNO_B_CPU EXDEV   // filter B (worker 1): getcpu
#define ERRNO_B_INFO ETXTBSY // filter B (worker 1): sysinfo

#define LOAD(field) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, field))
#define RET(v) BPF_STMT(BPF_RET | BPF_K, (v))

static struct sock_filter filter_a[] = {
    LOAD(arch),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    RET(SECCOMP_RET_ALLOW),
    LOAD(nr),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getcpu, 0, 1),
    RET(SECCOMP_RET_ERRNO | ERRNO_A),
    RET(SECCOMP_RET_ALLOW),
};

static struct sock_filter filter_b[] = {
    LOAD(arch),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    RET(SECCOMP_RET_ALLOW),
    LOAD(nr),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getcpu, 0, 1),
    RET(SECCOMP_RET_ERRNO | ERRNO_B_CPU),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sysinfo, 0, 1),
    RET(SECCOMP_RET_ERRNO | ERRNO_B_INFO),
    RET(SECCOMP_RET_ALLOW),
};

static long install(struct sock_filter *f, unsigned short len, unsigned flags) {
    struct sock_fprog prog = { .len = len, .filter = f };
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

// What a thread sees of its filters: errno of getcpu and sysinfo (0: the call worked).
struct probe { int getcpu_errno, sysinfo_errno, getpid_ok, mode, nnp; };

static void probe_here(struct probe *p) {
    unsigned cpu, node;
    errno = 0;
    p->getcpu_errno = syscall(SYS_getcpu, &cpu, &node, NULL) == 0 ? 0 : errno;
    char info[256]; // struct sysinfo is 112 bytes
    errno = 0;
    p->sysinfo_errno = syscall(SYS_sysinfo, info) == 0 ? 0 : errno;
    p->getpid_ok = syscall(SYS_getpid) == getpid();
    p->mode = prctl(PR_GET_SECCOMP, 0, 0, 0, 0);
    p->nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
}

static void job_probe(struct worker *w) { probe_here((struct probe *)w->result); }

static void job_install_b(struct worker *w) {
    long r = install(filter_b, sizeof filter_b / sizeof filter_b[0], 0);
    snprintf(w->result, sizeof w->result, "%s", r == 0 ? "ok" : strerror(errno));
}

static void setup_seccomp(void) {
    start_workers(2);
    harness_require(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS");
    long r = install(filter_a, sizeof filter_a / sizeof filter_a[0], SECCOMP_FILTER_FLAG_TSYNC);
    if (r > 0) { fprintf(stderr, "seccomp TSYNC: thread %ld could not be synchronized\n", r); exit(2); }
    harness_require(r == 0, "seccomp filter A (TSYNC)");
    struct worker *w = &workers[FILTERED_WORKER];
    harness_require(run_in(w, job_install_b) == 0 && !strcmp(w->result, "ok"), "seccomp filter B in worker 1");
    harness_say("READY pid=%d workers=%d,%d", getpid(), workers[0].tid, workers[1].tid);
}

static void check_probe(const char *who, const struct probe *p, int filtered) {
    int want_cpu = filtered ? ERRNO_B_CPU : ERRNO_A, want_info = filtered ? ERRNO_B_INFO : 0;
    if (p->getcpu_errno != want_cpu)
        failed("%s getcpu errno %d (%s), want %d (%s)", who, p->getcpu_errno, p->getcpu_errno ? strerror(p->getcpu_errno) : "it worked",
               want_cpu, strerror(want_cpu));
    if (p->sysinfo_errno != want_info)
        failed("%s sysinfo errno %d (%s), want %d (%s)", who, p->sysinfo_errno, p->sysinfo_errno ? strerror(p->sysinfo_errno) : "it worked",
               want_info, want_info ? strerror(want_info) : "it works");
    if (!p->getpid_ok) failed("%s getpid failed", who);
    if (p->mode != 2) failed("%s PR_GET_SECCOMP %d, want 2", who, p->mode);
    if (p->nnp != 1) failed("%s PR_GET_NO_NEW_PRIVS %d, want 1", who, p->nnp);
}

static void verify_seccomp(void) {
    expect_tasks();
    struct probe p;
    probe_here(&p);
    check_probe("main thread", &p, 0);
    expect_status("main thread", getpid(), "NoNewPrivs", "1");
    expect_status("main thread", getpid(), "Seccomp", "2");
    expect_status("main thread", getpid(), "Seccomp_filters", "1");
    for (int i = 0; i < nworkers; i++) {
        char who[32];
        snprintf(who, sizeof who, "worker %d", i);
        struct worker *w = &workers[i];
        if (run_in(w, job_probe) != 0) failed("%s did not answer", who);
        else check_probe(who, (struct probe *)w->result, i == FILTERED_WORKER);
        expect_status(who, w->tid, "NoNewPrivs", "1");
        expect_status(who, w->tid, "Seccomp", "2");
        expect_status(who, w->tid, "Seccomp_filters", i == FILTERED_WORKER ? "2" : "1");
    }
}

// MARK: chroot

static struct stat root_before;
static int marker_fd;
static char marker[256];
static ssize_t marker_len;

static void setup_chroot(const char *dir) {
    harness_require(stat(dir, &root_before) == 0, "stat DIR");
    harness_require(chroot(dir) == 0, "chroot");
    harness_require(chdir("/") == 0, "chdir /");
    marker_fd = open("/marker", O_RDONLY);
    harness_require(marker_fd >= 0, "open /marker");
    marker_len = read(marker_fd, marker, sizeof marker);
    harness_require(marker_len > 0, "read /marker");
    lseek(marker_fd, 0, SEEK_SET);
    harness_say("READY pid=%d root=%llu:%llu fd=%d", getpid(), (unsigned long long)root_before.st_dev,
                (unsigned long long)root_before.st_ino, marker_fd);
}

static void same_as_root(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) failed("stat(%s): %s", path, strerror(errno));
    else if (st.st_dev != root_before.st_dev || st.st_ino != root_before.st_ino)
        failed("%s is %llu:%llu, want the chroot directory %llu:%llu", path, (unsigned long long)st.st_dev,
               (unsigned long long)st.st_ino, (unsigned long long)root_before.st_dev, (unsigned long long)root_before.st_ino);
}

static void verify_chroot(void) {
    same_as_root("/");
    same_as_root("/..");
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) failed("getcwd: %s", strerror(errno));
    else if (strcmp(cwd, "/") != 0) failed("cwd is '%s', want '/'", cwd);
    char buf[256];
    int fd = open("/marker", O_RDONLY);
    if (fd < 0) failed("open(/marker): %s", strerror(errno));
    else {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n != marker_len || memcmp(buf, marker, (size_t)n) != 0) failed("/marker reads other bytes");
        struct stat a, b;
        if (fstat(fd, &a) != 0 || fstat(marker_fd, &b) != 0) failed("fstat of the marker fd: %s", strerror(errno));
        else if (a.st_dev != b.st_dev || a.st_ino != b.st_ino) failed("fd %d is not /marker", marker_fd);
        close(fd);
    }
    if (lseek(marker_fd, 0, SEEK_CUR) != 0) failed("fd %d is not at offset 0", marker_fd);
    ssize_t n = pread(marker_fd, buf, sizeof buf, 0);
    if (n != marker_len || memcmp(buf, marker, (size_t)n) != 0) failed("fd %d reads other bytes", marker_fd);
}

// MARK: loginuid

#define LOGINUID 4242u
static int loginuid_skipped;

static int read_loginuid(unsigned *out) {
    FILE *f = fopen("/proc/self/loginuid", "r");
    if (!f) return -1;
    int ok = fscanf(f, "%u", out) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

static void setup_loginuid(void) {
    int fd = open("/proc/self/loginuid", O_WRONLY);
    char text[16];
    int n = snprintf(text, sizeof text, "%u", LOGINUID);
    if (fd < 0 || write(fd, text, (size_t)n) != n) {
        harness_say("READY pid=%d skip=loginuid reason=writing /proc/self/loginuid: %s", getpid(), strerror(errno));
        loginuid_skipped = 1;
        if (fd >= 0) close(fd);
        return;
    }
    close(fd);
    unsigned now = 0, session = 0;
    harness_require(read_loginuid(&now) == 0 && now == LOGINUID, "read /proc/self/loginuid");
    FILE *f = fopen("/proc/self/sessionid", "r");
    if (f) { if (fscanf(f, "%u", &session) != 1) session = 0; fclose(f); }
    harness_say("READY pid=%d loginuid=%u sessionid=%u", getpid(), now, session);
}

static void verify_loginuid(void) {
    unsigned now;
    if (read_loginuid(&now) != 0) failed("/proc/self/loginuid unreadable: %s", strerror(errno));
    else if (now != LOGINUID) failed("loginuid %u, want %u", now, LOGINUID);
}

// MARK: strict

static int strict_cmd[2], strict_done[2];
// Volatile: the store must happen before the thread's endless loop, not be sunk past it.
static volatile pid_t strict_tid;
static char strict_next = 'a';

// After the prctl only read, write and exit are allowed: raw syscalls, nothing else.
static void *strict_thread(void *arg) {
    (void)arg;
    strict_tid = (pid_t)syscall(SYS_gettid);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0) != 0) syscall(SYS_exit, 3);
    char c = 'r';
    syscall(SYS_write, strict_done[1], &c, 1);
    for (;;) {
        if (syscall(SYS_read, strict_cmd[0], &c, 1) != 1) continue;
        c++;
        syscall(SYS_write, strict_done[1], &c, 1);
    }
    return NULL;
}

static void setup_strict(void) {
    harness_require(pipe(strict_cmd) == 0 && pipe(strict_done) == 0, "pipe");
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t th;
    harness_require(pthread_create(&th, NULL, strict_thread, NULL) == 0, "pthread_create");
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    char c;
    harness_require(await_byte(strict_done[0], 10000, &c) == 0 && c == 'r', "strict thread start");
    harness_say("READY pid=%d strict=%d", getpid(), strict_tid);
}

static void verify_strict(void) {
    char sent = strict_next, got;
    strict_next = strict_next == 'y' ? 'a' : strict_next + 1;
    if (write(strict_cmd[1], &sent, 1) != 1) failed("write to the strict thread's pipe: %s", strerror(errno));
    else if (await_byte(strict_done[0], 5000, &got) != 0) failed("the strict thread did not answer");
    else if (got != sent + 1) failed("the strict thread answered '%c' to '%c'", got, sent);
    expect_status("strict thread", strict_tid, "Seccomp", "1");
}

// MARK: file

static int held_fd;
static struct stat held_st;
static char held_head[64];
static ssize_t held_len;
static uid_t held_uid[3];
static gid_t held_gid[3];

static void setup_file(const char *path) {
    held_fd = open(path, O_RDWR);
    harness_require(held_fd >= 0, path);
    harness_require(fstat(held_fd, &held_st) == 0, "fstat");
    held_len = pread(held_fd, held_head, sizeof held_head, 0);
    harness_require(held_len >= 0, "pread");
    getresuid(&held_uid[0], &held_uid[1], &held_uid[2]);
    getresgid(&held_gid[0], &held_gid[1], &held_gid[2]);
    harness_say("READY pid=%d fd=%d uid=%u gid=%u", getpid(), held_fd, held_uid[1], held_gid[1]);
}

static void verify_file(void) {
    struct stat st;
    if (fstat(held_fd, &st) != 0) failed("fd %d: %s", held_fd, strerror(errno));
    else if (st.st_dev != held_st.st_dev || st.st_ino != held_st.st_ino) failed("fd %d is another file", held_fd);
    int fl = fcntl(held_fd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) != O_RDWR) failed("fd %d is not O_RDWR", held_fd);
    char buf[64];
    ssize_t n = pread(held_fd, buf, sizeof buf, 0);
    if (n != held_len || memcmp(buf, held_head, (size_t)(n > 0 ? n : 0)) != 0) failed("fd %d reads other bytes", held_fd);
    uid_t u[3];
    gid_t g[3];
    getresuid(&u[0], &u[1], &u[2]);
    getresgid(&g[0], &g[1], &g[2]);
    if (memcmp(u, held_uid, sizeof u) != 0) failed("uids %u/%u/%u, want %u/%u/%u", u[0], u[1], u[2], held_uid[0], held_uid[1], held_uid[2]);
    if (memcmp(g, held_gid, sizeof g) != 0) failed("gids %u/%u/%u, want %u/%u/%u", g[0], g[1], g[2], held_gid[0], held_gid[1], held_gid[2]);
}

// MARK: main

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: harness-security caps|seccomp|chroot DIR|loginuid|strict|file PATH\n");
        return 2;
    }
    const char *mode = argv[1];
    void (*verify)(void);
    harness_verify_requests();
    if (!strcmp(mode, "caps")) { setup_caps(); verify = verify_caps; }
    else if (!strcmp(mode, "seccomp")) { setup_seccomp(); verify = verify_seccomp; }
    else if (!strcmp(mode, "chroot") && argc > 2) { setup_chroot(argv[2]); verify = verify_chroot; }
    else if (!strcmp(mode, "loginuid")) { setup_loginuid(); verify = verify_loginuid; }
    else if (!strcmp(mode, "strict")) { setup_strict(); verify = verify_strict; }
    else if (!strcmp(mode, "file") && argc > 2) { setup_file(argv[2]); verify = verify_file; }
    else { fprintf(stderr, "harness-security: unknown mode %s\n", mode); return 2; }
    for (;;) {
        harness_wait_for_request();
        failures[0] = 0;
        failures_dropped = 0;
        if (loginuid_skipped) { harness_say("VERIFY OK skipped"); continue; }
        verify();
        report();
    }
}
