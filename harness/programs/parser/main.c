// harness-parser [--ballast MIB]
//
// A fuzz target: a little record parser with planted crashes. At start-up it computes a
// 32-bit key from the clock (different in every run of the program, fixed in a checkpoint),
// prints "READY pid=N key=K", then reads all of stdin and parses it:
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
// also holds that many MiB of touched memory (to fuzz a large snapshot).
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint32_t key;
static int unlocked;
static unsigned records_seen;

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

int main(int argc, char **argv) {
    size_t ballast = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--ballast")) ballast = strtoull(argv[++i], NULL, 10) << 20;
    if (ballast) {
        uint8_t *b = mmap(NULL, ballast, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        harness_require(b != MAP_FAILED, "mmap");
        harness_fill(b, ballast, 99);
    }
    key = (uint32_t)(harness_now_ns() * 2654435761u) | 0x01010101u;
    harness_say("READY pid=%d key=%08x", getpid(), key);
    static uint8_t input[1 << 16];
    size_t n = 0;
    ssize_t got;
    while (n < sizeof input && (got = read(0, input + n, sizeof input - n)) > 0) n += (size_t)got;
    return parse(input, n);
}
