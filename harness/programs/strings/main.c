// harness-strings [SECONDS]
//
// Measures glibc's memcpy, memset, strlen, memchr and strcmp on 64-byte and 1 MiB buffers
// and prints one line per function and size: "memcpy 1048576 12345.6 MB/s". Used by
// harness/bench/portable to show what `wb run --portable` costs.
#define _GNU_SOURCE
#include "harness.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile size_t sink;

static double rate(const char *name, size_t size, double seconds) {
    char *a = aligned_alloc(64, size + 64), *b = aligned_alloc(64, size + 64);
    memset(a, 'x', size); a[size - 1] = 0;
    memset(b, 'x', size); b[size - 1] = 0;
    uint64_t start = harness_now_ns(), bytes = 0;
    while (harness_now_ns() - start < (uint64_t)(seconds * 1e9)) {
        for (int i = 0; i < 64; i++) {
            if (!strcmp(name, "memcpy")) memcpy(b, a, size);
            else if (!strcmp(name, "memset")) memset(b, i, size - 1);
            else if (!strcmp(name, "strlen")) sink += strlen(a);
            else if (!strcmp(name, "memchr")) sink += (size_t)memchr(a, 'y', size);
            else if (!strcmp(name, "strcmp")) sink += (size_t)strcmp(a, b);
            bytes += size;
        }
    }
    double mbs = (double)bytes / ((double)(harness_now_ns() - start) / 1e9) / 1e6;
    free(a); free(b);
    return mbs;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 0.3;
    const char *names[] = { "memcpy", "memset", "strlen", "memchr", "strcmp" };
    size_t sizes[] = { 64, 1 << 20 };
    for (int n = 0; n < 5; n++)
        for (int s = 0; s < 2; s++)
            printf("%s %zu %.1f MB/s\n", names[n], sizes[s], rate(names[n], sizes[s], seconds));
    return 0;
}
