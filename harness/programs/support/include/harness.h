// Shared helpers for harness programs: line-based handshakes on stdout, a deterministic
// PRNG, checksums, and a "verify" request delivered as SIGUSR1.
#ifndef HARNESS_H
#define HARNESS_H
#include <stdint.h>
#include <stddef.h>
#include <signal.h>

/// Whether reading the byte at p faults. SIGSEGV is caught only while probing (with a handler
/// of the program's own), so at a checkpoint the program has the default action.
int harness_faults(const volatile void *p);

/// Prints one line to stdout and flushes it (tests read these lines through a pipe).
void harness_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/// Aborts with a message on stderr when `ok` is false during set-up.
void harness_require(int ok, const char *what);

/// xorshift64* — deterministic, fast, good enough to fill memory.
static inline uint64_t harness_next(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}
void harness_fill(void *p, size_t len, uint64_t seed);
/// FNV-1a style 64-bit checksum over words.
uint64_t harness_checksum(const void *p, size_t len);

/// Installs a SIGUSR1 handler that counts requests, and returns the count. Call it on the
/// thread that waits for requests: a request another thread of the process catches is passed
/// on to that thread.
volatile sig_atomic_t *harness_verify_requests(void);
/// Sleeps in sigsuspend until SIGUSR1 arrives (other handled signals wake it and it sleeps
/// again). Returns after consuming one request.
void harness_wait_for_request(void);
/// Monotonic clock in nanoseconds.
uint64_t harness_now_ns(void);

struct sockaddr_in;
/// Parses "A.B.C.D:PORT" into `a`; exits with a message naming `program` when it is not one.
void harness_parse_ipv4(const char *program, const char *text, struct sockaddr_in *a);

/// A TCP listener on "A.B.C.D:PORT" (SO_REUSEADDR); exits naming `program` if it cannot be made.
int harness_listen(const char *program, const char *at, int backlog);
/// A TCP connection to "A.B.C.D:PORT" with TCP_NODELAY, retried for up to 30 s while the
/// peer is not listening yet.
int harness_connect(const char *program, const char *at);
struct timespec;
/// The CLOCK_MONOTONIC moment `ms` milliseconds from now.
struct timespec harness_in_ms(long ms);
/// Sleeps until a CLOCK_MONOTONIC moment (at once if it has passed, as after a restore later).
void harness_sleep_until(const struct timespec *t);

/// A connection read line by line (the protocols of harness-replica and harness-twophase).
struct harness_lines { int fd; char buf[512]; size_t len; };
/// The next line (without its newline) into `out`; 0 at end of file or on an error.
int harness_next_line(struct harness_lines *c, char *out, size_t size);
/// Whether a whole line is already buffered (read it without waiting).
int harness_has_line(const struct harness_lines *c);
#endif
