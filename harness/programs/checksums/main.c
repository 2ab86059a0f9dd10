// harness-checksums: a fuzz target whose crash sits behind checksums over the input, as file
// formats and protocols carry them: a CRC-32 stored big-endian (as PNG's chunks) over the rest
// of the input, which holds a chunk with an Adler-32 of its own stored little-endian; behind
// both, a tag and a sum of two bytes. Every change to the chunk breaks both checksums, so a
// mutation only gets past them repaired, in the order the program checks them.
//
//   harness-checksums   prints "READY pid=N", then reads stdin and checks it:
//
//   0      "CKSM"                      magic (else: exit 1)
//   4      u32 BE  CRC-32 of bytes 8..n (else: exit 2, crc_mismatch)
//   8      u16 LE  L, the chunk's length (L <= n - 14)
//   10     L bytes: the chunk
//   10+L   u32 LE  Adler-32 of the chunk (else: exit 3, adler_mismatch)
//   chunk  [0] 'Z', [1] + [2] == 0x1C3: the crash (crash_behind_checksums)
//
//   harness-checksums chunks   the same with chunks, each with its own CRC-32, as PNG:
//
//   0      "CHKS"                      magic (else: exit 1)
//   4...   chunks to the end: u16 LE L, L bytes, u32 BE CRC-32 of those L bytes
//          (else: exit 2); the third chunk's [0] 'Q' and [1] + [2] == 0x150: the crash
//          (crash_in_third_chunk)
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile int stage;

static uint32_t crc32_of(const uint8_t *d, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= d[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return ~c;
}

static uint32_t adler32_of(const uint8_t *d, size_t n) {
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) {
        a = (a + d[i]) % 65521;
        b = (b + a) % 65521;
    }
    return b << 16 | a;
}

__attribute__((noinline)) static void crash_behind_checksums(void) {
    volatile int *nowhere = NULL;
    *nowhere = stage;
}

__attribute__((noinline)) static int chunk(const uint8_t *c, size_t n) {
    stage = 3;
    if (n < 3 || c[0] != 'Z') return 4;
    stage = 4;
    if (c[1] + c[2] == 0x1C3) crash_behind_checksums();
    return 5;
}

__attribute__((noinline)) static int check(const uint8_t *d, size_t n) {
    if (n < 14 || memcmp(d, "CKSM", 4) != 0) return 1;
    uint32_t stored = (uint32_t)d[4] << 24 | (uint32_t)d[5] << 16 | (uint32_t)d[6] << 8 | d[7];
    if (crc32_of(d + 8, n - 8) != stored) return 2;
    stage = 1;
    size_t len = (size_t)d[8] | (size_t)d[9] << 8;
    if (len > n - 14) return 2;
    uint32_t adler;
    memcpy(&adler, d + 10 + len, 4);
    if (adler32_of(d + 10, len) != adler) return 3;
    stage = 2;
    return chunk(d + 10, len);
}

__attribute__((noinline)) static void crash_in_third_chunk(void) {
    volatile int *nowhere = NULL;
    *nowhere = stage;
}

__attribute__((noinline)) static int chunk_valid(const uint8_t *c, size_t len) {
    uint32_t stored = (uint32_t)c[len] << 24 | (uint32_t)c[len + 1] << 16 | (uint32_t)c[len + 2] << 8 | c[len + 3];
    return crc32_of(c, len) == stored;
}

__attribute__((noinline)) static int chunks(const uint8_t *d, size_t n) {
    if (n < 4 || memcmp(d, "CHKS", 4) != 0) return 1;
    size_t at = 4;
    for (int index = 0; at + 6 <= n; index++) {
        size_t len = (size_t)d[at] | (size_t)d[at + 1] << 8;
        if (len > n - at - 6 || !chunk_valid(d + at + 2, len)) return 2;
        const uint8_t *c = d + at + 2;
        stage = 10 + index;
        if (index == 2 && len >= 3 && c[0] == 'Q') {
            stage = 20;
            if (c[1] + c[2] == 0x150) crash_in_third_chunk();
        }
        at += len + 6;
    }
    return 0;
}

int main(int argc, char **argv) {
    int chunked = argc > 1 && strcmp(argv[1], "chunks") == 0;
    printf("READY pid=%d\n", getpid());
    fflush(stdout);
    uint8_t d[512];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof d && (r = read(0, d + n, sizeof d - n)) > 0) n += (size_t)r;
    return chunked ? chunks(d, n) : check(d, n);
}
