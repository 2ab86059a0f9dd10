// Memory helpers: zero-page detection, file mapping and xxHash (compiled in from the system's
// xxhash.h with XXH_INLINE_ALL so the hot loops inline).
#define _GNU_SOURCE
#include "wb_native.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

int wb_is_zero(const void *p, size_t len) {
    const uint64_t *w = p;
    size_t n = len / 8;
    // Eight words at a time: the compiler vectorizes the OR-reduction.
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t acc = w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
        if (acc) return 0;
    }
    for (; i < n; i++) if (w[i]) return 0;
    const unsigned char *b = (const unsigned char *)p + n * 8;
    for (size_t j = 0; j < len % 8; j++) if (b[j]) return 0;
    return 1;
}

int wb_map_file(int fd, uint64_t offset, size_t len, int writable, void **out) {
    void *p = mmap(NULL, len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, (off_t)offset);
    if (p == MAP_FAILED) return errno;
    *out = p;
    return 0;
}

int wb_unmap(void *p, size_t len) { return munmap(p, len) == 0 ? 0 : errno; }

int wb_madvise(void *p, size_t len, int advice) { return madvise(p, len, advice) == 0 ? 0 : errno; }

uint64_t wb_hash64(const void *p, size_t len, uint64_t seed) { return XXH3_64bits_withSeed(p, len, seed); }

void wb_page_hashes(const void *p, size_t pages, uint64_t *out) {
    const unsigned char *b = p;
    for (size_t i = 0; i < pages; i++) out[i] = XXH3_64bits(b + i * 4096, 4096);
}

wb_hash128 wb_hash128_of(const void *p, size_t len) {
    XXH128_hash_t h = XXH3_128bits(p, len);
    return (wb_hash128){ h.low64, h.high64 };
}

void *wb_hash_stream_new(void) {
    XXH3_state_t *s = XXH3_createState();
    if (s) XXH3_64bits_reset(s);
    return s;
}
void wb_hash_stream_update(void *s, const void *p, size_t len) { XXH3_64bits_update(s, p, len); }
uint64_t wb_hash_stream_digest(void *s) { return XXH3_64bits_digest(s); }
void wb_hash_stream_free(void *s) { XXH3_freeState(s); }

void *wb_hash128_stream_new(void) {
    XXH3_state_t *s = XXH3_createState();
    if (s) XXH3_128bits_reset(s);
    return s;
}
void wb_hash128_stream_update(void *s, const void *p, size_t len) { XXH3_128bits_update(s, p, len); }
wb_hash128 wb_hash128_stream_digest(void *s) {
    XXH128_hash_t h = XXH3_128bits_digest(s);
    return (wb_hash128){ h.low64, h.high64 };
}
void wb_hash128_stream_free(void *s) { XXH3_freeState(s); }
