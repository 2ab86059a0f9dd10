// harness-state DIR
//
// Sets up the per-process state a checkpoint must carry, then waits for SIGUSR1 requests,
// each answered by "VERIFY OK" or "VERIFY FAIL <what>" after checking all of it:
//   - a regular file open at offset 37, and a deleted file open at offset 11
//   - a pipe holding unread bytes
//   - a reader thread blocked in read() on a second pipe; each verification writes to it and
//     the thread must receive the bytes (its read is interrupted by SIGUSR2 first, whose
//     SA_RESTART handler must make the read resume)
//   - a SIGUSR2 handler with SA_RESTART, a blocked real-time signal queued with a value
//   - a periodic ITIMER_REAL whose SIGALRM ticks keep coming
//   - umask 027 and a cwd of DIR/work; /dev/null open on fd 20
//   - a thread asleep in nanosleep (10 minutes), bound to the last CPU with I/O priority
//     best-effort level 3 (checked with sched_getaffinity and ioprio_get), and one blocked in pthread_cond_wait (a
//     futex wait); each verification wakes the second and checks the first still sleeps
//   - anonymous mappings given advice (MADV_DONTFORK, MADV_WIPEONFORK, MADV_DONTDUMP,
//     MADV_HUGEPAGE, MADV_RANDOM, MADV_SEQUENTIAL, MADV_MERGEABLE), whose flags ("dc", "wf",
//     "dd", "hg", "rr", "sr", "mg" in /proc/self/smaps) and bytes must stay; READY prints
//     their addresses (advised=A,B,C,D,...)
//   - process settings: child subreaper, timer slack 77777, oom_score_adj 123, THP off,
//     coredump_filter 0x7f, and mlockall(MCL_FUTURE | MCL_ONFAULT) once all is set up
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RT_SIG (SIGRTMIN + 3)
#define RT_VALUE 4242
static const char unread[] = "unread-bytes-in-pipe";
static const char deleted_text[] = "deleted-file-contents";

static int file_fd, deleted_fd, unread_pipe[2], reader_pipe[2];
static char work_dir[4096];
static _Atomic int alarm_ticks, usr2_count, reader_count, reader_errors;
static char reader_got[128];
static pid_t reader_tid;
static char failures[1024];
static pthread_mutex_t cond_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int cond_generation;
static _Atomic int cond_wakeups, sleeper_woke, sleeper_started, waiter_started;

static pid_t sleeper_tid;
static int last_cpu;

static void *sleeper(void *arg) {
    (void)arg;
    sleeper_tid = (pid_t)syscall(SYS_gettid);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(last_cpu, &one);
    harness_require(sched_setaffinity(0, sizeof one, &one) == 0, "sched_setaffinity");
    harness_require(syscall(SYS_ioprio_set, 1, 0, (2 << 13) | 3) == 0, "ioprio_set");
    sleeper_started = 1;
    struct timespec ts = { 600, 0 };
    // Without EINTR handling: a restore must resume the sleep, not cut it short.
    nanosleep(&ts, NULL);
    sleeper_woke = 1;
    return NULL;
}

static void *waiter(void *arg) {
    (void)arg;
    pthread_mutex_lock(&cond_lock);
    waiter_started = 1;
    int seen = cond_generation;
    for (;;) {
        while (cond_generation == seen) pthread_cond_wait(&cond, &cond_lock);
        seen = cond_generation;
        cond_wakeups++;
    }
    return NULL;
}

static void on_alarm(int s) { (void)s; alarm_ticks++; }
static void on_usr2(int s) { (void)s; usr2_count++; }
// SIGTRAP: handled, blocked in the main thread and pending there (wb's own single steps are
// SIGTRAPs too: neither the handler nor the pending one may be lost to them).
static volatile sig_atomic_t trap_count;
static void on_trap(int s) { (void)s; trap_count++; }

static void failed(const char *what) {
    if (strlen(failures) + strlen(what) + 3 < sizeof failures) {
        if (failures[0]) strcat(failures, "; ");
        strcat(failures, what);
    }
}

static void *reader(void *arg) {
    (void)arg;
    reader_tid = (pid_t)syscall(SYS_gettid);
    for (;;) {
        char buf[128];
        ssize_t n = read(reader_pipe[0], buf, sizeof buf - 1);
        if (n < 0) { reader_errors++; continue; }
        if (n == 0) return NULL;
        buf[n] = 0;
        memcpy(reader_got, buf, (size_t)n + 1);
        reader_count++;
    }
}

