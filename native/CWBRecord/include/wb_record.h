// The input log of `wb run --record`: what the program got from outside, as the memory the
// kernel wrote for each call and the call's result. Written by wb's controller for calls that
// stop at it, and by the preload library (libwbrecord.so) for calls it makes itself; read by
// `wb replay`, which writes the same bytes back instead of making the call.
#ifndef WB_RECORD_H
#define WB_RECORD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/// The syscall number the preload library uses to talk to wb (no kernel has it).
#define WB_RECORD_MARKER 22338
/// Marker operations (in rdi): a thread's buffer is at rsi with capacity rdx; the buffer at rsi is full.
#define WB_RECORD_OP_REGISTER 1
#define WB_RECORD_OP_FLUSH 2
/// A call too big for the buffer: rdx is its number, r10 the address of its six arguments and result.
#define WB_RECORD_OP_LARGE 3
/// The environment variable that tells the library where its syscall instruction goes.
#define WB_RECORD_GADGET_ENV "WB_RECORD_GADGET"
#define WB_RECORD_BUFFER_MAGIC 0x3130465542425755ULL /* "UWBBUF01" */

/// One call: its header, then `count` writes, each a wb_record_write and its bytes padded
/// to 8. `size` covers all of it.
typedef struct {
    uint32_t size, tid, nr, count;
    uint64_t args[3];
    int64_t result;
} wb_record_header;

typedef struct {
    uint64_t address;
    uint32_t length, pad;
} wb_record_write;

/// A thread's buffer in the recorded process: records follow the header, `used` bytes of them.
/// `inflight` is 1 from just before a call to just after its record is written: a checkpoint
/// that finds it so outside the call knows the record that comes next is of a call before it.
typedef struct {
    uint64_t magic, used, capacity, calls, inflight;
} wb_record_buffer;

/// A record of this number in a log says: the thread's next record is of a call made before
/// the checkpoint the log starts at (replay skips it).
#define WB_RECORD_SKIP_NEXT 0xFFFFFFFFu

/// Reads `len` bytes at `address` of the recorded process; 0 on success.
typedef int (*wb_record_reader)(void *ctx, uint64_t address, void *out, size_t len);

