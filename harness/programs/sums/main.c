// harness-sums: a fuzz target whose crash sits behind comparisons of values computed from
// the input, which input-to-state matching cannot reach: a sum of two bytes, a key byte
// masked and xor'ed, and a big-endian 16-bit field with an offset. The key comes from the
// clock at start-up (fixed in a checkpoint).
//
//   harness-sums         prints "READY pid=N key=K", then reads stdin and checks it:
//
//   0  "SUMS"                  magic
//   6  d[6] + d[7] == 0x100    stage one (sum_matches)
//   8  ((d[8] ^ 0xA5) & 0x7F) == key & 0x7F      stage two (key_matches)
//   9  (d[9] << 8 | d[10]) - 7 == 0x1234         the crash (crash_behind_sums)
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint32_t key;
static volatile int stage;

__attribute__((noinline)) static void crash_behind_sums(void) {
    volatile int *nowhere = NULL;
    *nowhere = stage;
}

__attribute__((noinline)) static void key_matches(const uint8_t *d) {
    stage = 2;
    if ((((unsigned)d[9] << 8) | d[10]) - 7 == 0x1234) crash_behind_sums();
}

__attribute__((noinline)) static void sum_matches(const uint8_t *d) {
    stage = 1;
    if (((d[8] ^ 0xA5) & 0x7F) == (key & 0x7F)) key_matches(d);
}

__attribute__((noinline)) static void check(const uint8_t *d, size_t n) {
    if (n < 11 || memcmp(d, "SUMS", 4) != 0) return;
    if (d[6] + d[7] == 0x100) sum_matches(d);
}

int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    key = (uint32_t)(t.tv_nsec * 2654435761u) | 0x80;
    printf("READY pid=%d key=%x\n", getpid(), key);
    fflush(stdout);
    uint8_t d[256];
    ssize_t n = read(0, d, sizeof d);
    if (n > 0) check(d, (size_t)n);
    return 0;
}
