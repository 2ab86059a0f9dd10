// harness-parser [--ballast MIB] [--file PATH] [--threads N] [--hangs] [--loop] [--chunk BYTES]
//
// A fuzz target: a little record parser with planted crashes. At start-up it computes a
// 32-bit key from the clock (different in every run of the program, fixed in a checkpoint),
// prints "READY pid=N key=K", then reads all of stdin into parser_input (its length in
// parser_length) and parses it with parse_input(). With --file it first waits for stdin to
// end, then reads the input from PATH instead. With --loop it goes back to read stdin again
// after each input it parsed, forever (a program serving requests on stdin; an empty read
// parses nothing). With --chunk each read call asks for at most BYTES (a program that reads
// its input in 4 KiB reads). With --threads it also starts N idle
// threads (blocked on a condition variable), for fuzzing a multi-threaded snapshot.
//
// The input format:
//
//   0  "WBFZ"           magic (else: exit 0)
//   4  u8 version       must be 2
//   5  u8 count         number of records
//   6  u16 checksum     sum of the record bytes, mod 65536 (else: exit 1)
//   8  records, 8 bytes each: u32 tag, u32 value
//
// Records: tag "KEY!" with value == the key unlocks tag "CRSH", which then writes through
// a null pointer (crash_with_key); tag "BOOM" with a value whose bytes are "BANG" overflows
// a stack buffer and aborts (boom). Everything else only counts. With --ballast the process
// also holds that many MiB of touched memory (to fuzz a large snapshot). With --hangs, a
// count byte of 0xFE spins forever (spin_forever: a true hang) and one of 0xFD sleeps 250 ms
// and goes on (slow_down: slow, but not a hang).
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

static uint32_t key;
static int unlocked;
static unsigned records_seen;
static int hangs, loop;
static size_t chunk = (size_t)1 << 16;

__attribute__((noinline)) static void spin_forever(void) {
    for (volatile unsigned long n = 0;; n++) {}
}

__attribute__((noinline)) static void slow_down(void) {
    struct timespec t = {0, 250 * 1000 * 1000};
    nanosleep(&t, NULL);
}

__attribute__((noinline)) static void crash_with_key(uint32_t value) {
    volatile uint32_t *nowhere = (volatile uint32_t *)(uintptr_t)(value & 0);
    *nowhere = value;
}

__attribute__((noinline)) static void boom(const uint8_t *record) {
    char small[4];
    // The bounds check is "forgotten": eight bytes go into four, the stack check aborts.
    memcpy(small, record, 8 + (record[7] & 7));
    if (small[0] == 0x7f) puts("unreachable");
}

__attribute__((noinline)) static int parse_record(const uint8_t *r) {
    uint32_t tag, value;
    memcpy(&tag, r, 4);
    memcpy(&value, r + 4, 4);
    records_seen++;
    if (tag == 0x2159454B /* "KEY!" */) {
        if (value == key) unlocked = 1;
        return 0;
    }
    if (tag == 0x48535243 /* "CRSH" */ && unlocked) {
        crash_with_key(value);
        return 0;
    }
    if (tag == 0x4D4F4F42 /* "BOOM" */ && memcmp(r + 4, "BANG", 4) == 0) {
        boom(r);
        return 0;
    }
    return tag == 0 ? -1 : 0;
}

__attribute__((noinline)) static int parse(const uint8_t *in, size_t n) {
    if (n < 8 || memcmp(in, "WBFZ", 4) != 0) return 0;
    if (in[4] != 2) return 0;
    if (hangs && in[5] == 0xFE) spin_forever();
    if (hangs && in[5] == 0xFD) slow_down();
    unsigned count = in[5];
    uint16_t sum = 0, want;
    memcpy(&want, in + 6, 2);
    if (8 + (size_t)count * 8 > n) return 0;
    for (size_t i = 8; i < 8 + (size_t)count * 8; i++) sum = (uint16_t)(sum + in[i]);
    if (sum != want) return 1;
    for (unsigned i = 0; i < count; i++)
        if (parse_record(in + 8 + i * 8) < 0) break;
    return 0;
}

uint8_t parser_input[1 << 16];
size_t parser_length;

// The entry point a snapshot taken at a breakpoint can fuzz with --input mem:parser_input:parser_length.
__attribute__((noinline)) int parse_input(void) { return parse(parser_input, parser_length); }

static pthread_mutex_t idle_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_wake = PTHREAD_COND_INITIALIZER;

static void *idle(void *arg) {
    (void)arg;
    pthread_mutex_lock(&idle_lock);
    for (;;) pthread_cond_wait(&idle_wake, &idle_lock);
    return NULL;
}

static size_t read_all(int fd) {
    size_t n = 0;
    ssize_t got;
    while (n < sizeof parser_input) {
        size_t want = sizeof parser_input - n;
        if (want > chunk) want = chunk;
        if ((got = read(fd, parser_input + n, want)) <= 0) break;
        n += (size_t)got;
    }
    return n;
}

int main(int argc, char **argv) {
    size_t ballast = 0;
    const char *file = NULL;
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--hangs")) hangs = 1;
        else if (!strcmp(argv[i], "--loop")) loop = 1;
        else if (i + 1 == argc) break;
        else if (!strcmp(argv[i], "--ballast")) ballast = strtoull(argv[++i], NULL, 10) << 20;
        else if (!strcmp(argv[i], "--file")) file = argv[++i];
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--chunk")) chunk = strtoull(argv[++i], NULL, 10);
    }
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        harness_require(pthread_create(&t, NULL, idle, NULL) == 0, "pthread_create");
    }
    if (ballast) {
        uint8_t *b = mmap(NULL, ballast, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        harness_require(b != MAP_FAILED, "mmap");
        harness_fill(b, ballast, 99);
    }
    key = (uint32_t)(harness_now_ns() * 2654435761u) | 0x01010101u;
    harness_say("READY pid=%d key=%08x", getpid(), key);
    if (file) {
        char c;
        while (read(0, &c, 1) > 0) {}
        int fd = open(file, O_RDONLY);
        if (fd < 0) return 2;
        parser_length = read_all(fd);
        close(fd);
    } else if (loop) {
        for (;;) {
            parser_length = read_all(0);
            if (parser_length) parse_input();
        }
    } else {
        parser_length = read_all(0);
    }
    return parse_input();
}