static inline uint64_t wb_record_pad(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

static inline int wb_record_add(uint64_t *addr, uint64_t *len, int n, int max, uint64_t a, uint64_t l) {
    if (a == 0 || l == 0 || n >= max) return n;
    if (l > (64u << 20)) l = 64u << 20;
    addr[n] = a; len[n] = l;
    return n + 1;
}

/// Whether wb records calls of this number (reads and their kin, time, random, waits for
/// readiness, accept) or only their result (writes: replay does not make them; mmap and
/// mremap: replay puts the mapping where it was).
static inline int wb_record_traced(uint32_t nr) {
    switch (nr) {
    case 9: case 25:
    case 0: case 1: case 7: case 17: case 18: case 19: case 20: case 23: case 43: case 44: case 45:
    case 46: case 47: case 96: case 201: case 228: case 232: case 270: case 271: case 281: case 288:
    case 295: case 296: case 318: case 327: case 328: case 441:
        return 1;
    default:
        return 0;
    }
}

/// The first `bytes` bytes of an iovec array of `count` entries at `iov`, as regions.
static inline int wb_record_iovecs(uint64_t iov, uint64_t count, uint64_t bytes, wb_record_reader read, void *ctx,
                                   uint64_t *addr, uint64_t *len, int n, int max) {
    for (uint64_t i = 0; i < count && bytes > 0 && i < 1024; i++) {
        uint64_t v[2];
        if (read(ctx, iov + i * 16, v, 16) != 0) break;
        uint64_t take = v[1] < bytes ? v[1] : bytes;
        n = wb_record_add(addr, len, n, max, v[0], take);
        bytes -= take;
    }
    return n;
}

/// A socket address a call returned (accept, recvfrom): its length word, then up to 128
/// bytes of the address.
static inline int wb_record_sockaddr(uint64_t sa, uint64_t salen, wb_record_reader read, void *ctx,
                                     uint64_t *addr, uint64_t *len, int n, int max) {
    uint32_t alen = 0;
    if (sa == 0 || salen == 0 || read(ctx, salen, &alen, 4) != 0) return n;
    n = wb_record_add(addr, len, n, max, salen, 4);
    return wb_record_add(addr, len, n, max, sa, alen > 128 ? 128 : alen);
}

/// The memory call `nr` with arguments `a` wrote in the process, having returned `result`:
/// up to `max` (address, length) pairs. Structures the kernel filled (iovecs, msghdr) are
/// read through `read`.
static inline int wb_record_regions(uint32_t nr, const uint64_t a[6], int64_t result, wb_record_reader read, void *ctx,
                                    uint64_t *addr, uint64_t *len, int max) {
    int n = 0;
    if (result < 0) return 0;
    uint64_t r = (uint64_t)result;
    switch (nr) {
    case 0: case 17: case 318: /* read, pread64, getrandom */
        if (nr == 318) return wb_record_add(addr, len, n, max, a[0], r);
        return wb_record_add(addr, len, n, max, a[1], r);
    case 19: case 295: case 327: /* readv, preadv, preadv2 */
        return wb_record_iovecs(a[1], a[2], r, read, ctx, addr, len, n, max);
    case 45: /* recvfrom: buf, len, flags, src_addr, addrlen */
        n = wb_record_add(addr, len, n, max, a[1], r);
        return wb_record_sockaddr(a[4], a[5], read, ctx, addr, len, n, max);
    case 43: case 288: /* accept, accept4: addr, addrlen */
        return wb_record_sockaddr(a[1], a[2], read, ctx, addr, len, n, max);
    case 47: { /* recvmsg: struct msghdr at a[1] */
        uint64_t m[7];
        if (read(ctx, a[1], m, sizeof m) != 0) return 0;
        uint32_t namelen = (uint32_t)m[1];
        n = wb_record_add(addr, len, n, max, a[1] + 8, 4);
        n = wb_record_add(addr, len, n, max, a[1] + 40, 8);
        n = wb_record_add(addr, len, n, max, a[1] + 48, 4);
        n = wb_record_add(addr, len, n, max, m[0], namelen > 128 ? 128 : namelen);
        n = wb_record_add(addr, len, n, max, m[4], m[5] > 4096 ? 4096 : m[5]);
        return wb_record_iovecs(m[2], m[3], r, read, ctx, addr, len, n, max);
    }
    case 228: /* clock_gettime */
        return wb_record_add(addr, len, n, max, a[1], 16);
    case 96: /* gettimeofday */
        n = wb_record_add(addr, len, n, max, a[0], 16);
        return wb_record_add(addr, len, n, max, a[1], 8);
    case 201: /* time */
        return wb_record_add(addr, len, n, max, a[0], 8);
    case 7: case 271: /* poll, ppoll */
        return wb_record_add(addr, len, n, max, a[0], a[1] * 8);
    case 23: case 270: { /* select, pselect6 */
        uint64_t bytes = ((a[0] + 63) / 64) * 8;
        n = wb_record_add(addr, len, n, max, a[1], bytes);
        n = wb_record_add(addr, len, n, max, a[2], bytes);
        return wb_record_add(addr, len, n, max, a[3], bytes);
    }
    case 232: case 281: case 441: /* epoll_wait, epoll_pwait, epoll_pwait2 */
        return wb_record_add(addr, len, n, max, a[1], r * 12);
    default: /* writes and sends: the result is all */
        return 0;
    }
}

/// Bytes one record takes.
static inline uint64_t wb_record_size(int count, const uint64_t *len) {
    uint64_t size = sizeof(wb_record_header);
    for (int i = 0; i < count; i++) size += sizeof(wb_record_write) + wb_record_pad(len[i]);
    return size;
}

/// Encodes a record at `out` (which has room for wb_record_size bytes), copying each region
/// through `read`. Returns the bytes written, 0 if a region could not be read.
static inline uint64_t wb_record_encode(uint8_t *out, uint32_t tid, uint32_t nr, const uint64_t a[6], int64_t result,
                                        int count, const uint64_t *addr, const uint64_t *len, wb_record_reader read, void *ctx) {
    wb_record_header h = { (uint32_t)wb_record_size(count, len), tid, nr, (uint32_t)count, { a[0], a[1], a[2] }, result };
    memcpy(out, &h, sizeof h);
    uint64_t at = sizeof h;
    for (int i = 0; i < count; i++) {
        wb_record_write w = { addr[i], (uint32_t)len[i], 0 };
        memcpy(out + at, &w, sizeof w);
        at += sizeof w;
        if (read(ctx, addr[i], out + at, len[i]) != 0) return 0;
        memset(out + at + len[i], 0, wb_record_pad(len[i]) - len[i]);
        at += wb_record_pad(len[i]);
    }
    return at;
}

#endif