static void sleep_ms(int ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

// Mappings given advice, the flag smaps shows for each, and the byte filling each.
static const struct { int advice; const char *flag; } advice[] = {
    { MADV_DONTFORK, "dc" }, { MADV_WIPEONFORK, "wf" }, { MADV_DONTDUMP, "dd" }, { MADV_HUGEPAGE, "hg" },
    { MADV_RANDOM, "rr" }, { MADV_SEQUENTIAL, "sr" }, { MADV_MERGEABLE, "mg" },
};
// A mapping locked in memory with mlock (VmFlags "lo").
static char *locked;
// A read-only shared mapping of a file opened read-write (its fd closed): mprotect may make it
// writable, as the kernel keeps "may write" for it.
static char *maywrite;
#define ADVISED (sizeof advice / sizeof advice[0])
#define ADVISED_BYTES (4 * 4096)
static char *advised[ADVISED];

// Whether the smaps entry starting at `at` lists VmFlags `flag`.
static int has_vmflag(void *at, const char *flag) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[512];
    int in = 0, found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long start;
        if (strchr(line, '-') && sscanf(line, "%lx-", &start) == 1 && line[0] != 'V') { in = start == (unsigned long)at; continue; }
        if (in && !strncmp(line, "VmFlags:", 8)) {
            char want[8];
            snprintf(want, sizeof want, " %s", flag);
            for (char *p = line + 8; (p = strstr(p, want)); p += strlen(want))
                if (p[strlen(want)] == ' ' || p[strlen(want)] == '\n') { found = 1; break; }
            break;
        }
    }
    fclose(f);
    return found;
}

static void verify(int round) {
    failures[0] = 0;
    char buf[256];
    if (!has_vmflag(locked, "lo")) failed("locked mapping is no longer locked (mlock)");
    struct sigaction trap_action;
    sigset_t now_pending;
    sigpending(&now_pending);
    if (sigaction(SIGTRAP, NULL, &trap_action) != 0 || trap_action.sa_handler != on_trap) failed("SIGTRAP handler lost");
    if (!sigismember(&now_pending, SIGTRAP) || trap_count != 0) failed("pending SIGTRAP lost or taken");
    if (mprotect(maywrite, 4096, PROT_READ | PROT_WRITE) != 0) failed("a read-write file's shared mapping can no longer be made writable");
    else { maywrite[0] = 'w'; mprotect(maywrite, 4096, PROT_READ); }
    // Process settings made at start-up.
    errno = 0;
    if (getpriority(PRIO_PROCESS, 0) != 5 || errno) failed("nice value changed");
    int subreaper = 0;
    if (prctl(PR_GET_CHILD_SUBREAPER, &subreaper) != 0 || !subreaper) failed("no longer a child subreaper");
    if (prctl(PR_GET_TIMERSLACK) != 77777) failed("timer slack changed");
    if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1) failed("transparent huge pages back on");
    char adj[16] = "";
    int afd = open("/proc/self/oom_score_adj", O_RDONLY);
    if (afd < 0 || read(afd, adj, sizeof adj - 1) <= 0 || atoi(adj) != 123) failed("oom_score_adj changed");
    char filter[32] = "";
    int cfd = open("/proc/self/coredump_filter", O_RDONLY);
    if (cfd < 0 || read(cfd, filter, sizeof filter - 1) <= 0 || strtoul(filter, NULL, 16) != 0x7f) failed("coredump_filter changed");
    if (cfd >= 0) close(cfd);
    void *fresh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fresh == MAP_FAILED || !has_vmflag(fresh, "lo") || !has_vmflag(fresh, "lf")) failed("new memory is no longer locked (mlockall MCL_FUTURE|MCL_ONFAULT)");
    if (fresh != MAP_FAILED) munmap(fresh, 4096);
    if (afd >= 0) close(afd);
    for (size_t i = 0; i < ADVISED; i++) {
        if (!has_vmflag(advised[i], advice[i].flag)) { snprintf(buf, sizeof buf, "mapping lost its advice (%s)", advice[i].flag); failed(buf); }
        for (size_t k = 0; k < ADVISED_BYTES; k++)
            if (advised[i][k] != (char)('a' + i)) { failed("advised mapping's bytes changed"); break; }
    }
    // umask and cwd
    mode_t old = umask(027);
    if (old != 027) failed("umask is not 027");
    if (!getcwd(buf, sizeof buf) || strcmp(buf, work_dir) != 0) failed("cwd changed");
    // file at an offset
    if (lseek(file_fd, 0, SEEK_CUR) != 37) failed("file offset is not 37");
    if (read(file_fd, buf, 5) != 5 || memcmp(buf, "78901", 5) != 0) failed("file content at offset 37 is wrong");
    lseek(file_fd, 37, SEEK_SET);
    // deleted file
    struct stat st;
    if (fstat(deleted_fd, &st) != 0 || st.st_nlink != 0) failed("deleted file is not deleted (nlink)");
    if (lseek(deleted_fd, 0, SEEK_CUR) != 11) failed("deleted file offset is not 11");
    if (pread(deleted_fd, buf, sizeof deleted_text - 1, 0) != (ssize_t)sizeof deleted_text - 1 ||
        memcmp(buf, deleted_text, sizeof deleted_text - 1) != 0) failed("deleted file content is wrong");
    if (st.st_size != 8192 + (off_t)sizeof deleted_text - 1) failed("deleted file size is wrong");
    // unread pipe bytes: read them, then put them back for the next round
    int fl = fcntl(unread_pipe[0], F_GETFL);
    fcntl(unread_pipe[0], F_SETFL, fl | O_NONBLOCK);
    ssize_t n = read(unread_pipe[0], buf, sizeof buf);
    fcntl(unread_pipe[0], F_SETFL, fl);
    if (n != (ssize_t)sizeof unread - 1 || memcmp(buf, unread, sizeof unread - 1) != 0) failed("unread pipe bytes lost");
    if (write(unread_pipe[1], unread, sizeof unread - 1) < 0) failed("pipe write end broken");
    // /dev/null on fd 20
    if (fstat(20, &st) != 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3)) failed("fd 20 is not /dev/null");
    // SIGUSR2 disposition
    struct sigaction sa;
    sigaction(SIGUSR2, NULL, &sa);
    if (sa.sa_handler != on_usr2 || !(sa.sa_flags & SA_RESTART)) failed("SIGUSR2 handler or SA_RESTART lost");
    // the blocked real-time signal is still pending, with its value
    sigset_t pending;
    sigpending(&pending);
    if (!sigismember(&pending, RT_SIG)) failed("blocked real-time signal no longer pending");
    else {
        sigset_t only;
        sigemptyset(&only);
        sigaddset(&only, RT_SIG);
        siginfo_t info;
        struct timespec zero = { 0, 0 };
        if (sigtimedwait(&only, &info, &zero) != RT_SIG || info.si_value.sival_int != RT_VALUE || info.si_code != SI_QUEUE)
            failed("real-time signal value or code lost");
        union sigval v = { .sival_int = RT_VALUE };
        sigqueue(getpid(), RT_SIG, v);
    }
    // itimer keeps ticking with its interval
    struct itimerval it;
    getitimer(ITIMER_REAL, &it);
    if (it.it_interval.tv_sec != 0 || it.it_interval.tv_usec != 20000) failed("itimer interval changed");
    int t0 = alarm_ticks;
    for (int i = 0; i < 500 && alarm_ticks < t0 + 3; i++) sleep_ms(10);
    if (alarm_ticks < t0 + 3) failed("itimer stopped ticking");
    // reader thread: interrupt its read with SIGUSR2, then send data it must receive
    int u0 = usr2_count, r0 = reader_count;
    syscall(SYS_tgkill, getpid(), reader_tid, SIGUSR2);
    for (int i = 0; i < 500 && usr2_count == u0; i++) sleep_ms(10);
    if (usr2_count == u0) failed("SIGUSR2 handler did not run");
    char msg[64];
    snprintf(msg, sizeof msg, "after-restore-%d", round);
    if (write(reader_pipe[1], msg, strlen(msg)) < 0) failed("reader pipe write failed");
    for (int i = 0; i < 500 && reader_count == r0; i++) sleep_ms(10);
    if (reader_count == r0) failed("blocked reader thread did not receive the data");
    else if (strcmp(reader_got, msg) != 0) failed("reader thread received the wrong bytes");
    if (reader_errors) failed("reader's read() was not restarted (SA_RESTART)");
    // futex wait: wake the waiter through its condition variable
    int w0 = cond_wakeups;
    pthread_mutex_lock(&cond_lock);
    cond_generation++;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&cond_lock);
    for (int i = 0; i < 500 && cond_wakeups == w0; i++) sleep_ms(10);
    if (cond_wakeups == w0) failed("thread in pthread_cond_wait was not woken");
    if (sleeper_woke) failed("nanosleep returned early");
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    if (sched_getaffinity(sleeper_tid, sizeof cpus, &cpus) != 0 || CPU_COUNT(&cpus) != 1 || !CPU_ISSET(last_cpu, &cpus))
        failed("the sleeping thread is not bound to its CPU");
    if (syscall(SYS_ioprio_get, 1, sleeper_tid) != ((2 << 13) | 3)) failed("the sleeping thread lost its I/O priority");
    if (failures[0]) harness_say("VERIFY FAIL %s", failures);
    else harness_say("VERIFY OK pid=%d ticks=%d usr2=%d", getpid(), (int)alarm_ticks, (int)usr2_count);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: harness-state DIR\n"); return 2; }
    snprintf(work_dir, sizeof work_dir, "%s/work", argv[1]);
    mkdir(work_dir, 0755);
    harness_require(chdir(work_dir) == 0, "chdir");
    umask(027);

    file_fd = open("data.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    harness_require(file_fd >= 0, "open data.txt");
    char digits[101];
    for (int i = 0; i < 100; i++) digits[i] = (char)('0' + i % 10);
    harness_require(write(file_fd, digits, 100) == 100, "write data.txt");
    lseek(file_fd, 37, SEEK_SET);

    deleted_fd = open("gone.txt", O_RDWR | O_CREAT | O_TRUNC, 0600);
    harness_require(deleted_fd >= 0, "open gone.txt");
    harness_require(write(deleted_fd, deleted_text, sizeof deleted_text - 1) > 0, "write gone.txt");
    char fill[8192];
    memset(fill, 'x', sizeof fill);
    harness_require(write(deleted_fd, fill, sizeof fill) > 0, "write gone.txt");
    unlink("gone.txt");
    lseek(deleted_fd, 11, SEEK_SET);

    harness_require(pipe(unread_pipe) == 0, "pipe");
    harness_require(write(unread_pipe[1], unread, sizeof unread - 1) > 0, "write pipe");
    harness_require(pipe(reader_pipe) == 0, "pipe");
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 20);
    close(devnull);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    harness_verify_requests();

    // Block the real-time signal and SIGUSR1 everywhere (the reader inherits the mask),
    // then queue the real-time signal with a value.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, RT_SIG);
    sigaddset(&mask, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    union sigval v = { .sival_int = RT_VALUE };
    sigqueue(getpid(), RT_SIG, v);

    // The reader takes SIGUSR2 (tgkill'd to it); SIGALRM goes to the main thread only.
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alrm, NULL);
    pthread_t th;
    harness_require(pthread_create(&th, NULL, reader, NULL) == 0, "pthread_create");
    pthread_t sl, wt;
    last_cpu = (int)sysconf(_SC_NPROCESSORS_ONLN) - 1;
    harness_require(pthread_create(&sl, NULL, sleeper, NULL) == 0, "pthread_create");
    harness_require(pthread_create(&wt, NULL, waiter, NULL) == 0, "pthread_create");
    pthread_sigmask(SIG_UNBLOCK, &alrm, NULL);
    signal(SIGTRAP, on_trap);
    sigset_t trap;
    sigemptyset(&trap);
    sigaddset(&trap, SIGTRAP);
    pthread_sigmask(SIG_BLOCK, &trap, NULL);
    raise(SIGTRAP);
    while (reader_tid == 0 || !sleeper_started || !waiter_started) sleep_ms(1);
    sleep_ms(20);

    for (size_t i = 0; i < ADVISED; i++) {
        advised[i] = mmap(NULL, ADVISED_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        harness_require(advised[i] != MAP_FAILED, "mmap");
        memset(advised[i], 'a' + (int)i, ADVISED_BYTES);
        harness_require(madvise(advised[i], ADVISED_BYTES, advice[i].advice) == 0, "madvise");
    }

    harness_require(setpriority(PRIO_PROCESS, 0, 5) == 0, "setpriority");
    harness_require(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0 && prctl(PR_SET_TIMERSLACK, 77777) == 0 &&
                    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0, "prctl");
    int filter_fd = open("/proc/self/coredump_filter", O_WRONLY);
    harness_require(filter_fd >= 0 && write(filter_fd, "0x7f", 4) == 4, "coredump_filter");
    close(filter_fd);
    int adj_fd = open("/proc/self/oom_score_adj", O_WRONLY);
    harness_require(adj_fd >= 0 && write(adj_fd, "123", 3) == 3, "oom_score_adj");
    close(adj_fd);
    char mw_path[4200];
    snprintf(mw_path, sizeof mw_path, "%s/maywrite", argv[1]);
    int mw = open(mw_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    harness_require(mw >= 0 && ftruncate(mw, 4096) == 0, "maywrite file");
    maywrite = mmap(NULL, 4096, PROT_READ, MAP_SHARED, mw, 0);
    harness_require(maywrite != MAP_FAILED, "mmap maywrite");
    close(mw);
    locked = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    harness_require(locked != MAP_FAILED && mlock(locked, 4096) == 0, "mlock");

    struct itimerval it = { { 0, 20000 }, { 0, 20000 } };
    setitimer(ITIMER_REAL, &it, NULL);
    // Memory mapped from now on is locked as it is touched (mm-wide: no mapping shows it).
    harness_require(mlockall(MCL_FUTURE | MCL_ONFAULT) == 0, "mlockall");
    harness_say("READY pid=%d reader=%d advised=%lx,%lx,%lx,%lx", getpid(), reader_tid, (unsigned long)advised[0],
                (unsigned long)advised[1], (unsigned long)advised[2], (unsigned long)advised[3]);
    for (int round = 1;; round++) {
        harness_wait_for_request();
        verify(round);
    }
}
